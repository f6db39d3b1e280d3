"""Shared fixtures: a small synthetic dataset generated once per session, and the real Hydra configs composed and
shrunk in one place (tiny U-Net, short segments) so every test runs the real code paths quickly."""

from __future__ import annotations

from pathlib import Path

import pytest

# Tiny versions of each model family (same architecture, fewer channels / smaller STFT): seconds per run on 2 cores.
# Keyed by the model config's ``_target_``; every model family adds its entry here so that every experiment config
# can run one fast step in tests (see :func:`tiny_overrides`).
TINY_MODEL = [
    "model.filters=[4,8,8,8,8,8]",
    "model.n_fft=512",
    "model.hop_length=128",
    "model.freq_bins=128",
    "model.frames=128",
]
TINY_MODELS: dict[str, list[str]] = {
    "mss.models.unet.SpleeterUNet": TINY_MODEL,
}
# Short training on the session dataset, independent of the model.
TINY_RUN = [
    "data.segment=1.0",
    "data.batch_size=2",
    "data.samples_per_epoch=4",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "evaluation.batch_size=8",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
]
# Spectrogram losses shrunk to the tiny models' STFT.
TINY_LOSS = ["module.loss.n_fft=512", "module.loss.hop_length=128"]
TINY_TRAIN = TINY_MODEL + TINY_LOSS + TINY_RUN


def tiny_overrides(cfg) -> list[str]:
    """Model- and loss-shrinking overrides for a composed train config (any model family in :data:`TINY_MODELS`)."""
    target = cfg.model._target_
    if target not in TINY_MODELS:
        raise KeyError(f"no tiny overrides for {target}: add an entry to tests/conftest.py TINY_MODELS")
    loss = [o for o in TINY_LOSS if o.split("=")[0].rsplit(".", 1)[1] in cfg.module.loss]
    return TINY_MODELS[target] + loss


SYNTH = dict(n_train=3, n_valid=1, n_test=2, duration=5.0, seed=7)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """MUSDB18-HQ-layout synthetic dataset (4 stems) shared by the session; treat as read-only."""
    from mss.data.synth import generate

    return generate(tmp_path_factory.mktemp("data") / "synth", **SYNTH)


@pytest.fixture(scope="session")
def synth_stems_root(tmp_path_factory) -> Path:
    """The same kind of dataset, also written as MUSDB18 .stem.mp4 files (needs ffmpeg)."""
    import shutil

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (scripts/setup.sh installs it)")
    from mss.data.synth import generate

    return generate(tmp_path_factory.mktemp("data") / "synth_stems", **{**SYNTH, "n_train": 2, "n_test": 1},
                    stems_mp4=True) / "stems"


@pytest.fixture
def train_overrides(synth_root, tmp_path) -> list[str]:
    """Overrides that point a train config at the session dataset and at this test's own folders."""
    return [f"data.root={synth_root}", "data.synth=null", f"paths.output_dir={tmp_path / 'run'}",
            f"paths.cache_dir={tmp_path / 'cache'}"] + TINY_TRAIN


@pytest.fixture
def run_overrides(synth_root, tmp_path) -> list[str]:
    """Like ``train_overrides`` but without the model/loss shrinking (combine with :func:`tiny_overrides`)."""
    return [f"data.root={synth_root}", "data.synth=null", f"paths.output_dir={tmp_path / 'run'}",
            f"paths.cache_dir={tmp_path / 'cache'}"] + TINY_RUN
