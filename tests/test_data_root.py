"""Pointing training at a dataset, walked through the real command lines from fresh folders: a dataset written by
``python -m mss.data.synth`` is used as it is by ``data=synth``, ``data=musdbhq`` and ``data=folder`` (and by
``mss.evaluate``); a missing or empty ``data.root`` is an error that writes nothing; generating into ``data.root``
and regenerating it are explicit; NaN audio and a diverging loss stop the run naming where they came from."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from mss.audio.io import AudioError, load_audio
from mss.data.datamodule import MSSDataModule
from mss.data.synth import SynthConfig
from mss.run import compose
from tests.conftest import TINY_TRAIN
from tests.test_cli import run

SOURCES = ["drums", "bass", "other", "vocals"]
SMALL = ["n_train=2", "n_valid=1", "n_test=1", "duration=4"]  # generator CLI keys, also set as data.synth.<key>
# one optimiser step per epoch, one validation track, no test-set evaluation
FAST = [o for o in TINY_TRAIN if not o.startswith("data.samples_per_epoch")] + [
    "data.samples_per_epoch=2", "test=false", "++trainer.limit_val_batches=1"]


def train(tmp: Path, name: str, *args: str, check: bool = True):
    return run("mss.train", f"hydra.run.dir={tmp / name}", f"paths.cache_dir={tmp / 'cache'}", *FAST, *args,
               cwd=tmp, check=check)


def found(proc) -> list[str]:
    """The datamodule's 'what data.root holds' log lines."""
    return re.findall(r"\[mss\.data\]\[INFO\] - (data\.root=.*)", proc.stdout)


