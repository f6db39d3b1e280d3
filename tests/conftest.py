"""Shared fixtures: a small synthetic dataset generated once per session, and the real Hydra configs composed and
shrunk in one place (tiny U-Net, short segments) so every test runs the real code paths quickly."""

from __future__ import annotations

import functools
import http.server
import threading
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
    # hybrid Demucs family: 8 channels (transformer width 64 = 8 heads of 8), HT STFT 2048 (4 bins at the bottom)
    "mss.models.htdemucs.HTDemucs": ["model.channels=8", "model.nfft=2048", "model.dconv_comp=4",
                                     "model.bottom_channels=0", "model.t_layers=2", "model.segment=${data.segment}"],
    "mss.models.hdemucs.HDemucs": ["model.channels=8", "model.segment=${data.segment}"],
    # waveform Demucs: 4 channels; v3 keeps 5 layers so the BiLSTM / local attention of layer 4 run
    "mss.models.demucs.DemucsV2": ["model.channels=4", "model.depth=4", "model.segment_length=44100"],
    "mss.models.demucs.Demucs": ["model.channels=4", "model.depth=5", "model.segment=${data.segment}"],
    # band-split RoFormers: width 16, one block, 2 heads of 8, STFT 256 / 64 (129 bins in 6 bands or 8 mel bands)
    **{target: ["model.dim=16", "model.depth=1", "model.heads=2", "model.head_dim=8", "model.n_fft=256",
                "model.hop_length=64", "model.segment_length=44100", extra]
       for target, extra in (("mss.models.bs_roformer.BSRoformer", "model.freqs_per_bands=[4,4,8,16,32,65]"),
                             ("mss.models.mel_roformer.MelRoformer", "model.num_bands=8"))},
    # TFC-TDF U-Nets: STFT 512 / 128, 256 bins; MDX23C 2 subbands x 2 scales of one block, 8 channels; MDX-Net v2
    # 5 blocks (2 scales) of one convolution, growth 4, one FFT size for every source
    "mss.models.tfc_tdf.MDX23C": ["model.n_fft=512", "model.hop_length=128", "model.dim_f=256", "model.num_subbands=2",
                                  "model.num_scales=2", "model.num_blocks_per_scale=1", "model.num_channels=8",
                                  "model.growth=8", "model.segment_length=44100"],
    "mss.models.tfc_tdf.MDXNetV2": ["model.n_fft=512", "model.hop_length=128", "model.dim_f=256", "model.dim_t=64",
                                    "model.num_blocks=5", "model.layers=1", "model.growth=4",
                                    "model.segment_length=44100"],
    # Open-Unmix: hidden 16, STFT 512 / 128
    "mss.models.openunmix.OpenUnmix": ["model.hidden_size=16", "model.n_fft=512", "model.hop_length=128",
                                       "model.segment=${data.segment}"],
    # SCNet: dims 4/8/8 (two SD blocks), two dual-path layers, STFT 512 / 128
    "mss.models.scnet.SCNet": ["model.dims=[4,8,8]", "model.dual_path_layers=2", "model.n_fft=512",
                               "model.hop_length=128", "model.segment=${data.segment}"],
    # MMDenseNet / MMDenseLSTM: STFT 512 / 128, two small bands (BiLSTM at the low band's bottleneck, LSTM-only high
    # bottleneck), full band with an LSTM in an up block; the dicts are cleared first (Hydra merges dict overrides)
    "mss.models.mmdensenet.MMDenseNet": [
        "model.n_fft=512", "model.hop_length=128", "model.segment=${data.segment}",
        "model.bands=null", "model.full=null", "model.final=null",
        "model.bands={low:{bins:100,features:4,growth:[3,3,3],layers:[1,2,1],lstm:[0,4,0]},"
        "high:{bins:157,features:4,growth:[2,0,2],layers:[1,0,1],lstm:[0,2,0]}}",
        "model.full={features:4,growth:[2,2,2,2,2],layers:[1,1,1,1,1],lstm:[0,0,0,4,0]}",
        "model.final={growth:3,layers:2,dilated:true}"],
    # D3Net: STFT 512 / 128, 192 modelled bins (64 + 128 and the full band), one tiny configuration for every target
    "mss.models.d3net.D3Net": [
        "model.n_fft=512", "model.hop_length=128", "model.segment=${data.segment}", "model.valid_bins=192",
        "model.final_growth=3", "model.final_layers=2", "model.targets=null",
        "model.targets={drums:{band_split:[64],init_features:[4,3],growth:[[3,4,3],[2,2,2]],layers:[[1,2,1],[1,1,1]],"
        "blocks:[[2,2,2],[1,1,1]],full_features:4,full_growth:[3,3,4,3,2],full_layers:[1,1,2,1,1],"
        "full_blocks:[2,2,2,2,2]},bass:${model.targets.drums},other:${model.targets.drums},"
        "vocals:${model.targets.drums}}"],
    # Band-Split RNN: feature dim 4, one layer, STFT 1024 / 256 (the smallest that fits the floored band layouts)
    "mss.models.bsrnn.BSRNN": ["model.feature_dim=4", "model.num_layers=1", "model.n_fft=1024", "model.hop_length=256",
                               "model.mask_factor=1", "model.segment=${data.segment}"],
    # BandIt: 8 musical bands, width 8, one time + band GRU pair, mask MLP 16, STFT 512 / 128
    "mss.models.bandit.BandIt": ["model.n_bands=8", "model.emb_dim=8", "model.rnn_dim=8", "model.n_sqm_modules=1",
                                 "model.mlp_dim=16", "model.n_fft=512", "model.hop_length=128",
                                 "model.segment=${data.segment}"],
    # Demucs v2 Conv-TasNet: 16 filters / channels, two blocks of one repeat
    "mss.models.conv_tasnet.ConvTasNet": ["model.N=16", "model.B=16", "model.H=16", "model.X=2", "model.R=1",
                                          "model.segment_length=44100"],
    # Wave-U-Net (model=wave_u_net and model=wave_u_net_pytorch share the target and the keys): two levels, widths
    # from 8 (multiples of the GroupNorm's 8 channels in both growths), 512-sample output windows
    "mss.models.wave_u_net.WaveUNet": ["model.levels=2", "model.features=8", "model.output_size=512",
                                       "model.segment=${data.segment}"],
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
    # recipes that remix in groups of 4 (augment=demucs): groups of the tiny batch instead
    from omegaconf import OmegaConf

    remix = ["augment.transforms.remix.group_size=${data.batch_size}"] if OmegaConf.select(
        cfg, "augment.transforms.remix.group_size") is not None else []
    return TINY_MODELS[target] + loss + remix


SYNTH = dict(n_train=3, n_valid=1, n_test=2, duration=5.0, seed=7)


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory):
    """``paths.cache_dir`` (``MSS_CACHE_DIR``: generated datasets, the estimate cache) in a folder of this session,
    for the CLIs run in subprocesses too, unless the caller set one."""
    import os

    if "MSS_CACHE_DIR" in os.environ:
        yield
        return
    os.environ["MSS_CACHE_DIR"] = str(tmp_path_factory.mktemp("mss_cache"))
    yield
    del os.environ["MSS_CACHE_DIR"]


@pytest.fixture
def single_thread():
    """Run a test with one torch thread (restored afterwards): on an oversubscribed machine, OpenMP threads waiting
    for each other make small-tensor training loops many times slower than one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


@pytest.fixture
def server(tmp_path):
    """``(base_url, served folder, request log)`` of an HTTP server on 127.0.0.1."""
    served = tmp_path / "served"
    served.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, requests
    httpd.shutdown()
