"""Stem pools, CSV/JSON listings and weighted multi-dataset training: known-answer reads (ramp files whose samples
say which file and offset was read, and the ramp's slope the gain), presence, weights, listing rows and their errors,
and one training step per config through ``python -m mss.train``."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from mss.audio.io import AudioError
from mss.data.listing import ListingDataModule, read_listing
from mss.data.multi import MultiDataModule
from mss.data.pools import PoolDataset, StemPoolDataModule, find_pool
from mss.data.sampling import SeededDataset
from mss.data.tracks import DatasetError
from tests.conftest import TINY_TRAIN
from tests.test_cli import run

SOURCES = ["drums", "bass", "other", "vocals"]
SR = 8000
LENGTH = 3000  # samples per ramp file
SEGMENT = 400


def ramp_file(path, k: int, sr: int = SR, channels: int = 2, length: int = LENGTH):
    """16-bit file ``k``: sample ``n`` of channel 0 is ``(k * 4000 + n) / 32768`` (channel 1 its negative), so one
    sample names the file and the offset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = (k * 4000 + np.arange(length)).astype(np.int16)
    data = np.stack([x, -x][:channels], 1)
    sf.write(path, data, sr, subtype="PCM_16")
    return path


def decode(row: torch.Tensor) -> tuple[int, int, float]:
    """``(file k, start, gain dB)`` of a ramp excerpt ``(C, T)`` read at an unknown gain: slope = gain."""
    x = row[0].double() * 32768
    slope = float(x[-1] - x[0]) / (len(x) - 1)
    first = float(x[0]) / slope
    return int(round(first)) // 4000, int(round(first)) % 4000, 20 * math.log10(slope)


@pytest.fixture
def ramps(tmp_path):
    for k in range(3):
        ramp_file(tmp_path / "vocals" / f"v{k}.wav", k)
    for k in range(2):
        ramp_file(tmp_path / "drums" / "sub" / f"d{k}.wav", 5 + k)
    return tmp_path


def pool_dm(ramps, tmp_path, **kw):
    args = dict(pools={"vocals": [str(ramps / "vocals")], "drums": [str(ramps / "drums")]},
                sources=["drums", "vocals"], sample_rate=SR, segment=SEGMENT / SR, batch_size=4,
                samples_per_epoch=8, cache_dir=str(tmp_path / "cache"), gains={"drums": [-6.0, 3.0]})
    return StemPoolDataModule(**{**args, **kw})


def test_pool_items_are_the_drawn_file_offset_and_gain(ramps, tmp_path):
    dm = pool_dm(ramps, tmp_path)
    dm.setup("fit")
    data = SeededDataset(dm.train_dataset())
    seen = {"drums": set(), "vocals": set()}
    for seed in range(60):
        item = data[(0, seed)]
        assert item.shape == (2, 2, SEGMENT) and item.dtype == torch.float32
        text = data.describe((0, seed))
        for row, source in zip(item, ["drums", "vocals"]):
            k, start, gain = decode(row)
            assert 0 <= start <= LENGTH - SEGMENT
            # the excerpt is the ramp from `start` at one gain, both channels
            ramp = (k * 4000 + start + torch.arange(SEGMENT, dtype=torch.float64)) / 32768 * 10 ** (gain / 20)
            torch.testing.assert_close(row[0].double(), ramp, atol=1e-6, rtol=2e-5)
            torch.testing.assert_close(row[1], -row[0])
            lo, hi = (-6.0, 3.0) if source == "drums" else (0.0, 0.0)
            assert lo - 1e-3 <= gain <= hi + 1e-3
            name = f"d{k - 5}.wav" if source == "drums" else f"v{k}.wav"
            said = re.search(rf"{source}: (\S+) from sample (\d+) \([^)]*\) at ([-+0-9.]+) dB", text)
            assert said and said[1].endswith(name) and int(said[2]) == start
            assert abs(float(said[3]) - gain) < 0.01
            seen[source].add(k)
        torch.testing.assert_close(data[(0, seed)], item)  # the seed alone decides the item
    assert seen == {"drums": {5, 6}, "vocals": {0, 1, 2}}
    gains = [decode(data[(0, s)][0])[2] for s in range(60)]
    assert max(gains) - min(gains) > 4  # spread over the range, not one value


