"""``python -m mss.pretrained list`` (the published models mss fetches by name) and ``python -m mss.pretrained fetch
NAME`` (download, verify and convert now; prints the checkpoint path). See :mod:`mss.pretrained.registry`."""

from __future__ import annotations

import sys

from mss.pretrained.registry import REFUSED, PretrainedError, cache_dir, fetch, registry


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["list"] and len(args) == 1:
        entries = registry()
        width = max(map(len, entries))
        print(f"published models (cache: {cache_dir()}):")
        for name, entry in entries.items():
            print(f"  {name:<{width}}  {entry['importer']:<10}  {'/'.join(entry.get('sources') or [])}  "
                  f"{entry.get('description', '')}")
        for name, reason in REFUSED.items():
            print(f"  {name:<{width}}  refused: {reason}")
        return 0
    if args[:1] == ["fetch"] and len(args) == 2:
        try:
            print(fetch(args[1]))
        except PretrainedError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m mss.pretrained list | fetch NAME", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
