"""Streaming separation (mss.inference.streaming, mss.audio.stream, mss.separate.FileSeparation): blocks in, the
whole-track result out, memory bounded by the segment.

The network is a random-weight convolutional separator (a receptive field of 17 samples, a nonlinearity that is
neither linear nor polarity- or channel-equivariant), so chunk borders, shifts, TTA and bag combinations all show
in its output; every stream is compared with :func:`apply_model` on the whole mixture, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from mss.audio.io import AudioError, prevent_clip, resample, save_audio
from mss.audio.stream import BlockResampler, open_audio
from mss.inference.bag import BagOfModels
from mss.inference.overlap_add import apply_model
from mss.inference.streaming import separation_stream
from mss.models.base import Separator
from mss.separate import FileSeparation, OutputOptions, separate_file, separate_files

SOURCES = ["drums", "bass", "vocals"]


class ConvNet(Separator):
    def __init__(self, seed: int = 0, sample_rate: int = 8000, segment: int = 1000, fail_above: float | None = None):
        super().__init__(SOURCES, 2, sample_rate, segment)
        gen = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv1d(2, 6, 17, padding=8)
        for p in self.conv.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.3
        self.fail_above = fail_above

    def forward(self, mix):
        if self.fail_above is not None and mix.abs().max() > self.fail_above:
            raise RuntimeError("the network refuses this input")
        est = torch.tanh(self.conv(mix) + 0.2).view(mix.shape[0], len(SOURCES), 2, -1)
        return est * mix.unsqueeze(1) + 0.1 * est


def streamed(stream, mix: torch.Tensor, block: int) -> torch.Tensor:
    outs = [stream.push(mix[..., i : i + block]) for i in range(0, mix.shape[-1], block)]
    return torch.cat([*outs, stream.finish()], dim=-1)


CASES = {
    "plain": (lambda: ConvNet(), {}),
    "shifts": (lambda: ConvNet(), {"shifts": 2, "max_shift": 700}),
    "tta+shift": (lambda: ConvNet(), {"tta": ["flip_channels", "flip_sign"], "shifts": 1, "max_shift": 300}),
    "median bag": (lambda: BagOfModels([ConvNet(0), ConvNet(1), ConvNet(2)], combine="median"),
                   {"overlap": 0.5, "batch_size": 3}),
    "dense grid": (lambda: ConvNet(), {"segment": 777, "overlap": 0.75, "batch_size": 1, "weight": "hann"}),
    "spec bag": (lambda: BagOfModels([ConvNet(0), ConvNet(1)], domain="spec", n_fft=256, hop_length=64), {}),
}


@pytest.mark.parametrize("block, length", [(1, 3_001), (333, 23_457), (1000, 23_457), (30_000, 23_457)])
@pytest.mark.parametrize("case", list(CASES))
def test_streams_equal_apply_model_on_the_whole_mixture(case, block, length):
    make, kw = CASES[case]
    net = make().eval()
    mix = torch.randn(1, 2, length, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(5)
    whole = apply_model(net, mix, **kw)
    torch.manual_seed(5)
    got = streamed(separation_stream(net, 2, **kw), mix, block)
    assert got.shape == whole.shape
    assert torch.equal(got, whole), float((got - whole).abs().max())


def test_memory_is_bounded_by_the_segment_not_the_track():
    """The samples a stream holds do not grow with the track (a 10× longer track: the same peak), and stay within
    the segment, a batch of strides and one block."""
    net = ConvNet().eval()
    peaks = []
    for length in (20_000, 200_000):
        torch.manual_seed(0)
        stream = separation_stream(net, 2, shifts=1, max_shift=500)
        streamed(stream, torch.randn(1, 2, length), 2_000)
        peaks.append(stream.buffered)
    assert peaks[0] == peaks[1]
    segment, stride, batch = 1000, 750, 4
    assert peaks[0] <= 2 * (segment + batch * stride + 2_000 + 500)
    whole = separation_stream(BagOfModels([ConvNet(0), ConvNet(1)], domain="spec"), 2)
    streamed(whole, torch.randn(1, 2, 20_000), 2_000)
    assert whole.buffered == 20_000  # the spectrogram-domain bag collects the track (documented)


@pytest.mark.parametrize("rates", [(48000, 44100), (44100, 48000), (22050, 44100), (44100, 8000), (8000, 44100)])
@pytest.mark.parametrize("block", [1, 777, 60_000])
def test_block_resampler_equals_resampling_the_whole_signal(rates, block):
    x = torch.randn(2, 50_000 if block > 1 else 400, generator=torch.Generator().manual_seed(1))
    resampler = BlockResampler(*rates)
    got = torch.cat([resampler.push(x[:, i : i + block]) for i in range(0, x.shape[-1], block)]
                    + [resampler.finish()], dim=-1)
    assert torch.equal(got, resample(x, *rates))


def whole_file_reference(net, path: Path, options: OutputOptions, out: Path) -> dict[str, np.ndarray]:
    """What separating the whole file at once writes: decode, the model's channels and rate, apply_model, back to
    the file's channels and rate, two-stem complement and residual, clipping, 16-bit WAV."""
    data, rate = sf.read(path, dtype="float32", always_2d=True)
    wav = torch.from_numpy(data.T.copy())
    if wav.shape[0] > 2:
        wav = wav.mean(0, keepdim=True).expand(2, -1).clone()
    mix = wav.expand(2, -1) if wav.shape[0] == 1 else wav
    mix = resample(mix, rate, net.sample_rate).contiguous()
    est = apply_model(net, mix)
    if wav.shape[0] == 1:
        est = est.mean(1, keepdim=True)
    est = resample(est, net.sample_rate, rate)
    est = nn.functional.pad(est, (0, wav.shape[-1] - est.shape[-1]))
    stems = dict(zip(net.sources, est))
    outputs = {s: stems[s] for s in options.stems}
    outputs["no_" + "_".join(options.stems)] = wav - sum(outputs.values())
    outputs["residual"] = wav - est.sum(0)
    written = {}
    for name, wave in outputs.items():
        save_audio(out / f"{name}.wav", prevent_clip(wave, options.clip), rate)
        written[name] = sf.read(out / f"{name}.wav", dtype="float32", always_2d=True)[0]
    return written