def test_pool_batches_through_the_loader_equal_the_seeded_items(ramps, tmp_path):
    dm = pool_dm(ramps, tmp_path)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    items = [dm._train_set[item] for item in dm._sampler.batch(0, 0, 4)]
    torch.testing.assert_close(batch, torch.stack(items))


def test_pool_int16_items_only_without_gains_and_equal_to_float(ramps, tmp_path):
    assert not pool_dm(ramps, tmp_path).int16_batches()  # gains
    dm = pool_dm(ramps, tmp_path, gains=None)
    dm.setup("fit")
    assert dm.int16_batches()
    batch = next(iter(dm.train_dataloader()))
    assert batch.dtype == torch.int16
    floats = SeededDataset(dm.train_dataset(int16=False))
    items = [floats[item] for item in dm._sampler.batch(0, 0, 4)]
    torch.testing.assert_close(dm.on_after_batch_transfer(batch, 0), torch.stack(items), atol=0, rtol=0)
    k, start, gain = decode(items[0][1])
    assert gain == pytest.approx(0.0, abs=1e-3) and int(batch[0, 1, 0, 0]) == k * 4000 + start


def test_pool_missing_source_and_file_checks(ramps, tmp_path):
    with pytest.raises(ValueError, match=r"no pool for \['bass'\]"):
        pool_dm(ramps, tmp_path, sources=["drums", "bass", "vocals"])
    dm = pool_dm(ramps, tmp_path, sources=["drums", "bass", "vocals"], missing_stems="allow")
    dm.setup("fit")
    item = SeededDataset(dm.train_dataset())[(0, 3)]
    assert item["present"].tolist() == [True, False, True]
    assert not item["stems"][1].any() and item["stems"][2].abs().sum() > 0
    odd = ramp_file(tmp_path / "odd" / "x.wav", 0, sr=16000)
    with pytest.raises(AudioError, match=rf"{odd}: sample rate is 16000 Hz, expected data.sample_rate={SR}"):
        find_pool([str(odd)], "vocals", sample_rate=SR, channels=2)
    mono = ramp_file(tmp_path / "odd" / "m.wav", 0, channels=1)
    with pytest.raises(AudioError, match=rf"{mono}: has 1 channel"):
        find_pool([str(mono)], "vocals", sample_rate=SR, channels=2)
    files = find_pool([str(mono)], "vocals", sample_rate=SR, channels=2, convert=True)
    row = PoolDataset({"vocals": files}, ["vocals"], segment=SEGMENT, samples_per_epoch=1, channels=2,
                      sample_rate=SR, convert=True).read(0)[0]
    torch.testing.assert_close(row[0], row[1])  # mono spread over both channels
    fast = ramp_file(tmp_path / "odd" / "f.wav", 1, sr=2 * SR, length=2 * LENGTH)  # resampled: slope 2 per sample
    files = find_pool([str(fast)], "vocals", sample_rate=SR, channels=2, convert=True)
    with pytest.warns(UserWarning, match="resampl"):
        row = PoolDataset({"vocals": files}, ["vocals"], segment=SEGMENT, samples_per_epoch=1, channels=2,
                          sample_rate=SR, convert=True).read(0)[0]
    steps = torch.diff(row[0].double() * 32768)[20:-20]  # away from the excerpt's edges
    assert (steps - 2).abs().max() < 0.05  # the whole segment: no zero tail
    with pytest.raises(DatasetError, match="matches no audio file"):
        find_pool([str(tmp_path / "nothing" / "*.wav")], "vocals", sample_rate=SR, channels=2)


