"""MoisesDB layout: the generator (``generate(..., layout="moisesdb")``) against its own song plans, and
``data=moisesdb`` / ``data=moisesdb_6stem`` reading it through the real datamodule: which files went to which source,
absent sources exactly where the generator left stems out, mixtures equal to the sum of the files, the mapping report,
the split, the cache, the errors, and one real ``python -m mss.train`` run validating on a song without bass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra.utils import instantiate

from mss.data.moisesdb import STEMS, Taxonomy, find_songs, split_names
from mss.data.synth import generate, read_manifest
from mss.data.synth.moisesdb import PROVIDER, song_id, song_plan
from mss.data.tracks import DatasetError
from mss.run import compose
from tests.conftest import TINY_TRAIN
from tests.test_cli import run

SEED = 1  # (index + split code + seed) % 4 picks the absent stems: the valid song lacks bass, the test song vocals
# and piano
GEN = dict(n_train=3, n_valid=1, n_test=1, duration=4.0, seed=SEED)
SPLITS = {"train": 3, "valid": 1, "test": 1}
FOUR = {"vocals": "vocals", "drums": "drums", "bass": "bass"}  # stem -> source; the rest is other
SIX = {**FOUR, "guitar": "guitar", "piano": "piano"}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("moisesdb") / "db", layout="moisesdb", **GEN)


def songs():
    """``(split, index, song id)`` of every generated song."""
    return [(split, i, song_id(SEED, split, i)) for split, n in SPLITS.items() for i in range(n)]


def expected(root: Path, split: str, index: int, stem_to_source: dict[str, str], unmapped: str | None = "other"):
    """``{source: sorted files}`` of one song, from the generator's plan and a plain stem -> source table."""
    out: dict[str, list[str]] = {}
    sid = song_id(SEED, split, index)
    for inst in song_plan(SEED, split, index):
        source = stem_to_source.get(inst.stem, unmapped)
        path = root / PROVIDER / sid / inst.stem / f"{song_id(SEED, split, index, inst.stem, inst.key)}.wav"
        if source is not None:
            out.setdefault(source, []).append(str(path))
    return {k: sorted(v) for k, v in out.items()}


def datamodule(root: Path, tmp_path: Path, config: str = "moisesdb", *overrides: str):
    cfg = compose("train", [f"data={config}", f"data.root={'null' if root is None else root}",
                            f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}",
                            "data.valid_tracks=valid_tracks.txt", "data.test_tracks=test_tracks.txt", *overrides])
    dm = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    dm.setup(None)
    return dm


def read(path: str) -> torch.Tensor:
    x, _ = sf.read(path, dtype="int16", always_2d=True)
    return torch.from_numpy(x.T.astype(np.float32) / 32768)


def test_generator_writes_the_moisesdb_layout(root):
    manifest = read_manifest(root)
    assert manifest["params"]["layout"] == "moisesdb" and "sources" not in manifest["params"]
    assert manifest["tracks"] == {s: [song_id(SEED, s, i) for i in range(n)] for s, n in SPLITS.items()}
    assert (root / "valid_tracks.txt").read_text().split() == manifest["tracks"]["valid"]
    assert (root / "test_tracks.txt").read_text().split() == manifest["tracks"]["test"]
    absent = {}
    for split, index, sid in songs():
        meta = json.loads((root / PROVIDER / sid / "data.json").read_text())
        assert meta["song"] == f"synth-{split}-{index:03d}" and {"artist", "genre"} <= set(meta)
        plan = song_plan(SEED, split, index)
        listed = [(stem["stemName"], t["trackType"], t["extension"]) for stem in meta["stems"] for t in stem["tracks"]]
        assert listed == [(i.stem, i.track_type, "wav") for i in plan]
        assert all(stem["stemName"] in STEMS and stem["id"] for stem in meta["stems"])
        total = 0
        for stem in meta["stems"]:
            for t in stem["tracks"]:
                x, sr = sf.read(root / PROVIDER / sid / stem["stemName"] / f"{t['id']}.wav", dtype="int16")
                assert sr == 44100 and x.shape == (4 * 44100, 2) and np.abs(x).max() > 1000
                total = total + x.astype(np.int64)
        assert np.abs(total).max() < 32768  # the tracks are levelled together: their sum does not clip
        absent[(split, index)] = {"vocals", "drums", "bass", "guitar", "piano"} - {i.stem for i in plan}
    assert absent == {("train", 0): {"piano"}, ("train", 1): {"bass"}, ("train", 2): {"vocals", "piano"},
                      ("valid", 0): {"bass"}, ("test", 0): {"vocals", "piano"}}
    two = [i for i in song_plan(SEED, "train", 0) if i.stem == "guitar"]
    if len(two) == 2:  # two guitar performances of one synthesiser, independent
        files = [root / PROVIDER / song_id(SEED, "train", 0) / "guitar" /
                 f"{song_id(SEED, 'train', 0, 'guitar', i.key)}.wav" for i in two]
        a, b = (sf.read(f)[0] for f in files)
        assert abs(np.corrcoef(a[:, 0], b[:, 0])[0, 1]) < 0.9


