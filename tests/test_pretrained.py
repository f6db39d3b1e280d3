"""Published models by name: a registry entry served from a local HTTP server (generated reference-layout files with
random weights) is downloaded, checksum-verified, converted once, reused, and separates through the real CLIs; a bad
checksum or an unreachable server leaves no cache entry and names the URL and the path to place the file at."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from mss import load_model
from mss.pretrained import registry as reg
from tests.test_import_demucs import export, reloaded_reference, small_htdemucs

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def registry_file(tmp_path, server, monkeypatch):
    """A user registry (MSS_PRETRAINED_REGISTRY) with a small HT Demucs published on the local server."""
    base, served, _ = server
    model = export(small_htdemucs(seed=3), served / "aaaa1111-00000000.th")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    entries = {"tiny_ht": {"importer": "demucs", "sources": ["drums", "bass", "other", "vocals"],
                           "files": {"model": {"url": base + model.name, "sha256": digest[:8]}},
                           "description": "test"},
               "tiny_ht_bad": {"importer": "demucs", "sources": ["drums", "bass", "other", "vocals"],
                               "files": {"model": {"url": base + model.name, "sha256": "deadbeef"}}},
               "tiny_ht_gone": {"importer": "demucs", "sources": ["drums", "bass", "other", "vocals"],
                                "files": {"model": {"url": base + "missing-12345678.th", "sha256": "12345678"}}}}
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(entries))
    monkeypatch.setenv("MSS_PRETRAINED_REGISTRY", str(path))
    monkeypatch.setenv("MSS_PRETRAINED_DIR", str(tmp_path / "cache"))
    return path, model


def test_download_verify_convert_reuse(registry_file, server, tmp_path):
    _, model_file = registry_file
    _, _, requests = server
    net = load_model("tiny_ht")  # mss.load_model by name
    assert len(requests) == 1
    mix = torch.randn(1, 2, 11025)
    with torch.no_grad():
        expected = reloaded_reference(model_file)(mix)
        assert (net(mix) - expected).abs().max() <= 1e-4 * expected.abs().max()
    cached = sorted(p.name for p in (tmp_path / "cache" / "tiny_ht").iterdir())
    assert cached[0] == "aaaa1111-00000000.th" and cached[1].startswith("tiny_ht-") and len(cached) == 2
    load_model("tiny_ht")
    assert len(requests) == 1  # converted checkpoint reused
    (tmp_path / "cache" / "tiny_ht" / cached[1]).unlink()
    load_model("tiny_ht")
    assert len(requests) == 1  # download reused (checksum verified), only the conversion is redone


def test_checksum_failure_and_offline_leave_no_cache_entry(registry_file, tmp_path):
    with pytest.raises(reg.PretrainedError, match="checksum mismatch") as err:
        reg.fetch("tiny_ht_bad", progress=False)
    assert "nothing was written" in str(err.value)
    with pytest.raises(reg.PretrainedError, match=r"cannot download http://127.0.0.1:\d+/missing-12345678.th.*place "
                                                   r"it at .*tiny_ht_gone/missing-12345678.th"):
        reg.fetch("tiny_ht_gone", progress=False)
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert leftovers == []  # no partial download became (or stayed) a cache entry
    with pytest.raises(reg.PretrainedError, match="unknown published model 'nope'"):
        reg.fetch("nope")
    with pytest.raises(reg.PretrainedError, match="DiffQ"):
        reg.fetch("mdx_q")


def test_unpublished_sums_are_recorded_on_first_use(tmp_path, server, monkeypatch):
    base, served, _ = server
    (served / "w.bin").write_bytes(b"abc")
    dest = tmp_path / "m" / "w.bin"
    reg.download(base + "w.bin", dest, None, progress=False)
    entry = {"files": {"model": {"url": base + "w.bin", "sha256": None}}}
    reg._record_unpublished_sums(dest.parent, entry, {"model": dest})
    dest.write_bytes(b"abd")
    with pytest.raises(reg.PretrainedError, match="changed since it was first downloaded"):
        reg._record_unpublished_sums(dest.parent, entry, {"model": dest})


def test_separate_and_list_by_name_through_the_cli(registry_file, tmp_path):
    env_file, _ = registry_file
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    song = tmp_path / "song.wav"
    sf.write(song, np.random.default_rng(0).uniform(-0.3, 0.3, (22050, 2)).astype(np.float32), 44100)
    proc = subprocess.run([sys.executable, "-m", "mss.pretrained", "list"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and "htdemucs_ft" in proc.stdout and "tiny_ht" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mss.separate", "model=tiny_ht", f"input={song}",
                           f"output_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out" / "song").iterdir()) == [
        "bass.wav", "drums.wav", "other.wav", "vocals.wav"]


def test_builtin_registry_entries_are_well_formed():
    for name, entry in reg.REGISTRY.items():
        reg._check_entry(name, entry, "REGISTRY")
        assert entry["sources"] and entry["description"]
        for spec in entry["files"].values():
            assert spec["url"].startswith("https://")
            if "dl.fbaipublicfiles.com/demucs" in spec["url"] or "zenodo" in spec["url"]:
                # those projects name files <sig>-<sha256 prefix>: the prefix is what is checked
                assert spec["sha256"] == Path(spec["url"]).stem.split("-")[1] and len(spec["sha256"]) == 8
    assert len(reg.REGISTRY["htdemucs_ft"]["files"]) == 4
