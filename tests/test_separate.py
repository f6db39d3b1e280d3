"""mss.separate through its real command line: any input (ffmpeg-decoded MP3, mono, 3 channels, other rates, a
folder with a corrupt file), every output format / bit depth / clip mode, the filename template, two-stem mode, the
residual, TTA and bags. The models are toy separators written into the test's folder (``toy_models.py``, importable
by the CLI subprocess through ``PYTHONPATH``) whose outputs are known in closed form, so the written stems are
checked sample by sample:

* ``gain``: ``est_s = g_s · mix`` (linear, equivariant to channel swap and polarity);
* ``channel_mix``: ``est_s = g_s · A · mix`` with a non-symmetric 2×2 ``A`` (linear, not channel-equivariant);
* ``rectify``: ``est_s = g_s · relu(mix)`` (channel-equivariant, not polarity-equivariant).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mss.audio.io import AudioError
from mss.checkpoint import save_checkpoint

SOURCES = ["drums", "bass", "other", "vocals"]
GAINS = [0.1, 0.2, 0.3, 0.25]  # sum 0.85: the residual is 0.15 · mix
SR = 44100
ROOT = Path(__file__).resolve().parents[1]

TOY = '''
import torch
from torch import nn
from mss.models.base import Separator


class Toy(Separator):
    def __init__(self, sources, gains, kind="gain", sample_rate=44100, audio_channels=2, segment_length=22050):
        super().__init__(sources, audio_channels, sample_rate, segment_length)
        self.kind = kind
        self.gains = nn.Parameter(torch.tensor(gains, dtype=torch.float32))
        self.register_buffer("mixing", torch.tensor([[1.0, 0.5], [-0.25, 0.75]]))

    def forward(self, mix):
        self.check_mixture(mix)
        if self.kind == "channel_mix":
            mix = torch.einsum("dc,bct->bdt", self.mixing, mix)
        elif self.kind == "rectify":
            mix = torch.relu(mix)
        return self.gains.view(1, -1, 1, 1) * mix.unsqueeze(1)
'''


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """Checkpoints of the toy models (and a bag of three ``gain`` members combined by the median), their folder."""
    base = tmp_path_factory.mktemp("toys")
    (base / "toy_models.py").write_text(TOY)
    sys.path.insert(0, str(base))
    toy = importlib.import_module("toy_models")
    ckpts = {}
    for kind in ("gain", "channel_mix", "rectify"):
        config = {"_target_": "toy_models.Toy", "sources": SOURCES, "gains": GAINS, "kind": kind}
        ckpts[kind] = save_checkpoint(base / f"{kind}.ckpt", toy.Toy(SOURCES, GAINS, kind), config)
    loud = [0.5, 0.5, 1.5, 2.0]  # stems louder than the mix: clip handling
    ckpts["loud"] = save_checkpoint(base / "loud.ckpt", toy.Toy(SOURCES, loud),
                                    {"_target_": "toy_models.Toy", "sources": SOURCES, "gains": loud})
    members = []
    for i, gains in enumerate(([0.1, 0.9, 0.3, 0.2], [0.3, 0.2, 0.1, 0.25], [0.2, 0.1, 0.5, 0.6])):
        members.append(save_checkpoint(base / f"member{i}.ckpt", toy.Toy(SOURCES, gains),
                                       {"_target_": "toy_models.Toy", "sources": SOURCES, "gains": gains}))
    ckpts["members"] = members
    yield base, ckpts
    sys.path.remove(str(base))


def cli(module: str, *args: str, cwd: Path, toys_dir: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(toys_dir), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def tone(frames: int, channels: int, rate: int = SR, amp: float = 0.5, seed: int = 0) -> np.ndarray:
    """``(frames, channels)`` low-frequency tones, a different one per channel (survive resampling and MP3)."""
    t = np.arange(frames) / rate
    rng = np.random.default_rng(seed)
    freqs = rng.uniform(150, 600, channels)
    return (amp * np.sin(2 * np.pi * freqs[None] * t[:, None] + rng.uniform(0, 6, channels))).astype(np.float32)


def read(path: Path) -> np.ndarray:
    return sf.read(path, dtype="float32", always_2d=True)[0]


def test_inputs_folder_mp3_mono_rates_template_and_a_corrupt_file(toys, tmp_path):
    """A folder: an MP3 (decoded by ffmpeg), a mono 22.05 kHz WAV, a 3-channel WAV (an error without downmix) and a
    corrupt file: the good ones are written (template, flac 24-bit), the bad ones named, the exit code non-zero."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed")
    toys_dir, ckpts = toys
    inp = tmp_path / "in"
    inp.mkdir()
    stereo = tone(int(1.5 * SR), 2)
    sf.write(tmp_path / "song.wav", stereo, SR, subtype="PCM_16")
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "song.wav"), "-b:a", "192k",
                    str(inp / "song.mp3")], check=True)
    mono = tone(int(1.2 * 22050), 1, rate=22050, seed=1)
    sf.write(inp / "mono.wav", mono, 22050, subtype="FLOAT")
    sf.write(inp / "three.wav", tone(SR, 3, seed=2), SR, subtype="PCM_16")
    (inp / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio" * 10)
    out = tmp_path / "out"
    proc = cli("mss.separate", f"ckpt={ckpts['gain']}", f"input={inp}", f"output_dir={out}", "format=flac",
               "bit_depth=24", "filename={source}/{track}.{ext}", f"hydra.run.dir={tmp_path / 'h'}", cwd=tmp_path,
               toys_dir=toys_dir, check=False)
    assert proc.returncode != 0
    assert "2 of 4 input file(s) failed" in proc.stderr, proc.stderr[-3000:]
    assert "broken.wav" in proc.stderr and "three.wav" in proc.stderr and "downmix=true" in proc.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.flac")) == sorted(
        f"{s}/{t}.flac" for s in SOURCES for t in ("mono", "song"))
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(inp / "song.mp3"), "-f", "f32le", "-"],
                             capture_output=True, check=True).stdout
    decoded = np.frombuffer(decoded, np.float32).reshape(-1, 2)
    for source, gain in zip(SOURCES, GAINS):
        info = sf.info(out / source / "song.flac")
        assert (info.samplerate, info.channels, info.subtype) == (SR, 2, "PCM_24")
        np.testing.assert_allclose(read(out / source / "song.flac"), gain * decoded, atol=1e-4)
        est = read(out / source / "mono.flac")  # mono 22.05 kHz in: mono 22.05 kHz out, resampled twice
        assert (sf.info(out / source / "mono.flac").samplerate, est.shape) == (22050, mono.shape)
        np.testing.assert_allclose(est, gain * mono, atol=2e-3)
    assert "resampling 22050 Hz to the model's 44100 Hz" in proc.stdout + proc.stderr
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))  # atomic writes leave no temporary files


