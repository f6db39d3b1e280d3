"""Small shared helpers: atomic file writes, git revision."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path`` and move it into place, so an interrupted
    write never leaves a truncated file and never destroys the previous version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def git_revision(cwd: str | os.PathLike | None = None) -> str:
    """The git SHA of the source tree (with ``-dirty`` when modified), or ``unknown`` outside a checkout. Without
    ``cwd``, mss's own tree: ``unknown`` also for an installed mss that merely lies inside another repository (a
    virtual environment in a user's project)."""
    package = Path(__file__).resolve().parent
    cwd = cwd or package
    try:
        top, sha = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=cwd, capture_output=True,
                                  text=True, check=True).stdout.splitlines()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return "unknown"
    if cwd == package and Path(top).resolve() != package.parent:
        return "unknown"
    return sha.strip() + ("-dirty" if dirty.stdout.strip() else "")


def run_structured_cli(schema: type, argv: list[str] | None, doc: str, required: str,
                       action: Callable[[dict], str], errors: tuple[type[BaseException], ...] = (ValueError,)) -> int:
    """A ``key=value`` command line with the dataclass ``schema`` (``mss.bag``, ``mss.export``): ``-h`` prints
    ``doc``; a missing required key prints ``error: <required>``, an unknown key or an ``errors`` exception raised by
    ``action(options)`` prints its first line; those return 2. Otherwise prints what ``action`` returns, returns 0."""
    import sys

    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(doc.strip())
        return 0
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_cli(args))
        if any(OmegaConf.is_missing(cfg, key) for key in cfg):
            raise ValueError(required)
        message = action(OmegaConf.to_container(cfg))
    except (*errors, OmegaConfBaseException) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(message)
    return 0