@pytest.mark.parametrize("config,table", [("moisesdb", FOUR), ("moisesdb_6stem", SIX)])
def test_datamodule_maps_the_taxonomy(root, tmp_path, config, table):
    dm = datamodule(root, tmp_path, config)
    sources = dm.sources
    assert set(sources) == set(table.values()) | {"other"}
    by_name = {t.name: t for split in ("train", "valid", "test") for t in dm.tracks[split]}
    assert {split: [t.name for t in dm.tracks[split]] for split in dm.tracks} == {
        split: sorted(song_id(SEED, split, i) for i in range(n)) for split, n in SPLITS.items()}
    for split, index, sid in songs():
        track, want = by_name[sid], expected(root, split, index, table)
        assert {s: sorted(track.sources[s]) for s in sources} == {s: want.get(s, []) for s in sources}
        assert [track.present(s) for s in sources] == [s in want for s in sources]
        assert track.mixture is None
    if config == "moisesdb_6stem":  # the test song has no piano (nor vocals); the valid song no bass
        assert not by_name[song_id(SEED, "test", 0)].present("piano")
    item = dm.track_dataset("valid")[0]
    every = expected(root, "valid", 0, {})["other"]  # all files of the song
    assert torch.equal(item["mixture"], torch.stack([read(f) for f in every]).sum(0))
    for k, source in enumerate(sources):
        files = expected(root, "valid", 0, table).get(source, [])
        ref = torch.stack([read(f) for f in files]).sum(0) if files else torch.zeros_like(item["mixture"])
        assert torch.equal(item["stems"][k], ref), source
    assert item["present"].tolist() == [s != "bass" for s in sources]
    # the mapping report in the run directory, against counts from the plans
    report = json.loads((tmp_path / "run" / "moisesdb_mapping.json").read_text())
    plans = [(table.get(i.stem, "other"), i) for split, index, _ in songs() for i in song_plan(SEED, split, index)]
    for source in sources:
        mine = [i for s, i in plans if s == source]
        entry = report["sources"][source]
        assert entry["files"] == len(mine)
        assert entry["stems"] == {stem: sum(i.stem == stem for i in mine) for stem in {i.stem for i in mine}}
        assert sum(entry["instruments"].values()) == len(mine)
        assert entry["songs_without"] == sum(source not in expected(root, sp, i, table) for sp, i, _ in songs())
        assert entry["songs"] + entry["songs_without"] == 5
    assert report["sources"]["bass"]["songs_without"] == 2 and report["dropped"] == {}
    assert report["split"]["valid"] == [song_id(SEED, "valid", 0)]


def test_instrument_rules_beat_stem_rules_and_drop_leaves_tracks_out(root, tmp_path):
    dm = datamodule(root, tmp_path, "moisesdb", "data.sources=[vocals,guitar,other]", "data.taxonomy=null",
                    "data.taxonomy={vocals:['vocals/lead (fe)?male singer'],guitar:[guitar],"
                    "other:['guitar/ACOUSTIC GUITAR',piano]}", "data.unmapped=drop")
    for split, index, sid in songs():
        track = next(t for s in dm.tracks.values() for t in s if t.name == sid)
        plan = song_plan(SEED, split, index)
        lead = [i for i in plan if i.track_type.startswith("lead")]
        assert len(track.sources["vocals"]) == len(lead)
        assert len(track.sources["guitar"]) == sum(i.track_type == "clean electric guitar" for i in plan)
        assert len(track.sources["other"]) == sum(i.track_type == "acoustic guitar" or i.stem == "piano"
                                                  for i in plan)
    report = dm.mapping
    assert report["dropped"]["drums/full acoustic drumkit"] == 5 and "bass/bass guitar" in report["dropped"]
    assert report["sources"]["other"]["instruments"].keys() <= {"guitar/acoustic guitar", "piano/grand piano"}
    item = dm.track_dataset("valid")[0]  # the mixture holds only what was mapped
    assert torch.allclose(item["mixture"], item["stems"].sum(0), atol=1e-6)
    every = torch.stack([read(f) for f in expected(root, "valid", 0, {})["other"]]).sum(0)
    assert not torch.allclose(item["mixture"], every, atol=1e-3)