def listing(folder: Path) -> dict[str, int]:
    """Every path under ``folder`` with its mtime: a folder nobody wrote into has the same listing afterwards."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    """A small dataset written by the generator CLI (read-only for the tests)."""
    base = tmp_path_factory.mktemp("small")
    run("mss.data.synth", f"root={base / 'ds'}", *SMALL, cwd=base)
    return base / "ds"


def test_generator_cli_defaults_then_train_and_evaluate(tmp_path):
    """The CLI's defaults and data=synth's agree: what ``python -m mss.data.synth root=DIR`` writes is what
    data=synth would generate (no note that it differs), and train/evaluate on data.root=DIR use it as it is,
    writing nothing into it (13 tracks of 12 s: about 20 s on 2 idle cores)."""
    ds = tmp_path / "ds"
    run("mss.data.synth", f"root={ds}", cwd=tmp_path)
    before = listing(ds)
    proc = train(tmp_path, "run", f"data.root={ds}")
    assert found(proc) == [f"data.root={ds}: 8 train + 2 valid tracks; sources drums,bass,other,vocals; 44100 Hz, "
                           "2 channel(s)"]
    proc = run("mss.evaluate", f"ckpt={tmp_path / 'run' / 'checkpoints' / 'best.ckpt'}", f"data.root={ds}",
               f"hydra.run.dir={tmp_path / 'eval'}", f"paths.cache_dir={tmp_path / 'cache'}",
               "evaluation.batch_size=8", "evaluation.sdr_only=true", "evaluation.plots=false", cwd=tmp_path)
    assert found(proc) == [f"data.root={ds}: 3 test tracks; sources drums,bass,other,vocals; 44100 Hz, "
                           "2 channel(s)"]
    assert len(list((tmp_path / "eval" / "museval" / "test").glob("*.json"))) == 3
    assert listing(ds) == before
    assert not (tmp_path / "cache" / "synth").exists()  # nothing generated anywhere


def test_generator_defaults_are_data_synth_defaults():
    cli = OmegaConf.to_container(OmegaConf.structured(SynthConfig))
    node = OmegaConf.to_container(compose("train").data.synth)
    assert {k: node[k] for k in ("generate", "overwrite")} == {"generate": False, "overwrite": False}
    params = {k: v for k, v in node.items() if k not in ("generate", "overwrite")}
    assert params == {k: cli[k] for k in params}
    assert set(params) == {"n_train", "n_valid", "n_test", "duration", "seed"}


def test_synth_musdbhq_and_folder_configs_on_a_generated_folder(small_root, tmp_path):
    """``python -m mss.data.synth root=DIR ...`` then ``mss.train data.root=DIR`` (data=synth, whose data.synth
    parameters differ: the dataset is used as it is, and the log says so), ``mss.evaluate ckpt=... data.root=DIR``,
    and the data=musdbhq / data=folder configs on the same folder; none writes into it."""
    before = listing(small_root)
    proc = train(tmp_path, "synth", f"data.root={small_root}")
    line = (f"data.root={small_root}: 2 train + 1 valid tracks; sources drums,bass,other,vocals; 44100 Hz, "
            "2 channel(s)")
    assert found(proc) == [f"{line}; a synthetic dataset written with n_train=2, n_valid=1, n_test=1, "
                           "duration=4.0, used as it is (data.synth applies only with data.synth.generate=true)"]
    proc = run("mss.evaluate", f"ckpt={tmp_path / 'synth' / 'checkpoints' / 'best.ckpt'}", f"data.root={small_root}",
               f"hydra.run.dir={tmp_path / 'eval'}", f"paths.cache_dir={tmp_path / 'cache'}",
               "evaluation.batch_size=8", "evaluation.plots=false", cwd=tmp_path)
    assert found(proc)[0].startswith(f"data.root={small_root}: 1 test track; sources drums,bass,other,vocals;")
    assert (tmp_path / "eval" / "museval" / "test" / "synth-test-000.json").is_file()
    # musdbhq: none of the official validation tracks here, so the folder's own valid_tracks.txt splits it
    proc = train(tmp_path, "hq", "data=musdbhq", f"data.root={small_root}")
    assert found(proc) == [line]
    proc = train(tmp_path, "folder", "data=folder", f"data.root={small_root}", "data.sources=[vocals,bass]")
    assert found(proc) == [f"data.root={small_root}: 3 train + 0 valid tracks; sources vocals,bass; 44100 Hz, "
                           "2 channel(s)"]
    assert (tmp_path / "folder" / "checkpoints" / "last.ckpt").is_file()
    assert listing(small_root) == before
    assert not (tmp_path / "cache" / "synth").exists()


def test_missing_or_empty_root_is_an_error_and_generating_there_is_explicit(tmp_path):
    missing, empty = tmp_path / "does" / "not" / "exist", tmp_path / "empty"
    empty.mkdir()
    for root, state in ((missing, "does not exist"), (empty, "is empty")):
        proc = train(tmp_path, f"fail_{root.name}", f"data.root={root}", check=False)
        assert proc.returncode != 0
        message = proc.stderr
        assert f"data.root={root} {state}" in message
        for way_out in ("data=musdbhq data.root=DIR", f"python -m mss.data.synth root={root}",
                        "data.synth.generate=true"):
            assert way_out in message, way_out
    assert not (tmp_path / "does").exists() and not any(empty.iterdir())
    assert not (tmp_path / "cache" / "synth").exists()

    small = [f"data.synth.{o}" for o in SMALL]
    proc = train(tmp_path, "gen", f"data.root={empty}", "data.synth.generate=true", *small)
    assert found(proc)[0].startswith(f"data.root={empty}: 2 train + 1 valid tracks;")
    assert (empty / "synth.json").is_file()
    generated = listing(empty)
    # generating with other parameters over it is refused; overwrite regenerates
    proc = train(tmp_path, "refused", f"data.root={empty}", "data.synth.generate=true", *small,
                 "data.synth.n_train=3", check=False)
    assert proc.returncode != 0
    assert "differing: n_train" in proc.stderr and "data.synth.overwrite=true" in proc.stderr
    assert listing(empty) == generated
    proc = train(tmp_path, "regen", f"data.root={empty}", "data.synth.overwrite=true", *small,
                 "data.synth.n_train=3")
    assert found(proc)[0].startswith(f"data.root={empty}: 3 train + 1 valid tracks;")


def test_nan_run_in_a_float_stem_fails_naming_file_and_sample(tmp_path):
    ds = tmp_path / "ds"
    run("mss.data.synth", f"root={ds}", *SMALL, "bit_depth=32", cwd=tmp_path)
    stem = ds / "train" / "synth-train-001" / "bass.wav"
    data, sr = sf.read(stem, dtype="float32")
    data[30000:30500, 1] = np.nan
    sf.write(stem, data, sr, subtype="FLOAT")
    proc = train(tmp_path, "run", f"data.root={ds}", check=False)
    assert proc.returncode != 0
    assert f"{stem}: non-finite sample nan at frame 30000 (0.680 s), channel 1" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_load_audio_rejects_non_finite_float_samples(tmp_path):
    path = tmp_path / "x.wav"
    data = np.zeros((1000, 2), np.float32)
    data[700, 0] = np.inf
    sf.write(path, data, 8000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"x\.wav: non-finite sample inf at frame 700 \(0\.087 s\), channel 0"):
        load_audio(path)
    with pytest.raises(AudioError, match="at frame 700 "):  # frames counted from the file's start
        load_audio(path, start=600, frames=200)
    assert torch.equal(load_audio(path, start=0, frames=700), torch.zeros(2, 700))  # before the bad sample


def test_diverging_loss_stops_naming_the_batch_and_keeps_the_last_good_checkpoint(small_root, tmp_path):
    # lr 1e30: epoch 0's step is finite and blows the weights up, epoch 1's loss is NaN
    proc = train(tmp_path, "run", f"data.root={small_root}", "module.optimizer.lr=1e30", "trainer.max_epochs=3",
                 check=False)
    assert proc.returncode != 0
    match = re.search(r"TrainingDiverged: train/loss is (nan|inf) at epoch 1, batch 0 \(global step 1\); its "
                      r"examples \(before augmentation\): (.*?)\. The run stops", proc.stderr)
    assert match, proc.stderr[-3000:]
    examples = match.group(2).split("; ")
    assert len(examples) == 2
    for example in examples:
        assert re.fullmatch(r"synth-train-00[01] from sample \d+ \(\d+\.\d\d s\), 44100 samples", example), example
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert (ckpt["epoch"], ckpt["global_step"]) == (0, 1)  # written at the end of epoch 0, not after the NaN
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    from mss.checkpoint import load_model

    assert all(torch.isfinite(p).all() for p in load_model(last).parameters())


@pytest.mark.parametrize("remix", [False, True])
def test_described_batches_are_what_the_loader_read(small_root, tmp_path, remix):
    """``describe_train_batch`` replays the sampler's seeds: the excerpts it names are the batch rows."""
    dm = MSSDataModule(root=str(small_root), sources=SOURCES, valid_tracks="valid_tracks.txt", segment=0.25,
                       batch_size=2, samples_per_epoch=6, cache_dir=str(tmp_path / "cache"), seed=5,
                       random_tracks=remix)
    dm.setup("fit")
    tracks = {t.name: t for t in dm.tracks["train"]}
    loader = dm.train_dataloader()
    for epoch in (0, 1):
        loader.sampler.set_epoch(epoch)
        for batch, stems in enumerate(loader):
            stems = dm.on_after_batch_transfer(stems, 0)
            for row, text in zip(stems, dm.describe_train_batch(epoch, batch), strict=True):
                where = re.findall(r"(\S+) from sample (\d+)", text)
                if remix:  # "<n> samples of drums: <track> from sample <start> (<t> s), bass: ..."
                    assert re.findall(r"(\w+): \S+ from", text) == SOURCES
                else:
                    where = where * len(SOURCES)
                assert len(where) == len(SOURCES), text
                expected = torch.stack([tracks[name].read_source(s, start=int(start), frames=stems.shape[-1])
                                        for s, (name, start) in zip(SOURCES, where)])
                torch.testing.assert_close(row, expected, rtol=0, atol=0)


def test_checkpoints_of_non_finite_weights_are_refused(small_root, tmp_path, single_thread):
    """However a NaN gets into the weights (an update after the last finite loss, Lightning's on_exception save
    with ``save_on_exception=true``), no checkpoint of them is written: the last good one stays."""
    from mss.lightning.module import TrainingDiverged
    from mss.train import build

    cfg = compose("train", [f"data.root={small_root}", f"paths.output_dir={tmp_path / 'run'}",
                            f"paths.cache_dir={tmp_path / 'cache'}", *FAST, "++trainer.max_steps=1",
                            "++trainer.enable_progress_bar=false"])
    objects = build(cfg)
    trainer = objects["trainer"]
    trainer.fit(objects["module"], datamodule=objects["datamodule"])
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    written = last.read_bytes()
    with torch.no_grad():
        next(objects["module"].net.parameters())[0].fill_(float("nan"))
    for path in (last, tmp_path / "other.ckpt"):
        with pytest.raises(TrainingDiverged, match=r"not writing a checkpoint .*1 parameter tensor\(s\) hold NaN"):
            trainer.save_checkpoint(path)
    assert last.read_bytes() == written and not (tmp_path / "other.ckpt").exists()
