"""Dataset-level codec and effect augmentation (mss.augment.effects, mss.audio.codec): sample-exact codec round
trips, each effect changes what it should and keeps shape / dtype / alignment, is deterministic for a seed and is the
identity at proba=0; the data module applies the chain in the loader; `python -m mss.train augment=codec_effects`
runs one step."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from mss.audio.codec import codec_round_trip
from mss.augment.effects import Chorus, Codec, Distortion, Effects, Equalizer, Loudness, Lowpass, Reverb, SourceMixup
from mss.run import compose
from tests.conftest import TINY_MODEL

SR = 44100
SOURCES = ["drums", "bass", "other", "vocals"]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def music(seconds=1.0, channels=2, seed=0) -> np.ndarray:
    """Band-limited noise (< 8 kHz, what every codec keeps at 64 kbit/s) with clicks: a sharp cross-correlation."""
    from scipy.signal import butter, sosfilt

    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    x = sosfilt(butter(6, 8000, fs=SR, output="sos"), rng.standard_normal((channels, n)), axis=-1) * 0.1
    x[:, rng.integers(0, n, 20)] += 0.5
    return x.astype(np.float32)


def tonal(seconds=1.0, channels=2, seed=0) -> np.ndarray:
    """Twelve partials (100 Hz - 3 kHz) with a tremolo and clicks: what a codec encodes well (broadband noise is
    not), so the waveform SNR measures the codec rather than its masking."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    x = sum(0.05 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6, (channels, 1))) for f in rng.uniform(100, 3000, 12))
    x = x * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    x[:, rng.integers(0, n, 20)] += 0.3
    return x.astype(np.float32)


def lag(ref: np.ndarray, est: np.ndarray, span: int = 3000) -> int:
    """Lag (samples) of ``est`` against ``ref`` at the cross-correlation peak within +-``span`` (first channel)."""
    from scipy.signal import correlate

    a, b = ref[0].astype(np.float64), est[0].astype(np.float64)
    full = correlate(b, a, mode="full", method="fft")  # index n - 1 is lag 0
    n = len(a)
    window = full[n - 1 - span: n + span]
    return int(np.argmax(window)) - span


def snr(ref, est) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - est) ** 2)))


@pytest.mark.parametrize(("codec", "bitrate", "channels"), [("mp3", 64, 2), ("mp3", 192, 1), ("aac", 96, 2),
                                                            ("aac", 256, 2), ("mp3", 128, 4)])
def test_codec_round_trip_is_sample_aligned(codec, bitrate, channels):
    """Encoder delay and padding are compensated: same length, the cross-correlation peak of broadband noise with
    clicks at lag 0 (raw ADTS AAC measures 1024), and on a tonal signal a waveform SNR that only an aligned decode
    reaches (measured 12-29 dB; 1 sample off: 9-11 dB)."""
    x = music(channels=channels)
    y = codec_round_trip(x, SR, codec, bitrate)
    assert y.shape == x.shape and y.dtype == np.float32
    assert lag(x, y) == 0
    x = tonal(channels=channels)
    y = codec_round_trip(x, SR, codec, bitrate)
    assert y.shape == x.shape
    assert snr(x, y) > 11.0
    assert snr(x[:, 1:], y[:, :-1]) < snr(x, y) - 0.5


def test_codec_round_trip_keeps_level_of_loud_inputs_and_rejects_bad_codecs():
    x = tonal() * 20  # peaks near 10: scaled into range for the encoder and back
    y = codec_round_trip(x, SR, "mp3", 192)
    assert snr(x, y) > 11.0
    with pytest.raises(ValueError, match="codec='flac'"):
        codec_round_trip(x, SR, "flac", 128)


