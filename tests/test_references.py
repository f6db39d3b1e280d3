"""The parity-test helpers of :mod:`tests._reference`: a missing reference package skips, or fails when
``MSS_REQUIRE_REFERENCES`` is set (as ``.ci/run`` sets it); :func:`randomise_` changes every trainable weight."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from mss.models.blocks import LayerScale
from tests._reference import REQUIRE_ENV, import_reference, randomise_, references_required

REPO = Path(__file__).resolve().parents[1]
MISSING = "mss_no_such_reference_package"


@pytest.mark.parametrize("value, outcome", [("1", pytest.fail.Exception), ("true", pytest.fail.Exception),
                                            ("0", pytest.skip.Exception), ("", pytest.skip.Exception)])
def test_missing_reference_fails_when_required_else_skips(value, outcome, monkeypatch):
    monkeypatch.setenv(REQUIRE_ENV, value)
    with pytest.raises(BaseException) as info:  # skip and fail are BaseExceptions: catch both, then tell them apart
        import_reference(MISSING)
    assert info.type is outcome and MISSING in str(info.value) and "scripts/setup.sh" in str(info.value)
    monkeypatch.delenv(REQUIRE_ENV)
    assert not references_required()
    monkeypatch.setenv(REQUIRE_ENV, "maybe")
    with pytest.raises(ValueError, match=f"{REQUIRE_ENV}='maybe'"):
        references_required()


def test_the_switch_decides_the_outcome_of_a_real_pytest_run(tmp_path):
    """As CI runs it: a test file whose reference is missing is reported failed with the switch, skipped without."""
    (tmp_path / "test_needs_reference.py").write_text(
        "from tests._reference import import_reference\n\n\n"
        f"def test_parity():\n    import_reference({MISSING!r})\n")
    results = {}
    for value in ("1", "0"):
        env = {**os.environ, REQUIRE_ENV: value, "PYTHONPATH": str(REPO)}
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs",
                               str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        results[value] = proc
    assert results["1"].returncode == 1 and "1 failed" in results["1"].stdout, results["1"].stdout
    assert f"{REQUIRE_ENV} is set" in results["1"].stdout
    assert results["0"].returncode == 0 and "1 skipped" in results["0"].stdout, results["0"].stdout


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 4, 3)
        self.norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.scale = LayerScale(4, 1e-4)
        self.table = nn.Parameter(torch.arange(4.0), requires_grad=False)  # a frozen table (rotary frequencies)


def test_randomise_changes_every_trainable_weight_at_a_sensible_scale():
    torch.manual_seed(0)
    net = _Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    randomise_(net, seed=3)
    after = net.state_dict()
    for key, value in before.items():
        if key in ("table", "bn.num_batches_tracked"):
            assert torch.equal(after[key], value), key
        else:
            assert not torch.isclose(after[key], value).any(), key
    assert 0.5 < net.scale.scale.abs().min() and net.scale.scale.abs().max() < 1.5  # from 1e-4 to about 1
    assert (net.bn.running_var > 0).all()
    ratio = net.conv.weight.std() / before["conv.weight"].std()
    assert 0.5 < ratio < 2  # weights keep their own scale
    torch.manual_seed(0)
    again = randomise_(_Net(), seed=3).state_dict()
    assert all(torch.equal(again[k], v) for k, v in after.items())