@pytest.mark.parametrize("channels, rate", [(1, 11025), (3, 8000), (2, 12000)])
def test_file_separation_in_blocks_equals_the_whole_file(tmp_path, channels, rate):
    """Mono at another rate, three channels downmixed, stereo resampled: in blocks of 0.05 s the written stems equal
    those of the whole-file computation sample for sample (two-stem mode, residual, rescale by the whole peak)."""
    net = ConvNet(sample_rate=8000).eval()
    rng = np.random.default_rng(channels)
    path = tmp_path / "song.flac"
    sf.write(path, (0.9 * np.tanh(2 * rng.standard_normal((rate * 2 + 7, channels)))).astype(np.float32), rate)
    options = OutputOptions(stems=("vocals",), residual=True, filename="{source}.{ext}", downmix=True)
    ref = whole_file_reference(net, path, options, tmp_path / "whole")
    written = separate_file(net, path, tmp_path / "blocks", options, block_seconds=0.05)
    assert sorted(p.stem for p in written) == sorted(ref)
    for p in written:
        got = sf.read(p, dtype="float32", always_2d=True)[0]
        assert got.shape == ref[p.stem].shape == (rate * 2 + 7, 1 if channels == 1 else 2)
        np.testing.assert_array_equal(got, ref[p.stem], err_msg=p.stem)
    assert sorted(x.name for x in (tmp_path / "blocks").iterdir()) == sorted(p.name for p in written)


def test_a_file_that_fails_midway_leaves_nothing_and_the_others_finish(tmp_path):
    """The network fails on the second file's loud ending: that file is reported, none of its stems or spools
    remain, and the files before and after it are written."""
    songs = tmp_path / "songs"
    songs.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        wav = 0.3 * np.tanh(rng.standard_normal((16_000, 2)))
        if name == "b":
            wav[12_000:] *= 3.3  # above the network's limit from 1.5 s on
        sf.write(songs / f"{name}.wav", wav.astype(np.float32), 8000)
    net = ConvNet(fail_above=0.95).eval()
    written, failed = separate_files(net, sorted(songs.iterdir()), tmp_path / "out", progress=False,
                                     block_seconds=0.25)
    assert [p.name for p, _ in failed] == ["b.wav"] and "refuses" in failed[0][1]
    assert sorted(p.stem for p in written) == ["a", "c"]
    assert sorted(x.name for x in (tmp_path / "out").iterdir()) == ["a", "c"]
    assert not list((tmp_path / "out").rglob(".*"))  # no spool or temporary file left


def test_audio_stream_blocks_and_errors(tmp_path):
    """Blocks of the stated length that add up to the file, for soundfile and ffmpeg inputs; clear errors."""
    data = np.random.default_rng(0).uniform(-0.5, 0.5, (10_001, 2)).astype(np.float32)
    sf.write(tmp_path / "x.wav", data, 8000, subtype="FLOAT")
    with open_audio(tmp_path / "x.wav", 0.5) as stream:
        blocks = list(stream)
    assert (stream.rate, stream.channels, stream.frames) == (8000, 2, 10_001)
    assert [b.shape[-1] for b in blocks] == [4000, 4000, 2001]
    np.testing.assert_array_equal(torch.cat(blocks, -1).numpy().T, data)
    import shutil
    import subprocess

    if shutil.which("ffmpeg"):
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "x.wav"), "-c:a", "pcm_f32le",
                        str(tmp_path / "x.mka")], check=True)
        piped = torch.cat(list(open_audio(tmp_path / "x.mka", 0.3)), -1)
        np.testing.assert_array_equal(piped.numpy().T, data)
    bad = data.copy()
    bad[9000, 1] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav"):
        list(open_audio(tmp_path / "nan.wav", 0.5))
    with pytest.raises(AudioError, match="not found"):
        open_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.mp3").write_bytes(b"")
    with pytest.raises(AudioError, match="empty.mp3"):
        list(open_audio(tmp_path / "empty.mp3"))


def test_file_separation_refuses_channels_it_cannot_map(tmp_path):
    with pytest.raises(AudioError, match="3 channels.*downmix=true"):
        FileSeparation(ConvNet(), tmp_path / "x.wav", 8000, 3, tmp_path, OutputOptions())


@pytest.mark.slow
def test_memory_benchmark_runs_and_both_methods_write_the_same_stems(capsys):
    """scripts/bench_separate_memory.py (the Spleeter U-Net at its released size, 1 s and 3 s tracks): its table,
    and the streamed stems equal the whole-track ones."""
    from scripts.bench_separate_memory import main

    rows = main(["--seconds", "1", "3", "--threads", "1"])
    assert [r["seconds"] for r in rows] == [1.0, 3.0]
    for row in rows:
        assert row["max_abs_diff"] == 0.0
        assert row["stream"]["peak_mb"] > 0 and row["whole"]["peak_mb"] > 0
    assert "| 3 |" in capsys.readouterr().out
