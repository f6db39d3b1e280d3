"""The command line ``python -m mss.data.synth root=DIR [key=value ...]`` (usage: the :mod:`mss.data.synth`
docstring): ``key=value`` overrides of :class:`SynthConfig`, whose defaults are those of :func:`generate` and of
``data=synth``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from mss.data.synth.instruments import MUSDB_SOURCES
from mss.data.synth.writer import DURATION, MANIFEST, N_TEST, N_TRAIN, N_VALID, SEED, generate

__all__ = ["SynthConfig", "main"]


@dataclass
class SynthConfig:
    """Command-line schema of ``python -m mss.data.synth`` (see :func:`generate`)."""

    root: str = MISSING
    sources: list[str] = field(default_factory=lambda: list(MUSDB_SOURCES))
    n_train: int = N_TRAIN
    n_valid: int = N_VALID
    n_test: int = N_TEST
    duration: float = DURATION
    sample_rate: int = 44100
    seed: int = SEED
    bit_depth: int = 16
    dither: bool = True
    stems_mp4: bool = False
    overwrite: bool = False
    panned_mono: dict[str, float] = field(default_factory=dict)
    layout: str = "musdb"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``key=value`` overrides of :class:`SynthConfig`; returns the exit status."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    from mss.data import synth  # the package (imported by now), whose docstring opens the usage text

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        defaults = OmegaConf.to_container(OmegaConf.structured(SynthConfig))
        keys = " ".join(f"{k}={'[' + ','.join(v) + ']' if isinstance(v, list) else v}"
                        for k, v in defaults.items())
        print(f"usage: python -m mss.data.synth {keys}\n{synth.__doc__.strip().splitlines()[0]} (root is required)")
        return 0
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(SynthConfig), OmegaConf.from_cli(args))
    except ConfigKeyError as err:
        print(f"error: unknown key {str(err.key) if getattr(err, 'key', None) else ''!r} "
              f"({str(err).splitlines()[0]}); valid keys: {', '.join(SynthConfig.__dataclass_fields__)}",
              file=sys.stderr)
        return 2
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        print(f"error: {f'{key}: ' if key else ''}{str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if OmegaConf.is_missing(cfg, "root"):
        print("error: root=DIR is required (the folder to write the dataset to)", file=sys.stderr)
        return 2
    opts = OmegaConf.to_container(cfg)
    root = Path(opts.pop("root")).expanduser()
    before = (root / MANIFEST).read_text() if (root / MANIFEST).is_file() else None
    try:
        generate(root, **opts)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    n = opts["n_train"] + opts["n_valid"] + opts["n_test"]
    what = "already complete" if before == (root / MANIFEST).read_text() else "wrote"
    fmt = "float" if opts["bit_depth"] == 32 else f"PCM_{opts['bit_depth']}"
    where = (f"MoisesDB layout, {opts['n_valid']} valid + {opts['n_test']} test listed in valid_tracks.txt / "
             "test_tracks.txt" if opts["layout"] == "moisesdb" else
             f"{opts['n_valid']} valid in train/, {opts['n_test']} test; {'/'.join(opts['sources'])}")
    print(f"{what}: {root} ({n} tracks: {opts['n_train']} train + {where}; {opts['duration']:g} s at "
          f"{opts['sample_rate']} Hz, {fmt}{'; + stems/*.stem.mp4' if opts['stems_mp4'] else ''})")
    return 0
