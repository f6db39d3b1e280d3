"""Tests of the synthetic MUSDB18-HQ-like dataset generator (mss.data.synth)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from mss.data import synth
from mss.data.synth import writer

SR = 44100
DUR = 6.0
STEMS = ("mixture", *synth.MUSDB_SOURCES)


def _read(folder: Path, names: tuple[str, ...] = STEMS, dtype: str = "int16") -> dict[str, np.ndarray]:
    """{name: (n, c) samples} of one track folder."""
    return {s: sf.read(folder / f"{s}.wav", dtype=dtype)[0] for s in names}


def _zero_runs(x: np.ndarray) -> np.ndarray:
    """Lengths (samples) of the runs where every channel of x (n, c) is exactly zero."""
    z = np.concatenate([[0], np.all(x == 0, axis=1).astype(np.int8), [0]])
    d = np.diff(z)
    return np.flatnonzero(d == -1) - np.flatnonzero(d == 1)


def _band_energy(x: np.ndarray, lo: float, hi: float, sr: int = SR) -> float:
    """Fraction of the energy of x (n, c) between lo and hi Hz."""
    spec = np.abs(np.fft.rfft(x.astype(np.float64), axis=0)) ** 2
    f = np.fft.rfftfreq(x.shape[0], 1.0 / sr)
    return float(spec[(f >= lo) & (f < hi)].sum() / spec.sum())


def _tracks(root: Path) -> list[Path]:
    return sorted((root / "train").iterdir()) + sorted((root / "test").iterdir())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ds"
    return synth.generate(root, n_train=2, n_valid=1, n_test=1, duration=DUR)


def test_layout_and_manifest(dataset: Path) -> None:
    assert sorted(p.name for p in (dataset / "train").iterdir()) == ["synth-train-000", "synth-train-001",
                                                                     "synth-valid-000"]
    assert sorted(p.name for p in (dataset / "test").iterdir()) == ["synth-test-000"]
    for track in _tracks(dataset):
        assert sorted(p.name for p in track.iterdir()) == sorted(f"{s}.wav" for s in STEMS)
    assert (dataset / "valid_tracks.txt").read_text().split() == ["synth-valid-000"]
    manifest = json.loads((dataset / "synth.json").read_text())
    assert manifest["version"] == synth.FORMAT_VERSION
    assert manifest["params"] == {"sources": list(synth.MUSDB_SOURCES), "n_train": 2, "n_valid": 1,
                                  "n_test": 1, "duration": DUR, "sample_rate": SR, "seed": 0, "bit_depth": 16,
                                  "dither": True, "stems_mp4": False}
    assert manifest["tracks"]["valid"] == ["synth-valid-000"]
    assert not (dataset / "stems").exists()
    assert [p.name for p in dataset.parent.iterdir()] == ["ds"]  # no temporary folder left behind


def test_wav_format(dataset: Path) -> None:
    for track in _tracks(dataset):
        for s in STEMS:
            info = sf.info(str(track / f"{s}.wav"))
            assert (info.samplerate, info.channels, info.subtype) == (SR, 2, "PCM_16")
            assert info.frames == int(DUR * SR)


def test_mixture_is_exact_sum_without_clipping(dataset: Path) -> None:
    for track in _tracks(dataset):
        a = _read(track)
        total = sum(a[s].astype(np.int32) for s in synth.MUSDB_SOURCES)
        np.testing.assert_array_equal(total, a["mixture"])
        assert np.abs(total).max() < 32767


def test_silent_sections_and_activity(dataset: Path) -> None:
    for track in _tracks(dataset):
        for s, x in _read(track, synth.MUSDB_SOURCES).items():
            runs = _zero_runs(x)
            assert runs.max() >= 1.5 * SR, (track.name, s)  # a section of exact digital silence
            assert np.any(x != 0), (track.name, s)
            # dither makes playing sections non-zero: long zero runs are the arrangement's silences only
            silent = runs[runs >= 0.1 * SR].sum() / x.shape[0]
            assert silent < 0.5, (track.name, s, silent)


def test_spectral_character(dataset: Path) -> None:
    for track in _tracks(dataset):
        a = _read(track, synth.MUSDB_SOURCES)
        assert _band_energy(a["bass"], 0, 250) > 0.9, track.name
        drums_high = _band_energy(a["drums"], 5000, SR / 2)
        assert drums_high > 0.02, track.name
        assert drums_high > 10 * _band_energy(a["bass"], 5000, SR / 2)
        assert _band_energy(a["vocals"], 120, 5000) > 0.9, track.name


def test_stereo_and_variation(dataset: Path) -> None:
    tracks = [_read(t, synth.MUSDB_SOURCES) for t in _tracks(dataset)]
    for a in tracks:
        assert any(not np.array_equal(x[:, 0], x[:, 1]) for x in a.values())  # stereo, not dual mono
    levels = np.array([[np.sqrt(np.mean(a[s].astype(float) ** 2)) for s in synth.MUSDB_SOURCES]
                       for a in tracks])
    ratios = levels / levels[:, :1]  # per-source gains vary from track to track
    assert np.ptp(ratios[:, 1:], axis=0).min() > 0.01


def test_determinism(tmp_path: Path) -> None:
    kw = {"n_train": 1, "n_valid": 0, "n_test": 1, "duration": 4.5}
    a, b = synth.generate(tmp_path / "a", **kw), synth.generate(tmp_path / "b", **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 2 * 5 + 2
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    # each track is reproducible on its own (seeded by seed, split, index)
    alone = synth.render_track("test", 0, duration=4.5)
    stored = _read(a / "test" / "synth-test-000")
    for s in STEMS:
        np.testing.assert_array_equal(alone[s], stored[s])
    c = synth.generate(tmp_path / "c", **kw, seed=1)
    for s in STEMS:
        x, y = (_read(r / "test" / "synth-test-000", (s,))[s] for r in (a, c))
        assert not np.array_equal(x, y), s


@pytest.mark.parametrize("sources", [("vocals", "accompaniment"), (*synth.MUSDB_SOURCES, "piano")])
def test_variants(tmp_path: Path, sources: tuple[str, ...]) -> None:
    root = synth.generate(tmp_path / "v", sources=sources, n_train=1, n_valid=0, n_test=0, duration=5.0)
    a = _read(root / "train" / "synth-train-000", ("mixture", *sources))
    np.testing.assert_array_equal(sum(a[s].astype(np.int32) for s in sources), a["mixture"])
    for s in sources:
        assert _zero_runs(a[s]).max() >= 1.5 * SR and np.any(a[s] != 0), s
    if "accompaniment" in sources:  # drums + bass + other: broadband with a strong low end
        assert _band_energy(a["accompaniment"], 5000, SR / 2) > 0.005
        assert _band_energy(a["accompaniment"], 0, 250) > 0.2


@pytest.mark.parametrize("bit_depth", [24, 32])
def test_bit_depths(tmp_path: Path, bit_depth: int) -> None:
    root = synth.generate(tmp_path / "b", n_train=1, n_valid=0, n_test=0, duration=4.5, bit_depth=bit_depth)
    track = root / "train" / "synth-train-000"
    info = sf.info(str(track / "mixture.wav"))
    assert info.subtype == ("PCM_24" if bit_depth == 24 else "FLOAT")
    a = _read(track, dtype="int32" if bit_depth == 24 else "float64")
    total = sum(a[s].astype(a[s].dtype if bit_depth == 32 else np.int64) for s in synth.MUSDB_SOURCES)
    np.testing.assert_array_equal(total, a["mixture"])
    assert _zero_runs(a["vocals"]).max() >= 1.5 * SR


def test_panned_mono_stems(tmp_path: Path) -> None:
    """Panned-mono sources: centred ones have bit-identical channels, panned ones are scaled copies up to the
    rounding (16 bit: the residual of the best proportional fit is rounding noise), the others stay stereo; the
    manifest records the option and the mixture is still the exact sum."""
    root = synth.generate(tmp_path / "p", n_train=1, n_valid=0, n_test=0, duration=4.5,
                          panned_mono={"bass": 0.0, "vocals": 0.4})
    assert synth.read_manifest(root)["params"]["panned_mono"] == {"bass": 0.0, "vocals": 0.4}
    a = _read(root / "train" / "synth-train-000", dtype="int16")
    np.testing.assert_array_equal(a["bass"][:, 0], a["bass"][:, 1])
    left, right = (a["vocals"][:, c].astype(np.float64) for c in (0, 1))
    gain = left @ right / (left @ left)
    assert gain == pytest.approx(np.tan(1.4 * np.pi / 4), rel=1e-3)  # constant-power pan 0.4: right louder
    assert np.abs(right - gain * left).max() <= 1.5 * (1 + gain)  # dither (+-1 LSB) + rounding per channel
    assert np.abs(a["other"][:, 0] - a["other"][:, 1]).max() > 100
    total = sum(a[s].astype(np.int64) for s in synth.MUSDB_SOURCES)
    np.testing.assert_array_equal(total, a["mixture"])
    plain = synth.render_track("train", 0, duration=4.5)
    # the other sources are unchanged up to the common level (the headroom scale follows the new peaks)
    assert np.corrcoef(plain["drums"].ravel(), a["drums"].ravel())[0, 1] > 0.9999
    with pytest.raises(ValueError, match="not among the sources"):
        synth.generate(tmp_path / "x", panned_mono={"guitar": 0.0})
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        synth.generate(tmp_path / "x", panned_mono={"bass": 2.0})


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known sources: drums, bass, other, vocals, piano, accompaniment"):
        synth.generate(tmp_path / "x", sources=("vocals", "guitar"))
    with pytest.raises(ValueError, match="stems_mp4"):
        synth.generate(tmp_path / "x", sources=("vocals", "accompaniment"), stems_mp4=True)
    with pytest.raises(ValueError, match="duration"):
        synth.generate(tmp_path / "x", duration=2.0)
    with pytest.raises(ValueError, match="bit_depth"):
        synth.generate(tmp_path / "x", bit_depth=8)
    assert not (tmp_path / "x").exists()


def test_existing_root(tmp_path: Path) -> None:
    kw = {"n_train": 1, "n_valid": 0, "n_test": 0, "duration": 4.5}
    root = synth.generate(tmp_path / "ds", **kw)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert synth.generate(root, **kw) == root  # same parameters: no-op
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == stamps
    with pytest.raises(FileExistsError, match=r"(?s)ds.*differing: duration, seed"):
        synth.generate(root, **{**kw, "duration": 5.0}, seed=3)
    synth.generate(root, **{**kw, "seed": 3}, overwrite=True)
    assert json.loads((root / "synth.json").read_text())["params"]["seed"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    # an empty folder is fine, a non-empty one without manifest is never touched
    (tmp_path / "empty").mkdir()
    synth.generate(tmp_path / "empty", **kw)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        synth.generate(tmp_path / "mine", **kw, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_write(path: Path, *args: object) -> None:
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        sf.write(path, np.zeros((10, 2), np.int16), SR)

    monkeypatch.setattr(writer, "_write_wav", failing_write)
    with pytest.raises(OSError, match="disk full"):
        synth.generate(tmp_path / "ds", n_train=1, n_valid=0, n_test=0, duration=4.5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="stems_mp4 needs ffmpeg on PATH")
def test_stems_mp4(tmp_path: Path) -> None:
    musdb = pytest.importorskip("musdb")
    root = synth.generate(tmp_path / "ds", n_train=1, n_valid=1, n_test=1, duration=4.5, stems_mp4=True)
    assert (root / "stems" / "valid_tracks.txt").read_text().split() == ["synth-valid-000"]
    assert (root / "stems" / "test" / "synth-test-000.stem.mp4").is_file()
    db = musdb.DB(root=str(root / "stems"), is_wav=False, subsets="train")
    assert [t.name for t in db.tracks] == ["synth-train-000", "synth-valid-000"]
    for track in db.tracks:
        ref = _read(root / "train" / track.name, dtype="float64")
        for s in STEMS:
            dec = track.audio if s == "mixture" else track.sources[s].audio  # AAC: lossy, padded at the end
            n = ref[s].shape[0]
            assert dec.shape[0] >= n and dec.shape[1] == 2
            corr = np.corrcoef(dec[:n].ravel(), ref[s].ravel())[0, 1]
            assert corr > 0.9, (track.name, s, corr)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mss.data.synth", *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_cli(tmp_path: Path) -> None:
    root = tmp_path / "cli"
    res = _cli(f"root={root}", "n_train=1", "n_valid=0", "n_test=1", "duration=4.5",
               "sources=[vocals,accompaniment]")
    assert res.returncode == 0, res.stderr
    assert str(root) in res.stdout and len(res.stdout.strip().splitlines()) == 1
    assert sorted(p.name for p in (root / "test" / "synth-test-000").iterdir()) == [
        "accompaniment.wav", "mixture.wav", "vocals.wav"]
    assert json.loads((root / "synth.json").read_text())["params"]["sources"] == ["vocals", "accompaniment"]

    res = _cli(f"root={tmp_path / 'bad'}", "n_trian=3")
    assert res.returncode != 0 and "n_trian" in res.stderr
    res = _cli("n_train=1")
    assert res.returncode != 0 and "root" in res.stderr
    assert not (tmp_path / "bad").exists()