def test_split_by_fraction_is_seeded_and_disjoint():
    names = [f"song-{i:02d}" for i in range(20)]
    test = split_names(names, 0.2, Path("."), 3, set(), "data.test_tracks")
    valid = split_names(names, 0.1, Path("."), 3, set(test), "data.valid_tracks")
    assert len(test) == 4 and len(valid) == 2 and not set(test) & set(valid)
    assert split_names(names, 0.2, Path("."), 3, set(), "k") == test
    assert split_names(list(reversed(names)), 0.2, Path("."), 3, set(), "k") == test  # listing order is irrelevant
    assert split_names(names, 0.2, Path("."), 4, set(), "k") != test
    # the test set does not depend on the validation fraction; validation comes after it in one permutation
    assert set(split_names(names, 0.3, Path("."), 3, set(test), "k")) > set(valid)
    with pytest.raises(DatasetError, match="data.test_tracks=1.5"):
        split_names(names, 1.5, Path("."), 3, set(), "data.test_tracks")
    with pytest.raises(DatasetError, match=r"data.valid_tracks: 1 song id\(s\) not found"):
        split_names(names, ["nope"], Path("."), 3, set(), "data.valid_tracks")


def test_default_split_of_the_config(root, tmp_path):
    cfg = compose("train", ["data=moisesdb", f"data.root={root}", f"paths.output_dir={tmp_path}",
                            f"paths.cache_dir={tmp_path / 'cache'}", "data.test_tracks=0.2", "data.valid_tracks=0.2"])
    dm = instantiate(cfg.data, _convert_="all")
    dm.setup("test")  # what mss.evaluate does: the mapping stays with the training run (none written here)
    assert not (tmp_path / "moisesdb_mapping.json").exists()
    dm.setup("fit")
    assert json.loads((tmp_path / "moisesdb_mapping.json").read_text())["songs"] == 5
    assert [len(dm.tracks[s]) for s in ("train", "valid", "test")] == [3, 1, 1]
    assert not {t.name for t in dm.tracks["test"]} & {t.name for t in dm.tracks["valid"]}


def test_generated_on_first_use_into_the_cache(tmp_path):
    dm = datamodule(None, tmp_path, "moisesdb", "data.synth={n_train:2,n_valid:1,n_test:1,duration:4.0,seed:1}")
    assert dm.root.parent == tmp_path / "cache" / "synth" and read_manifest(dm.root)["params"]["layout"] == "moisesdb"
    assert [t.name for t in dm.tracks["valid"]] == [song_id(SEED, "valid", 0)]
    assert [len(dm.tracks[s]) for s in ("train", "valid", "test")] == [2, 1, 1]