def test_downmix_two_stems_residual_float_and_a_median_bag(toys, tmp_path):
    """A 3-channel file with downmix=true through a bag of three gain models combined by their median (mss.bag):
    stems=[vocals] writes vocals and no_vocals = mixture − vocals; residual = mixture − sum of the estimates; 32-bit
    float WAV with clip=none keeps the values exactly."""
    toys_dir, ckpts = toys
    bag = tmp_path / "bag.ckpt"
    proc = cli("mss.bag", f"ckpt=[{','.join(map(str, ckpts['members']))}]", "combine=median", f"out={bag}",
               cwd=tmp_path, toys_dir=toys_dir)
    assert "combine median" in proc.stdout
    three = tone(int(1.3 * SR), 3, seed=3)
    sf.write(tmp_path / "three.wav", three, SR, subtype="FLOAT")
    out = tmp_path / "out"
    cli("mss.separate", f"ckpt={bag}", f"input={tmp_path / 'three.wav'}", f"output_dir={out}", "downmix=true",
        "stems=[vocals]", "residual=true", "bit_depth=32f", "clip=none", f"hydra.run.dir={tmp_path / 'h'}",
        cwd=tmp_path, toys_dir=toys_dir)
    assert sorted(p.name for p in (out / "three").iterdir()) == ["no_vocals.wav", "residual.wav", "vocals.wav"]
    mix = np.repeat(three.mean(1, keepdims=True), 2, axis=1)  # averaged, duplicated to the model's stereo
    gains = np.median([[0.1, 0.9, 0.3, 0.2], [0.3, 0.2, 0.1, 0.25], [0.2, 0.1, 0.5, 0.6]], axis=0)
    assert sf.info(out / "three" / "vocals.wav").subtype == "FLOAT"
    np.testing.assert_allclose(read(out / "three" / "vocals.wav"), gains[3] * mix, atol=1e-6)
    np.testing.assert_allclose(read(out / "three" / "no_vocals.wav"), (1 - gains[3]) * mix, atol=1e-6)
    np.testing.assert_allclose(read(out / "three" / "residual.wav"), (1 - gains.sum()) * mix, atol=1e-6)


