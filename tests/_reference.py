"""Import the reference implementations used as test-only parity oracles (demucs 4.0.1, openunmix, bs-roformer).

They are installed ``--no-deps`` by ``scripts/setup.sh``. ``openunmix`` (imported by demucs) imports ``torchaudio`` at
module level only for file I/O helpers that the parity tests never call; torchaudio's PyPI builds do not load with the
CPU torch, so an empty placeholder module stands in for it. Tests skip with a clear reason when a package is missing.
"""

from __future__ import annotations

import importlib
import sys
import types

import pytest


def import_reference(module: str) -> types.ModuleType:
    """``importlib.import_module(module)`` with the torchaudio placeholder; skips the test if it is not installed."""
    if "torchaudio" not in sys.modules:
        try:
            import torchaudio  # noqa: F401
        except Exception:
            sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        pytest.skip(f"reference package for {module!r} not importable ({err}); run scripts/setup.sh")