def stems(seed=0, t=SR // 2) -> torch.Tensor:
    return torch.stack([torch.from_numpy(music(t / SR, seed=seed + i)) for i in range(4)])


EFFECTS = {
    "codec_mixture": lambda p: Codec(p, bitrates=[64, 96]),
    "codec_stems": lambda p: Codec(p, codecs=["aac"], bitrates=[64, 96], target="stems"),
    "codec_mp3_vbr": lambda p: Codec(p, codecs=["mp3_vbr"], vbr_quality=(6, 9), target="stems"),
    "lowpass": lambda p: Lowpass(p, 1000.0, 3000.0),
    "eq": lambda p: Equalizer(p, max_gain_db=12.0),
    "reverb": lambda p: Reverb(p, wet_level=(0.2, 0.3)),
    "chorus": lambda p: Chorus(p),
    "distortion": lambda p: Distortion(p),
    "loudness_mixture": lambda p: Loudness(p, -30.0, -28.0),
    "loudness_stems": lambda p: Loudness(p, -30.0, -28.0, target="stems"),
}


@pytest.mark.parametrize("name", list(EFFECTS))
def test_effect_changes_keeps_shape_dtype_alignment_and_is_seeded(name):
    x = stems()
    fx = EFFECTS[name](1.0)
    y = fx(x, SOURCES, gen(1))
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    assert all(not torch.allclose(y[i], x[i], atol=1e-3) for i in range(4))  # every stem changed
    assert all(lag(x[i].numpy(), y[i].numpy(), 300) == 0 for i in range(4))  # still aligned with the input
    assert torch.equal(fx(x, SOURCES, gen(1)), y)  # deterministic for a seed
    assert any(not torch.equal(fx(x, SOURCES, gen(seed)), y) for seed in range(2, 6))  # and the draws depend on it
    assert EFFECTS[name](0.0)(x, SOURCES, gen(1)) is x  # p = 0: the identity


@pytest.mark.parametrize("name", ["lowpass", "eq", "reverb", "distortion", "codec_stems", "codec_mp3_vbr",
                                  "loudness_stems"])
def test_effect_probability_and_sources(name):
    x = stems()
    fx = EFFECTS[name](0.5)
    changed = [not torch.equal(a, b) for seed in range(6) for a, b in zip(fx(x, SOURCES, gen(seed)), x)]
    assert 0 < sum(changed) < len(changed)  # some stems, not all, at p = 0.5
    only = EFFECTS[name](1.0)
    only.sources = ["vocals"]
    y = only(x, SOURCES, gen(0))
    assert torch.equal(y[:3], x[:3]) and not torch.equal(y[3], x[3])
    silent = x.clone()
    silent[1] = 0
    assert not only(silent, SOURCES, gen(0))[1].any() and not EFFECTS[name](1.0)(silent, SOURCES, gen(0))[1].any()


def test_in_process_mp3_is_sample_aligned():
    """pedalboard's MP3Compressor (codec mp3_vbr) compensates the LAME delay too."""
    x = music()
    y = Codec(1.0, codecs=["mp3_vbr"], vbr_quality=(9, 9), target="stems")(torch.from_numpy(x)[None], ["a"], gen())[0]
    assert lag(x, y.numpy()) == 0
    x = tonal()
    y = Codec(1.0, codecs=["mp3_vbr"], vbr_quality=(2, 2), target="stems")(torch.from_numpy(x)[None], ["a"], gen())[0]
    assert snr(x, y.numpy()) > 11.0 and snr(x[:, 1:], y.numpy()[:, :-1]) < snr(x, y.numpy()) - 0.5


def test_mixture_codec_keeps_the_sum_equal_to_the_coded_mixture():
    x = stems()
    y = Codec(1.0, codecs=["mp3"], bitrates=[96])(x, SOURCES, gen(0))
    coded = codec_round_trip(x.sum(0).numpy(), SR, "mp3", 96)
    np.testing.assert_allclose(y.sum(0).numpy(), coded, atol=1e-5)
    # the error goes to the stems by energy: a louder stem takes a larger share
    loud = x.clone()
    loud[0] *= 4
    err = Codec(1.0, codecs=["mp3"], bitrates=[96])(loud, SOURCES, gen(0)) - loud
    assert err[0].square().sum() > 4 * err[1].square().sum()


def test_lowpass_removes_the_band_above_the_cutoff():
    x = stems(t=SR)
    y = Lowpass(1.0, 2000.0, 2000.0)(x, SOURCES, gen(0))
    spec_x, spec_y = (torch.fft.rfft(v, dim=-1).abs().square() for v in (x, y))
    band = slice(4000, 8000)  # bins of a 1 s excerpt are 1 Hz apart
    assert spec_y[..., band].sum() < 1e-3 * spec_x[..., band].sum()
    low = slice(10, 1000)
    torch.testing.assert_close(spec_y[..., low].sum(), spec_x[..., low].sum(), rtol=0.05, atol=0)


def test_reverb_adds_a_tail_and_distortion_keeps_the_level():
    click = torch.zeros(4, 2, SR)
    click[..., 1000] = 0.5
    y = Reverb(1.0, wet_level=(0.3, 0.3))(click, SOURCES, gen(0))
    assert y[..., 1000].allclose(click[..., 1000], atol=0.1)  # the dry click at unity
    assert y[..., 3000:].square().sum() > 1e-3  # and a tail after it
    x = stems()
    d = Distortion(1.0, drive_db=(30.0, 30.0))(x, SOURCES, gen(0))
    torch.testing.assert_close(d.square().mean((1, 2)), x.square().mean((1, 2)), rtol=1e-3, atol=0)
    assert (d / d.abs().amax((1, 2), keepdim=True)).abs().mean() > 2 * (x / x.abs().amax((1, 2), keepdim=True)).abs(
    ).mean()  # crest factor down: clipped


def test_loudness_hits_the_drawn_lufs_and_keeps_the_balance():
    import pyloudnorm

    x = stems(t=2 * SR)
    y = Loudness(1.0, -30.0, -28.0, max_peak=None)(x, SOURCES, gen(0))
    lufs = pyloudnorm.Meter(SR).integrated_loudness(y.sum(0).double().numpy().T)
    assert -30.05 <= lufs <= -27.95
    ratio = y / x
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0, 0, 0])))  # one gain for every stem
    capped = Loudness(1.0, -1.0, -1.0, max_peak=0.5)(x, SOURCES, gen(0))
    assert capped.sum(0).abs().max() == pytest.approx(0.5, rel=1e-4)
    short = x[..., : SR // 4]  # shorter than the 0.4 s gating block: unchanged
    assert torch.equal(Loudness(1.0)(short, SOURCES, gen(0)), short)


def test_source_mixup_adds_an_excerpt_of_the_same_source():
    x = stems()
    others = {name: torch.full(x.shape[1:], float(i + 1)) for i, name in enumerate(SOURCES)}
    calls = []

    def reader(name):
        calls.append(name)
        return others[name]

    y = SourceMixup(1.0, gain=(0.5, 0.5), sources=["bass", "vocals"])(x, SOURCES, gen(0), reader)
    assert calls == ["bass", "vocals"]
    torch.testing.assert_close(y[1], x[1] + 0.5 * others["bass"])
    torch.testing.assert_close(y[3], x[3] + 0.5 * others["vocals"])
    assert torch.equal(y[[0, 2]], x[[0, 2]])
    with pytest.raises(ValueError, match="reader"):
        SourceMixup(1.0)(x, SOURCES, gen(0))


def test_chain_checks_sources_and_skips_null_entries():
    chain = Effects({"lowpass": Lowpass(1.0), "reverb": None}, SOURCES)
    assert list(chain.transforms) == ["lowpass"]
    assert chain(stems(), gen(0)).shape == (4, 2, SR // 2)
    with pytest.raises(ValueError, match="unknown source"):
        Effects({"eq": Equalizer(1.0, sources=["piano"])}, SOURCES)
    with pytest.raises(ValueError, match="expected a probability"):
        Reverb(1.5)
    with pytest.raises(ValueError, match="Codec.target"):
        Codec(1.0, target="both")


def recipe(overrides=()):
    return compose("train", ["augment=codec_effects", "paths.output_dir=unused", *overrides])


def test_codec_effects_recipe_composes_and_data_module_applies_it_in_the_loader(synth_root, tmp_path):
    cfg = recipe()
    chain = instantiate(cfg.data.effects)
    assert isinstance(chain, Effects) and list(chain.transforms) == [
        "mixup", "eq", "lowpass", "reverb", "chorus", "distortion", "loudness", "codec"]
    assert list(instantiate(cfg.augment).transforms) == ["polarity"]
    everything = [f"effects.transforms.{k}.proba=1.0" for k in chain.transforms]

    def first_batch(extra):
        cfg = compose("train", ["augment=codec_effects", f"paths.output_dir={tmp_path}", f"data.root={synth_root}",
                                "data.synth=null", f"paths.cache_dir={tmp_path / 'cache'}", "data.segment=1.0",
                                "data.batch_size=2", "data.num_workers=1", "data.valid_tracks=null", *extra])
        dm = instantiate(cfg.data, _convert_="all")  # as mss.train builds it
        dm.setup("fit")
        assert not dm.int16_batches() or cfg.data.effects is None
        return next(iter(dm.train_dataloader()))

    plain, fx, again = first_batch(["effects=null"]), first_batch(everything), first_batch(everything)
    assert fx.shape == plain.shape == (2, 4, 2, SR) and fx.dtype == torch.float32
    assert torch.equal(fx, again)  # seeded per example in the worker
    assert (fx - plain.float()).abs().amax((2, 3)).gt(1e-3).all()  # every stem of every example transformed


def test_train_cli_runs_one_step_with_codec_effects(run_overrides, tmp_path):
    """`python -m mss.train augment=codec_effects` (every effect forced on, one loader worker): one fast step."""
    forced = [f"effects.transforms.{k}.proba=1.0" for k in ("mixup", "eq", "lowpass", "reverb", "chorus", "distortion",
                                                            "loudness", "codec")]
    args = ["augment=codec_effects", "debug=fdr", *run_overrides, *TINY_MODEL, "data.num_workers=1", *forced,
            f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-m", "mss.train", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    resolved = (tmp_path / "run" / "config.yaml").read_text()
    assert "mss.augment.effects.Codec" in resolved and "mss.augment.batch.FlipSign" in resolved


def test_several_signals_share_one_ffmpeg_run_with_their_own_codecs():
    """:func:`codec_round_trips` (the stems of an example in one encoder and one decoder process) gives each signal
    exactly what its own round trip gives, mono and stereo, MP3 and AAC mixed."""
    from mss.audio.codec import codec_round_trips

    wavs = [tonal(0.5, 2, 0), tonal(0.5, 1, 1), tonal(0.5, 2, 2)]
    specs = [("mp3", 64), ("aac", 128), ("mp3", 192)]
    together = codec_round_trips(wavs, SR, [c for c, _ in specs], [b for _, b in specs])
    for x, y, (codec, bitrate) in zip(wavs, together, specs):
        assert y.shape == x.shape and lag(x, y) == 0
        np.testing.assert_array_equal(y, codec_round_trip(x, SR, codec, bitrate))
    with pytest.raises(ValueError, match="one length"):
        codec_round_trips([wavs[0], wavs[0][:, :100]], SR, ["mp3"] * 2, [64] * 2)