def test_every_format_and_bit_depth(toys, tmp_path):
    """One multirun over format × bit_depth (mp3 ignores the depth): subtypes, rates, lengths and values."""
    toys_dir, ckpts = toys
    sf.write(tmp_path / "song.wav", tone(SR, 2, seed=4), SR, subtype="PCM_16")
    mix = read(tmp_path / "song.wav")
    cli("mss.separate", "-m", f"ckpt={ckpts['gain']}", f"input={tmp_path / 'song.wav'}",
        f"output_dir={tmp_path}/out/${{format}}_${{bit_depth}}", "format=wav,flac,mp3", "bit_depth=16,24",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, toys_dir=toys_dir)
    cli("mss.separate", f"ckpt={ckpts['gain']}", f"input={tmp_path / 'song.wav'}", f"output_dir={tmp_path}/out/wav_32f",
        "bit_depth=32f", f"hydra.run.dir={tmp_path / 'h'}", cwd=tmp_path, toys_dir=toys_dir)
    expected = {"wav_16": "PCM_16", "wav_24": "PCM_24", "wav_32f": "FLOAT", "flac_16": "PCM_16", "flac_24": "PCM_24",
                "mp3_16": "MPEG_LAYER_III", "mp3_24": "MPEG_LAYER_III"}
    for name, subtype in expected.items():
        fmt = name.split("_")[0]
        path = tmp_path / "out" / name / "song" / f"vocals.{fmt}"
        info = sf.info(path)
        assert (info.subtype, info.samplerate, info.channels) == (subtype, SR, 2), name
        est = read(path) if fmt != "mp3" else np.frombuffer(subprocess.run(
            ["ffmpeg", "-v", "error", "-i", str(path), "-f", "f32le", "-"], capture_output=True, check=True).stdout,
            np.float32).reshape(-1, 2)
        assert est.shape == mix.shape, name
        tol = {"PCM_16": 1e-4, "PCM_24": 1e-6, "FLOAT": 1e-7, "MPEG_LAYER_III": 1.5e-2}[subtype]
        np.testing.assert_allclose(est, GAINS[3] * mix, atol=tol, err_msg=name)
    proc = cli("mss.separate", f"ckpt={ckpts['gain']}", f"input={tmp_path / 'song.wav'}", "format=flac",
               "bit_depth=32f", f"hydra.run.dir={tmp_path / 'h2'}", cwd=tmp_path, toys_dir=toys_dir, check=False)
    assert proc.returncode != 0 and "FLAC stores integer PCM only" in proc.stderr