def test_pool_validation_from_valid_root(synth_root, tmp_path):
    dm = StemPoolDataModule(pools={s: [str(synth_root / "train" / "*" / f"{s}.wav")] for s in SOURCES},
                            sources=SOURCES, segment=0.5, valid_root=str(synth_root), cache_dir=str(tmp_path))
    dm.setup("fit")
    assert sorted(t.name for t in dm.tracks["valid"]) == sorted(p.name for p in (synth_root / "test").iterdir())
    assert len(dm.pools["vocals"]) == len(list((synth_root / "train").iterdir()))
    bare = pool_dm_no_valid(synth_root, tmp_path)
    assert bare.tracks["valid"] == [] and len(bare.track_dataset("valid")) == 0
    bare.setup("test")
    with pytest.raises(DatasetError, match="without data.valid_root has no test tracks"):
        bare.track_dataset("test")
    with pytest.raises(ValueError, match="does not apply data.repitch"):
        StemPoolDataModule(pools={"vocals": ["x"]}, sources=["vocals"], effects=object(), cache_dir=str(tmp_path))


def pool_dm_no_valid(root, tmp_path):
    dm = StemPoolDataModule(pools={"vocals": [str(root / "train")]}, sources=["vocals"], segment=0.5,
                            cache_dir=str(tmp_path))
    dm.setup("fit")
    return dm


def dc_child(tmp_path, name, level, sources=("drums", "vocals"), **kw):
    for s in sources:
        path = tmp_path / name / f"{s}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, np.full((LENGTH, 2), level, np.float32), SR, subtype="FLOAT")
    return StemPoolDataModule(pools={s: [str(tmp_path / name / f"{s}.wav")] for s in sources},
                              sources=["drums", "vocals"], sample_rate=SR, segment=SEGMENT / SR,
                              cache_dir=str(tmp_path / "cache"), **kw)


def test_multi_picks_children_by_weight_with_presence(tmp_path):
    a = dc_child(tmp_path, "a", 0.25)
    b = dc_child(tmp_path, "b", 0.5, sources=("vocals",), missing_stems="allow")
    dm = MultiDataModule(datasets={"a": {"weight": 3.0, "data": a}, "b": {"weight": 1.0, "data": b}},
                         sources=["drums", "vocals"], sample_rate=SR, segment=SEGMENT / SR, samples_per_epoch=64,
                         batch_size=8, cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    data = SeededDataset(dm.train_dataset())
    n, from_a = 800, 0
    for seed in range(n):
        item = data[(0, seed)]
        vocals = float(item["stems"][1, 0, 0])
        assert vocals in (0.25, 0.5)
        is_a = vocals == 0.25
        from_a += is_a
        assert item["present"].tolist() == [is_a, True]  # child b lacks drums; child a has all
        assert data.describe((0, seed)).startswith("a: " if is_a else "b: ")
    assert abs(from_a / n - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)  # 4 sigma: ~0.06
    batch = next(iter(dm.train_dataloader()))  # the EpochSampler path: dict batch with presence
    assert batch["stems"].shape == (8, 2, 2, SEGMENT) and batch["present"].shape == (8, 2)


def test_multi_resumes_mid_epoch_with_the_next_batch(ramps, tmp_path):
    def multi(workers: int = 0):
        dm = MultiDataModule(datasets={"ramps": {"weight": 1.0, "data": pool_dm(ramps, tmp_path)},
                                       "dc": {"weight": 1.0, "data": dc_child(tmp_path, "dc", 0.5)}},
                             sources=["drums", "vocals"], sample_rate=SR, segment=SEGMENT / SR, samples_per_epoch=12,
                             batch_size=4, seed=3, cache_dir=str(tmp_path / "cache"), num_workers=workers)
        dm.setup("fit")
        return dm

    whole = list(multi().train_dataloader())
    assert len(whole) == 3 and not torch.equal(whole[1], whole[2])
    resumed = multi()
    resumed.load_state_dict({"epoch": 0, "batches": 1, "batch_size": 4, "world_size": 1})
    torch.testing.assert_close(list(resumed.train_dataloader()), whole[1:])
    torch.testing.assert_close(list(multi(workers=2).train_dataloader()), whole)  # loader workers: same examples


def test_multi_children_inherit_and_must_agree(synth_root, tmp_path):
    child = {"_target_": "mss.data.datamodule.MSSDataModule", "root": str(synth_root), "valid_tracks":
             "valid_tracks.txt"}
    dm = MultiDataModule(datasets={"hq": {"weight": 1.0, "data": child}}, sources=SOURCES, segment=0.5,
                         cache_dir=str(tmp_path))
    assert dm.children["hq"].segment == 0.5 and dm.children["hq"].sources == SOURCES
    assert dm.children["hq"].cache_dir == tmp_path  # inherited where left out, the child's own otherwise
    own = MultiDataModule(datasets={"hq": {"data": {**child, "cache_dir": str(tmp_path / "own")}}}, sources=SOURCES,
                          cache_dir=str(tmp_path))
    assert own.children["hq"].cache_dir == tmp_path / "own"
    dm.setup("fit")
    valid = (synth_root / "valid_tracks.txt").read_text().split()
    assert [t.name for t in dm.tracks["valid"]] == [f"hq-{v}" for v in valid]
    with pytest.raises(ValueError, match=r"data.datasets.hq.data.sample_rate=22050 differs from data.sample_rate"):
        MultiDataModule(datasets={"hq": {"data": {**child, "sample_rate": 22050}}}, sources=SOURCES,
                        cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"data.valid='nope'"):
        MultiDataModule(datasets={"hq": {"data": child}}, sources=SOURCES, valid="nope", cache_dir=str(tmp_path))


def write_dc(path, level, length=LENGTH):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.full((length, 2), level, np.float32), SR, subtype="FLOAT")
    return path


