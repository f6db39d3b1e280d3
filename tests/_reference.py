"""Reference implementations used as test-only parity oracles (demucs 4.0.1, openunmix, bs-roformer), and random
weights for parity tests.

The packages are installed ``--no-deps`` by ``scripts/setup.sh``. ``openunmix`` (imported by demucs) imports
``torchaudio`` at module level only for file I/O helpers that the parity tests never call; torchaudio's PyPI builds do
not load with the CPU torch, so an empty placeholder module stands in for it. A test whose package is missing skips
with a clear reason, unless the environment sets ``MSS_REQUIRE_REFERENCES=1`` (``.ci/run`` does): then it fails, so a
broken install cannot pass CI by skipping its parity tests.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

import pytest
import torch
from torch import nn

REQUIRE_ENV = "MSS_REQUIRE_REFERENCES"


def references_required() -> bool:
    """Whether ``MSS_REQUIRE_REFERENCES`` asks for a missing reference package to fail the test (``1``/``true``/
    ``yes``) instead of skipping it (unset, empty, ``0``)."""
    value = os.environ.get(REQUIRE_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise ValueError(f"{REQUIRE_ENV}={value!r}: expected 1/true/yes or 0/false/no")


def import_reference(module: str) -> types.ModuleType:
    """``importlib.import_module(module)`` with the torchaudio placeholder. If it cannot be imported the test skips,
    or fails when :func:`references_required`."""
    if "torchaudio" not in sys.modules:
        try:
            import torchaudio  # noqa: F401
        except Exception:
            sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        return importlib.import_module(module)
    except ImportError as err:
        reason = f"reference package for {module!r} not importable ({err}); run scripts/setup.sh"
        if references_required():
            pytest.fail(f"{reason} [{REQUIRE_ENV} is set, so this fails instead of skipping]", pytrace=False)
        pytest.skip(reason)


def randomise_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Replace every trainable parameter of ``module`` by random values, in place, so that a parity test exercises
    every weight (returns ``module``).

    A tensor with spread keeps its own scale: ``N(0, std)``, around its mean for tables such as norm gains that are
    not centred. A constant tensor gets a scale of its own kind: zeros (biases) become ``N(0, 0.1)``; other
    constants (norm gains, LayerScale at ``1e-4``, DConv scales at ``1e-3``) become ``1 + N(0, 0.1)``, so residual
    branches that start near zero (the transformer's, the DConv's) carry as much as the skip paths. The learnt
    statistics of batch norms (``running_mean``/``running_var``, parameters in disguise) are randomised too; frozen
    parameters (``requires_grad=False``: rotary frequency tables) and other buffers are fixed tables and kept.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=gen, dtype=torch.float64).to(like)

    with torch.no_grad():
        for p in module.parameters():
            if not p.requires_grad or not p.is_floating_point():
                continue
            std = p.float().std().item() if p.numel() > 1 else 0.0
            if std > 0:
                mean = p.float().mean().item()
                centre = mean if abs(mean) > std else 0.0
                p.copy_(centre + std * normal(p))
            elif not p.any():
                p.copy_(0.1 * normal(p))
            else:
                p.copy_(1.0 + 0.1 * normal(p))
        for norm in module.modules():
            mean, var = getattr(norm, "running_mean", None), getattr(norm, "running_var", None)
            if isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor):
                mean.copy_(0.1 * normal(mean))
                var.copy_(0.5 + torch.rand(var.shape, generator=gen).to(var))
    return module