def test_clip_modes(toys, tmp_path):
    """Stems louder than full scale: rescale (the default) divides by 1.01·peak, clamp clips at ±0.99, tanh
    soft-clips, none keeps float values above 1."""
    toys_dir, ckpts = toys
    sf.write(tmp_path / "loud.wav", tone(SR // 2, 2, amp=0.9, seed=5), SR, subtype="FLOAT")
    mix = read(tmp_path / "loud.wav")
    cli("mss.separate", "-m", f"ckpt={ckpts['loud']}", f"input={tmp_path / 'loud.wav'}",
        f"output_dir={tmp_path}/out/${{clip}}", "clip=rescale,clamp,tanh,none", "bit_depth=32f",
        f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path, toys_dir=toys_dir)
    vocals = 2.0 * mix
    got = {mode: read(tmp_path / "out" / mode / "loud" / "vocals.wav") for mode in ("rescale", "clamp", "tanh", "none")}
    np.testing.assert_allclose(got["rescale"], vocals / (1.01 * np.abs(vocals).max()), atol=1e-6)
    np.testing.assert_allclose(got["clamp"], np.clip(vocals, -0.99, 0.99), atol=1e-6)
    np.testing.assert_allclose(got["tanh"], np.tanh(vocals), atol=1e-6)
    np.testing.assert_allclose(got["none"], vocals, atol=1e-6)
    assert np.abs(got["none"]).max() > 1.7
    # a stem that does not clip is left alone by rescale
    np.testing.assert_allclose(read(tmp_path / "out" / "rescale" / "loud" / "drums.wav"), 0.5 * mix, atol=1e-6)


def test_tta_through_the_cli(toys, tmp_path):
    """tta=[flip_sign] on the rectifier averages relu(x) and −relu(−x): exactly x/2 per gain; on the linear
    channel mixer flip_channels averages A·x and P·A·P·x."""
    toys_dir, ckpts = toys
    sf.write(tmp_path / "song.wav", tone(SR // 2, 2, seed=6), SR, subtype="FLOAT")
    mix = read(tmp_path / "song.wav")
    for kind, tta in (("rectify", "[flip_sign]"), ("channel_mix", "[flip_channels,flip_sign]")):
        cli("mss.separate", f"ckpt={ckpts[kind]}", f"input={tmp_path / 'song.wav'}", f"output_dir={tmp_path / kind}",
            f"tta={tta}", "bit_depth=32f", "clip=none", f"hydra.run.dir={tmp_path / 'h' / kind}", cwd=tmp_path,
            toys_dir=toys_dir)
    a = np.array([[1.0, 0.5], [-0.25, 0.75]])
    flipped = a[::-1, ::-1]  # P A P
    for source, gain in zip(SOURCES, GAINS):
        np.testing.assert_allclose(read(tmp_path / "rectify" / "song" / f"{source}.wav"), gain * mix / 2, atol=1e-6)
        expected = gain * (2 * mix @ a.T + mix @ flipped.T) / 3  # plain and flip_sign equal A·x (linear)
        np.testing.assert_allclose(read(tmp_path / "channel_mix" / "song" / f"{source}.wav"), expected, atol=1e-6)


def test_bad_options_are_clear_errors(toys, tmp_path):
    from mss.separate import OutputOptions

    with pytest.raises(AudioError, match="bit_depth=8"):
        OutputOptions(bit_depth=8)
    with pytest.raises(AudioError, match="format='ogg'"):
        OutputOptions(format="ogg")
    with pytest.raises(AudioError, match="clip='soft'"):
        OutputOptions(clip="soft")
    with pytest.raises(AudioError, match="unknown field"):
        OutputOptions(filename="{track}/{stem}.{ext}")
    with pytest.raises(AudioError, match="needs {source}"):
        OutputOptions(filename="{track}.{ext}")
    with pytest.raises(AudioError, match="stems=\\['voice'\\]"):
        OutputOptions(stems=("voice",)).check_sources(SOURCES)
    toys_dir, ckpts = toys
    proc = cli("mss.separate", f"ckpt={ckpts['gain']}", f"input={tmp_path}/*.mp3", f"hydra.run.dir={tmp_path / 'h'}",
               cwd=tmp_path, toys_dir=toys_dir, check=False)
    assert proc.returncode != 0 and "no file matches this pattern" in proc.stderr


def test_evaluation_tta_through_the_evaluate_cli(toys, synth_root, tmp_path):
    """mss.evaluate evaluation.tta=[flip_sign] on the rectifier: the saved estimates are g·mix/2 (TTA applied), not
    the plain run's g·relu(mix) left in the estimate cache by a first run without TTA; protocol.json records it."""
    import json

    toys_dir, ckpts = toys
    common = [f"ckpt={ckpts['rectify']}", f"data.root={synth_root}", "evaluation.save_estimates=true",
              "evaluation.sdr_only=true", "evaluation.plots=false", f"paths.cache_dir={tmp_path / 'cache'}"]
    cli("mss.evaluate", *common, f"hydra.run.dir={tmp_path / 'plain'}", cwd=tmp_path, toys_dir=toys_dir)
    cli("mss.evaluate", *common, "evaluation.tta=[flip_sign]", f"hydra.run.dir={tmp_path / 'tta'}", cwd=tmp_path,
        toys_dir=toys_dir)
    track = sorted((synth_root / "test").iterdir())[0]
    mix = read(track / "mixture.wav")
    for run, expected in (("plain", np.maximum(mix, 0)), ("tta", mix / 2)):
        est = read(tmp_path / run / "estimates" / track.name / "vocals.wav")
        np.testing.assert_allclose(est, GAINS[3] * expected, atol=1e-6, err_msg=run)
    stamp = json.loads((tmp_path / "tta" / "protocol.json").read_text())
    assert stamp["inference"]["tta"] == ["flip_sign"]


def test_folders_are_pipelined_and_equal_file_by_file_separation(toys, tmp_path, monkeypatch):
    """mss.separate on a folder decodes the next file while the network separates the current one (and encodes the
    previous one's stems meanwhile): each file's stems equal those of :func:`separate_file` alone, and a corrupt file
    in the middle is reported without stopping the others."""
    import threading
    import time

    import mss.separate as sep
    from mss.checkpoint import load_model

    base, ckpts = toys
    songs = tmp_path / "songs"
    songs.mkdir()
    for i in range(3):
        sf.write(songs / f"s{i}.wav", tone(30_000, 2, seed=i), SR)
    (songs / "s1b.wav").write_bytes(b"RIFF not audio")
    net = load_model(ckpts["channel_mix"])
    events, lock = [], threading.Lock()
    opener, plain_forward = sep.open_audio, net.forward

    def logged_open(path, *args):
        with lock:
            events.append(("decode", Path(path).stem, threading.current_thread().name))
        return opener(path, *args)

    def slow_forward(mix):
        with lock:
            events.append(("start",))
        time.sleep(0.5)
        out = plain_forward(mix)
        with lock:
            events.append(("end",))
        return out

    monkeypatch.setattr(sep, "open_audio", logged_open)
    monkeypatch.setattr(net, "forward", slow_forward)
    files = sep.list_inputs(songs)
    written, failed = sep.separate_files(net, files, tmp_path / "piped", progress=False)
    assert [p.name for p, _ in failed] == ["s1b.wav"] and sorted(p.stem for p in written) == ["s0", "s1", "s2"]
    # every decode ran in the reader thread, and the second file's began before the first separation ended
    assert all(e[2].startswith("mss-decode") for e in events if e[0] == "decode")
    first_end = next(i for i, e in enumerate(events) if e[0] == "end")
    assert any(e[0] == "decode" and e[1] == "s1" for e in events[:first_end])
    monkeypatch.undo()
    for i in range(3):
        alone = sep.separate_file(net, songs / f"s{i}.wav", tmp_path / "alone")
        for path in alone:
            np.testing.assert_array_equal(read(path), read(tmp_path / "piped" / f"s{i}" / path.name))
    assert not list((tmp_path / "piped").rglob("*.spool")) and not list((tmp_path / "piped").rglob("*.tmp"))