def test_listing_per_track_csv(tmp_path):
    write_dc(tmp_path / "a" / "drums.wav", 0.1)
    write_dc(tmp_path / "a" / "vox.wav", 0.2)
    write_dc(tmp_path / "b" / "drums.wav", 0.3)
    (tmp_path / "list.csv").write_text("track,split,drums,vocals\nsong-a,train,a/drums.wav,a/vox.wav\n"
                                       f"song-b,test,{tmp_path / 'b' / 'drums.wav'},\n")
    splits, pools = read_listing(tmp_path / "list.csv", ["drums", "vocals"], sample_rate=SR, channels=2)
    (a,), (b,) = splits["train"], splits["test"]
    assert a.name == "song-a" and a.sources == {"drums": (str(tmp_path / "a/drums.wav"),),
                                                "vocals": (str(tmp_path / "a/vox.wav"),)}
    assert b.name == "song-b" and not b.present("vocals") and splits["valid"] == []
    assert float(a.read_source("vocals")[0, 0]) == pytest.approx(0.2)
    assert float(b.read_mixture()[0, 5]) == pytest.approx(0.3)
    assert all(not p for p in pools.values())
    with pytest.raises(DatasetError, match=r"has no file for \['vocals'\]"):
        read_listing(tmp_path / "list.csv", ["drums", "vocals"], sample_rate=SR, channels=2, missing="error")