def test_scan_is_cached_by_listing(root, tmp_path, monkeypatch):
    import mss.data.moisesdb as moisesdb

    copy = tmp_path / "db"
    shutil.copytree(root, copy)
    tax = Taxonomy({"drums": ["drums"], "bass": ["bass"], "vocals": ["vocals"]}, ["drums", "bass", "other", "vocals"])
    first, mapping = find_songs(copy, tax, sample_rate=44100, channels=2, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(moisesdb, "build_track", lambda *a, **k: pytest.fail("scanned again"))
    again, cached = find_songs(copy, tax, sample_rate=44100, channels=2, cache_dir=tmp_path / "cache")
    assert again == first and cached == mapping
    # another rule set, or a changed data.json, is another listing: scanned again
    other = Taxonomy({"drums": ["drums", "percussion"], "bass": ["bass"], "vocals": ["vocals"]},
                     ["drums", "bass", "other", "vocals"])
    with pytest.raises(pytest.fail.Exception, match="scanned again"):
        find_songs(copy, other, sample_rate=44100, channels=2, cache_dir=tmp_path / "cache")
    meta = copy / PROVIDER / song_id(SEED, "train", 0) / "data.json"
    meta.write_text(meta.read_text() + " ")
    with pytest.raises(pytest.fail.Exception, match="scanned again"):
        find_songs(copy, tax, sample_rate=44100, channels=2, cache_dir=tmp_path / "cache")


def test_errors_name_the_file_and_key(root, tmp_path):
    sources = ["drums", "bass", "other", "vocals"]
    with pytest.raises(DatasetError, match=r"data.taxonomy.drums\[1\]='drumz': unknown MoisesDB stem 'drumz'"):
        Taxonomy({"drums": ["drums", "drumz"], "bass": ["bass"], "vocals": ["vocals"]}, sources)
    with pytest.raises(DatasetError, match=r"source\(s\) \['guitar'\] that are not in data.sources"):
        Taxonomy({"guitar": ["guitar"]}, sources)
    with pytest.raises(DatasetError, match=r"source\(s\) \['bass'\] have no rules"):
        Taxonomy({"drums": ["drums"], "vocals": ["vocals"]}, sources)
    with pytest.raises(DatasetError, match="stem 'piano' is already mapped to source 'drums'"):
        Taxonomy({"drums": ["piano"], "bass": ["bass", "piano"], "vocals": ["vocals"]}, sources)
    tax = Taxonomy({"drums": ["drums"], "bass": ["bass"], "vocals": ["vocals"]}, sources)
    sid = song_id(SEED, "train", 0)
    cases = [
        (lambda m: "{not json", r"data.json: not a readable JSON file"),
        (lambda m: json.dumps({"song": "x"}), r"data.json: key 'stems' is missing"),
        (lambda m: json.dumps({**m, "stems": {"vocals": []}}),
         r"data.json: key 'stems' is \{'vocals': \[\]\}, expected a list"),
        (lambda m: json.dumps({**m, "stems": [{**m["stems"][0], "tracks": [
            {k: v for k, v in m["stems"][0]["tracks"][0].items() if k != "trackType"}]}]}),
         r"data.json: key 'stems\[0\].tracks\[0\].trackType' is missing"),
        (lambda m: json.dumps({**m, "stems": [{**m["stems"][0], "tracks": [
            {**m["stems"][0]["tracks"][0], "id": "gone"}]}]}), r"stems\[0\].tracks\[0\] \(vocals/.*gone\.wav"),
    ]
    for make, pattern in cases:
        copy = tmp_path / "bad"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(root / PROVIDER / sid, copy / PROVIDER / sid)
        path = copy / PROVIDER / sid / "data.json"
        path.write_text(make(json.loads(path.read_text())))
        with pytest.raises(DatasetError, match=pattern) as err:
            find_songs(copy, tax, sample_rate=44100, channels=2)
        assert str(path) in str(err.value)
    with pytest.raises(DatasetError, match=r"song .* has no tracks for source '(bass|vocals)' \(4 song/source pairs"):
        datamodule(root, tmp_path, "moisesdb", "data.missing_stems=error")
    with pytest.raises(DatasetError, match="no song folders with a data.json"):
        find_songs(tmp_path / "bad" / PROVIDER / sid, tax, sample_rate=44100, channels=2)


@pytest.mark.slow
def test_train_on_moisesdb(root, tmp_path):
    """``python -m mss.train data=moisesdb_6stem`` on the generated folder: one training step, validation on the
    song without bass, the test-set evaluation of a song without vocals and piano (left out of its scores), and the
    mapping in the run directory."""
    run_dir = tmp_path / "run"
    run("mss.train", "data=moisesdb_6stem", f"data.root={root}", f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={tmp_path / 'cache'}", "data.valid_tracks=valid_tracks.txt",
        "data.test_tracks=test_tracks.txt", *TINY_TRAIN, "data.samples_per_epoch=2", cwd=tmp_path)
    mapping = json.loads((run_dir / "moisesdb_mapping.json").read_text())
    assert list(mapping["sources"]) == ["drums", "bass", "other", "vocals", "guitar", "piano"]
    assert mapping["split"]["valid"] == [song_id(SEED, "valid", 0)]
    import pandas as pd

    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    assert metrics["train/loss_epoch"].notna().sum() == 1
    val = metrics.dropna(subset=["val/nsdr"])
    assert len(val) == 1 and np.isfinite(val["val/nsdr"].iloc[0])
    # the valid song has no bass: its score is skipped, the others are there
    assert np.isfinite(val["val/nsdr/drums"].iloc[0]) and np.isfinite(val["val/nsdr/piano"].iloc[0])
    assert "val/nsdr/bass" not in val.columns or not np.isfinite(val["val/nsdr/bass"].iloc[0])
    assert np.isfinite(val["val/sdr/drums"].iloc[0])
    (info,) = (run_dir / "eval" / "track_info" / "test").glob("*.json")
    nsdrs = json.loads(info.read_text())["nSDR"]
    assert nsdrs["vocals"] is None and nsdrs["piano"] is None and np.isfinite(nsdrs["drums"])
