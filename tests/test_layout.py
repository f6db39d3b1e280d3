"""The layering of ../shared/DESIGN.md, checked on the source: which room of ``mss`` may import which (every
``import`` statement, function-local ones included), which third-party packages the networks and metrics stay
free of, and that no module imports another's private (``_``-prefixed) names. A violating import anywhere in the
package fails the test, naming the file, line and rule."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mss"

BASE = {"utils", "platform"}  # helpers every room may use (atomic writes, platform fast paths)
# room -> the rooms of mss it may import (itself always)
ALLOWED: dict[str, set[str]] = {
    "utils": {"platform"},
    "platform": set(),
    "audio": set(),
    "data": {"audio"},
    "augment": {"audio"},
    "models": {"audio"},
    "losses": {"audio"},
    "metrics": {"audio"},
    "report": {"metrics"},
    "inference": {"models", "audio"},
    "checkpoint": {"models"},
    "unlabeled": {"models", "data", "audio"},
    "lightning": {"models", "losses", "metrics", "inference", "augment", "data", "checkpoint", "audio"},
    "pretrained": {"checkpoint", "models", "inference"},
}
# may import anything
ENTRY_POINTS = {"__init__", "train", "evaluate", "separate", "results", "bag", "export", "run", "ddp"}
# third-party packages a room must not import: nets know nothing of Lightning, Hydra, configs or files
FORBIDDEN = {
    "models": {"lightning", "hydra", "omegaconf", "soundfile"},
    "losses": {"lightning", "hydra", "omegaconf", "soundfile"},
    "metrics": {"lightning", "hydra"},
    "audio": {"lightning", "hydra", "omegaconf"},
}


def room_of(path: Path) -> str:
    """``mss/models/unet.py`` -> ``models``; ``mss/train.py`` -> ``train``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """``(line, absolute dotted name)`` of every import in a module's tree (relative imports resolved)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from mss import unlabeled` names a room in the imported names
            if name == "mss":
                found += [(node.lineno, f"mss.{alias.name}") for alias in node.names]
    return found


def violations(source: str, path: Path) -> list[str]:
    room = room_of(path)
    if room in ENTRY_POINTS:
        return []
    module = ".".join(("mss",) + path.relative_to(PACKAGE).with_suffix("").parts)
    tree = ast.parse(source)
    bad = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: private name {alias.name} imported from {node.module}"
           for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level
           and (node.module or "").startswith("mss.") and node.module != module
           for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    for line, name in imports(tree, module):
        top, *rest = name.split(".")
        where = f"{path.relative_to(PACKAGE.parent)}:{line}"
        if top == "mss" and rest:
            target = rest[0]
            if target != room and target not in ALLOWED[room] | BASE:
                bad.append(f"{where}: mss.{room} may not import {name} (allowed: "
                           f"{sorted(ALLOWED[room] | BASE)})")
        elif top in FORBIDDEN.get(room, set()):
            bad.append(f"{where}: mss.{room} may not import the third-party package {top}")
    return bad


def test_every_room_is_in_the_rules():
    rooms = {room_of(p) for p in PACKAGE.rglob("*.py")}
    assert rooms <= set(ALLOWED) | ENTRY_POINTS, sorted(rooms - set(ALLOWED) - ENTRY_POINTS)


def test_rooms_import_only_what_the_layering_allows():
    bad = [v for path in sorted(PACKAGE.rglob("*.py")) for v in violations(path.read_text(), path)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("room_file, source", [
    ("models/unet.py", "def f():\n    from mss.inference.overlap_add import apply_model\n"),
    ("models/unet.py", "import lightning as L\n"),
    ("data/datasets.py", "from mss.models.unet import UNet\n"),
    ("metrics/sdr.py", "from ..models.unet import UNet\n"),
    ("report/plots.py", "from mss import checkpoint\n"),
    ("inference/oracle.py", "from mss.audio.wiener import _solve\n"),  # a private name across modules
])
def test_a_violating_import_is_reported(room_file, source):
    assert violations(source, PACKAGE / room_file), source
    assert not violations("from mss.audio.spectral import stft\n", PACKAGE / "models" / "unet.py")