def test_listing_per_file_json_sums_and_pools(tmp_path):
    write_dc(tmp_path / "x" / "gtr1.wav", 0.1)
    write_dc(tmp_path / "x" / "gtr2.wav", 0.25)
    write_dc(tmp_path / "x" / "vox.wav", 0.4)
    write_dc(tmp_path / "pool" / "v.wav", 0.7, length=LENGTH // 2)
    rows = [{"path": "x/gtr1.wav", "source": "other", "track": "x", "split": "valid"},
            {"path": "x/gtr2.wav", "source": "other", "track": "x", "split": "valid"},
            {"path": "x/vox.wav", "source": "vocals", "track": "x", "split": "valid"},
            {"path": "pool/v.wav", "source": "vocals"}]
    (tmp_path / "l.json").write_text(json.dumps(rows))
    splits, pools = read_listing(tmp_path / "l.json", ["other", "vocals"], sample_rate=SR, channels=2)
    (x,) = splits["valid"]
    assert float(x.read_source("other")[1, 10]) == pytest.approx(0.35)  # the two guitar files summed
    assert [p.path for p in pools["vocals"]] == [str(tmp_path / "pool" / "v.wav")] and pools["other"] == []
    (tmp_path / "bad.json").write_text(json.dumps([rows[0], {"path": "x/vox.wav", "source": "flute"}]))
    with pytest.raises(DatasetError, match=r"bad.json, entry 1, column 'source': 'flute' is not one of"):
        read_listing(tmp_path / "bad.json", ["other", "vocals"], sample_rate=SR, channels=2)
    # a listing of pool rows only trains from the pools
    (tmp_path / "p.json").write_text(json.dumps(rows[3:]))
    dm = ListingDataModule(listing=str(tmp_path / "p.json"), sources=["other", "vocals"], sample_rate=SR,
                           segment=SEGMENT / SR, cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    item = SeededDataset(dm.train_dataset())[(0, 1)]
    assert item["present"].tolist() == [False, True] and float(item["stems"][1, 0, 0]) == pytest.approx(0.7)


@pytest.mark.parametrize("text, line, column, what", [
    ("track,split,drums,vocals\nok,train,a.wav,\nbad,train,missing.wav,\n", 3, "drums", "file .*missing.wav not found"),
    ("track,split,drums,vocals\nok,holdout,a.wav,\n", 2, "split", "'holdout' is not one of"),
    ("track,drums,piano\nok,a.wav,a.wav\n", 2, "piano", "unknown column"),
    ("path,source,track\na.wav,drums,t\na.wav,flute,t\n", 3, "source", "'flute' is not one of"),
    ("track,drums,vocals\nok,a.wav,\nok,a.wav,\n", 3, "track", "track .ok. is listed twice"),
])
def test_listing_bad_rows_name_file_line_and_column(tmp_path, text, line, column, what):
    write_dc(tmp_path / "a.wav", 0.1)
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DatasetError, match=rf"bad.csv, line {line}, column '{column}': {what}"):
        read_listing(tmp_path / "bad.csv", ["drums", "vocals"], sample_rate=SR, channels=2)


def test_listing_rows_of_other_rates_follow_the_convert_rule(tmp_path):
    sf.write(tmp_path / "r.wav", np.zeros((100, 2), np.float32), 16000, subtype="FLOAT")
    (tmp_path / "l.csv").write_text("path,source\nr.wav,drums\n")
    with pytest.raises(DatasetError, match=r"l.csv, line 2, column 'path': .*r.wav: sample rate is 16000 Hz"):
        read_listing(tmp_path / "l.csv", ["drums"], sample_rate=SR, channels=2)


TRAIN = [o for o in TINY_TRAIN if not o.startswith("data.")] + ["data.segment=1.0", "data.batch_size=2",
                                                                 "data.samples_per_epoch=4", "data.num_workers=0"]


def train_step(tmp_path, *overrides):
    run_dir = tmp_path / "run"
    run("mss.train", f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}", *TRAIN, *overrides,
        cwd=tmp_path)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


@pytest.mark.slow
def test_train_step_stems_pool(synth_root, tmp_path):
    pools = ",".join(f"{s}:['{synth_root}/train/*/{s}.wav']" for s in SOURCES)
    train_step(tmp_path, "data=stems_pool", f"data.pools={{{pools}}}", "data.gains={vocals:[-3,3]}", "test=false")


@pytest.mark.slow
def test_train_step_listing(synth_root, tmp_path):
    rows = ["track,split," + ",".join(SOURCES)]
    for split, folder in (("train", "train"), ("test", "test")):
        for track in sorted((synth_root / folder).iterdir()):
            rows.append(f"{track.name},{split}," + ",".join(str(track / f"{s}.wav") for s in SOURCES))
    (tmp_path / "tracks.csv").write_text("\n".join(rows) + "\n")
    train_step(tmp_path, "data=listing", f"data.listing={tmp_path / 'tracks.csv'}", "test=false")


@pytest.mark.slow
def test_train_step_multi(synth_root, tmp_path):
    hq = f"hq:{{weight:1.0,data:{{_target_:mss.data.datamodule.MSSDataModule,root:'{synth_root}',valid_tracks:null}}}}"
    pool = (f"pool:{{weight:0.5,data:{{_target_:mss.data.pools.StemPoolDataModule,pools:{{vocals:"
            f"['{synth_root}/train/*/vocals.wav']}},missing_stems:allow}}}}")
    run_dir = train_step(tmp_path, "data=multi", f"data.datasets={{{hq},{pool}}}", "test=false")
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.data.datasets.pool.weight == 0.5
