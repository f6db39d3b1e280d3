"""Loaders on generated data (MUSDB18-HQ wav folders and MUSDB18 stems), splits, remix, metadata cache, and clear
errors on bad input."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.signal import correlate

from mss.audio.io import AudioError, load_audio
from mss.data.datamodule import MSSDataModule
from mss.data.tracks import DatasetError, find_tracks

SOURCES = ["drums", "bass", "other", "vocals"]


def make_dm(root, tmp_path, **kw) -> MSSDataModule:
    args = dict(root=str(root), sources=SOURCES, valid_tracks="valid_tracks.txt", segment=0.5, batch_size=2,
                samples_per_epoch=6, cache_dir=str(tmp_path / "cache"))
    return MSSDataModule(**{**args, **kw})


def copy_dataset(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_hq_loader_splits_and_batches(synth_root, tmp_path):
    dm = make_dm(synth_root, tmp_path)
    dm.prepare_data()
    dm.setup("fit")
    valid_names = (synth_root / "valid_tracks.txt").read_text().split()
    assert [t.name for t in dm.tracks["valid"]] == valid_names
    assert not {t.name for t in dm.tracks["train"]} & set(valid_names)
    assert len(dm.tracks["train"]) == 3
    stems = next(iter(dm.train_dataloader()))
    assert stems.shape == (2, 4, 2, round(0.5 * 44100))
    # 16-bit WAVs without repitch travel as int16; Lightning's on_after_batch_transfer makes them float32
    assert dm.int16_batches() and stems.dtype == torch.int16
    assert dm.on_after_batch_transfer(stems, 0).dtype == torch.float32
    item = next(iter(dm.val_dataloader()))
    track = dm.tracks["valid"][0]
    assert item["mixture"].shape == (1, 2, track.length) and item["stems"].shape == (1, 4, 2, track.length)
    # the synthetic mixture is exactly the sum of its stems
    torch.testing.assert_close(item["stems"].sum(1), item["mixture"], atol=1e-6, rtol=0)
    dm.setup("test")
    assert len(dm.test_dataloader().dataset) == 2


def test_remix_draws_sources_from_different_tracks(synth_root, tmp_path):
    torch.manual_seed(0)
    dm = make_dm(synth_root, tmp_path, random_tracks=True, samples_per_epoch=32)
    dm.setup("fit")
    ds = dm.train_dataloader().dataset
    calls = []
    original = type(dm.tracks["train"][0]).read_source

    def spy(self, source, **kw):
        calls.append((self.name, source))
        return original(self, source, **kw)

    type(dm.tracks["train"][0]).read_source = spy
    try:
        for i in range(8):
            assert ds[i].shape == (4, 2, round(0.5 * 44100))
    finally:
        type(dm.tracks["train"][0]).read_source = original
    examples = [calls[i:i + 4] for i in range(0, len(calls), 4)]
    assert any(len({name for name, _ in ex}) > 1 for ex in examples)


def test_metadata_cached_and_keyed_by_listing(synth_root, tmp_path):
    root = copy_dataset(synth_root, tmp_path / "data")
    cache = tmp_path / "cache"
    tracks = find_tracks(root / "train", SOURCES, sample_rate=44100, channels=2, cache_dir=cache)
    files = list((cache / "metadata").glob("*.json"))
    assert len(files) == 1
    assert all(t.std > 0 and t.length == 5 * 44100 for t in tracks)
    mix = load_audio(root / "train" / tracks[0].name / "mixture.wav").mean(0)
    assert tracks[0].mean == pytest.approx(float(mix.mean()), abs=1e-6)
    assert tracks[0].std == pytest.approx(float(mix.std()), rel=1e-4)
    # same listing: cache hit, same result; a changed file: a new key
    assert find_tracks(root / "train", SOURCES, sample_rate=44100, channels=2, cache_dir=cache) == tracks
    target = root / "train" / tracks[0].name / "vocals.wav"
    data, sr = sf.read(target, dtype="int16")
    sf.write(target, data // 2, sr, subtype="PCM_16")
    find_tracks(root / "train", SOURCES, sample_rate=44100, channels=2, cache_dir=cache)
    assert len(list((cache / "metadata").glob("*.json"))) == 2


def test_aggregate_source_accompaniment(synth_root, tmp_path):
    dm = make_dm(synth_root, tmp_path, sources=["vocals", "accompaniment"],
                 aggregates={"accompaniment": ["drums", "bass", "other"]})
    dm.setup("test")
    item = dm.test_dataloader().dataset[0]
    track = dm.tracks["test"][0]
    assert track.sources["accompaniment"] == tuple(str(synth_root / "test" / track.name / f"{s}.wav")
                                                   for s in ("drums", "bass", "other"))
    parts = sum(load_audio(f) for f in track.sources["accompaniment"])
    torch.testing.assert_close(item["stems"][1], parts)


def test_stems_loader_matches_wav_layout(synth_stems_root, tmp_path):
    dm = MSSDataModule(root=str(synth_stems_root), sources=SOURCES, format="stems", valid_tracks="valid_tracks.txt",
                       segment=0.5, batch_size=1, cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup(None)
    assert len(dm.tracks["train"]) == 2 and len(dm.tracks["valid"]) == 1 and len(dm.tracks["test"]) == 1
    decoded = dm.wav_root
    assert (decoded / "test" / dm.tracks["test"][0].name / "vocals.wav").is_file()
    # the HQ twin of the stems file: decoded AAC is close to the original stem
    hq = synth_stems_root.parent / "test" / dm.tracks["test"][0].name
    for source in SOURCES:
        a = load_audio(hq / f"{source}.wav").mean(0).numpy()
        b = dm.test_dataloader().dataset[0]["stems"][SOURCES.index(source)].mean(0).numpy()
        assert abs(len(a) - len(b)) < 4096
        n = min(len(a), len(b))
        xcorr = correlate(b[:n], a[:n], mode="full", method="fft")[n - 1 - 4096: n - 1 + 4096]  # AAC delay
        corr = xcorr.max() / np.sqrt((a[:n] ** 2).sum() * (b[:n] ** 2).sum())
        assert corr > 0.9, (source, corr)
    # decoded once: a second prepare_data reuses the cache
    stamp = (decoded / "test").stat().st_mtime_ns
    dm.prepare_data()
    assert (decoded / "test").stat().st_mtime_ns == stamp


# ---------------------------------------------------------------------------------------------------------------
# bad inputs give clear errors naming the file / key


def first_track(root):
    return sorted((root / "train").iterdir())[0]


def test_missing_stem_file(synth_root, tmp_path):
    root = copy_dataset(synth_root, tmp_path / "data")
    (first_track(root) / "bass.wav").unlink()
    with pytest.raises(DatasetError, match=r"bass\.wav: missing stem file for source 'bass'"):
        make_dm(root, tmp_path).setup("fit")


def test_corrupt_wav(synth_root, tmp_path):
    root = copy_dataset(synth_root, tmp_path / "data")
    bad = first_track(root) / "drums.wav"
    bad.write_bytes(b"RIFF\x00\x00not really a wave file")
    with pytest.raises(AudioError, match=r"drums\.wav: cannot read audio header"):
        make_dm(root, tmp_path).setup("fit")


def test_wrong_sample_rate(synth_root, tmp_path):
    root = copy_dataset(synth_root, tmp_path / "data")
    path = first_track(root) / "other.wav"
    data, _ = sf.read(path, dtype="int16")
    sf.write(path, data, 22050, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"other\.wav: sample rate is 22050 Hz, expected data.sample_rate=44100"):
        make_dm(root, tmp_path).setup("fit")


def test_mono_file(synth_root, tmp_path):
    root = copy_dataset(synth_root, tmp_path / "data")
    path = first_track(root) / "vocals.wav"
    data, sr = sf.read(path, dtype="int16")
    sf.write(path, data[:, 0], sr, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"vocals\.wav: has 1 channel\(s\), expected data.channels=2"):
        make_dm(root, tmp_path).setup("fit")
    # with data.convert=true the mono stem is converted with a warning instead
    with pytest.warns(UserWarning, match="converting 1 channel"):
        dm = make_dm(root, tmp_path, convert=True)
        dm.setup("fit")
        assert dm.tracks["train"][0].name == path.parent.name
        assert dm.train_dataloader().dataset[0].shape == (4, 2, round(0.5 * 44100))


def test_empty_dataset_dir(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no track folders; expected .*<track>/\{mixture,drums"):
        make_dm(tmp_path / "empty", tmp_path).setup("fit")
    with pytest.raises(DatasetError, match=r"nowhere does not exist.*python -m mss.data.synth root=.*nowhere"):
        make_dm(tmp_path / "nowhere", tmp_path).setup("fit")


def test_unknown_validation_track(synth_root, tmp_path):
    with pytest.raises(DatasetError, match=r"data.valid_tracks: 1 validation track\(s\) not found"):
        make_dm(synth_root, tmp_path, valid_tracks=["no-such-song"]).setup("fit")


def test_official_musdb_validation_list_is_used(synth_root, tmp_path):
    # the synthetic tracks are not MUSDB's: without a list of its own the official names are reported missing
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "train").symlink_to(synth_root / "train")
    with pytest.raises(DatasetError, match="Actions - One Minute Smile"):
        make_dm(bare, tmp_path, valid_tracks="musdb").setup("fit")
    # a dataset carrying its own valid_tracks.txt (and none of the official tracks) is split by that list
    dm = make_dm(synth_root, tmp_path, valid_tracks="musdb")
    dm.setup("fit")
    assert [t.name for t in dm.tracks["valid"]] == (synth_root / "valid_tracks.txt").read_text().split()


# ---------------------------------------------------------------------------------------------------------------
# the training loader's fast path: 16-bit WAV bytes read straight into shared-memory batches


def test_pcm16_reader_matches_soundfile_and_falls_back(synth_root, tmp_path):
    from mss.audio.pcm16 import read_pcm16

    path = str(first_track(synth_root) / "vocals.wav")
    total = sf.info(path).frames
    for start in (0, 12_345, total - 300):  # the last one runs past the end: zeros
        out = np.full((2, 1000), np.nan, np.float32)
        assert read_pcm16(path, start, out)
        ref = load_audio(path, start=start, frames=1000).numpy()
        np.testing.assert_array_equal(out[:, : ref.shape[-1]], ref)
        assert not out[:, ref.shape[-1]:].any()
    assert not read_pcm16(path, 0, np.empty((1, 10), np.float32))  # channel mismatch: the caller converts
    assert not read_pcm16(path, 0, np.empty((2, 10), np.float32), sample_rate=22050)
    # a 24-bit file is read by soundfile, through the same Track.read_source(out=...) call
    root = copy_dataset(synth_root, tmp_path / "data")
    track_dir = first_track(root)
    data, sr = sf.read(track_dir / "bass.wav", dtype="int16")
    sf.write(track_dir / "bass.wav", data, sr, subtype="PCM_24")
    assert not read_pcm16(str(track_dir / "bass.wav"), 0, np.empty((2, 10), np.float32))
    track = next(t for t in find_tracks(root / "train", SOURCES, sample_rate=44100, channels=2)
                 if t.name == track_dir.name)
    for source in ("bass", "vocals"):
        out = torch.empty(2, 4096)
        track.read_source(source, start=777, frames=4096, out=out)
        torch.testing.assert_close(out, track.read_source(source, start=777, frames=4096), atol=0, rtol=0)
    # an aggregate source (summed files) through the same path
    agg = find_tracks(synth_root / "train", ["vocals", "accompaniment"], sample_rate=44100, channels=2,
                      aggregates={"accompaniment": ["drums", "bass", "other"]})[0]
    out = torch.empty(2, 4096)
    agg.read_source("accompaniment", start=99, frames=4096, out=out)
    torch.testing.assert_close(out, agg.read_source("accompaniment", start=99, frames=4096), atol=1e-6, rtol=0)


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_built_in_place_equal_the_seeded_items(synth_root, tmp_path, workers):
    import itertools

    dm = make_dm(synth_root, tmp_path, batch_size=3, num_workers=workers, random_tracks=True, seed=5)
    dm.setup("fit")
    loader = dm.train_dataloader()
    items = list(itertools.islice(iter(loader.sampler), 3))
    batch = next(iter(loader))  # built by SeededDataset.__getitems__ (in shared memory inside the worker)
    assert batch.shape == (3, 4, 2, round(0.5 * 44100)) and batch.dtype == torch.int16
    assert batch.is_shared() == (workers > 0)
    expected = torch.stack([loader.dataset[item] for item in items])  # one item at a time, per-item seeds
    torch.testing.assert_close(batch, expected, atol=0, rtol=0)
    # int16 transport is lossless: the float32 loader (forced here) gives exactly batch / 32768
    dm.int16_batches = lambda: False
    floats = next(iter(dm.train_dataloader()))
    assert floats.dtype == torch.float32
    torch.testing.assert_close(dm.on_after_batch_transfer(batch, 0), floats, atol=0, rtol=0)


def test_int16_batches_only_when_lossless(synth_root, tmp_path):
    from mss.augment.repitch import Repitch

    dm = make_dm(synth_root, tmp_path)
    dm.setup("fit")
    assert dm.int16_batches()
    for kw in (dict(repitch=Repitch(proba=0.2)), dict(sources=["vocals", "accompaniment"],
                                                     aggregates={"accompaniment": ["drums", "bass", "other"]})):
        dm = make_dm(synth_root, tmp_path, **kw)
        dm.setup("fit")
        assert not dm.int16_batches()
        assert next(iter(dm.train_dataloader())).dtype == torch.float32
    root = copy_dataset(synth_root, tmp_path / "data")
    for track_dir in (root / "train").iterdir():
        if track_dir.is_dir():
            data, sr = sf.read(track_dir / "bass.wav", dtype="int16")
            sf.write(track_dir / "bass.wav", data, sr, subtype="PCM_24")
    dm = make_dm(root, tmp_path)
    dm.setup("fit")
    assert not dm.int16_batches()


def test_pooled_batch_storage_is_reused_once_the_main_process_drops_it(monkeypatch):
    """Worker side and main side of the shared-memory pool in one process (the worker made visible by faking
    ``get_worker_info``; the queue trip is the DataLoader's ForkingPickler)."""
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory reductions)

    from mss.data import batch_pool

    monkeypatch.setattr(batch_pool, "_pool", [])
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    shape = (2, 4, 2, 100)
    batch = batch_pool.empty_batch(shape, torch.int16)
    shipped = batch_pool.collate(batch)
    assert isinstance(shipped, batch_pool.PooledBatch) and batch.is_shared()
    received = ForkingPickler.loads(ForkingPickler.dumps(shipped))
    assert type(received) is torch.Tensor and received.shape == shape
    pointer = batch.data_ptr()
    del batch, shipped
    in_use = [batch_pool.empty_batch(shape, torch.int16) for _ in range(batch_pool.POOL_SLOTS - 1)]
    assert pointer not in {b.data_ptr() for b in in_use}  # not free while the main process holds it
    full = batch_pool.empty_batch(shape, torch.int16)  # pool full, nothing free: a fresh, unpooled storage
    assert type(batch_pool.collate(full)) is torch.Tensor and full.is_shared()
    del received  # main process done with the batch: its storage is free again
    assert batch_pool.empty_batch(shape, torch.int16).data_ptr() == pointer
    monkeypatch.setattr(batch_pool, "_pool", [])
    floats = batch_pool.empty_batch(shape, torch.float32)  # float32 batches (repitch) are pooled alike
    assert isinstance(batch_pool.collate(floats), batch_pool.PooledBatch) and len(batch_pool._pool) == 1


@pytest.mark.parametrize("workers,int16", [(1, True), (2, True), (2, False)])
def test_pooled_worker_batches_equal_the_in_process_ones(synth_root, tmp_path, monkeypatch, workers, int16):
    """12 batches (3x the pool; int16, or float32 as with repitch) from workers equal those built in the main
    process, whether the consumer drops each batch (storages reused), keeps only their storages (a reused storage
    comes back through torch's receive-side cache: the same mapping, equal data pointers) or keeps every batch
    (pool exhausted, fresh storages: no batch overwritten)."""
    if not int16:
        monkeypatch.setattr(MSSDataModule, "int16_batches", lambda self: False)
    dm = make_dm(synth_root, tmp_path, seed=3, samples_per_epoch=24)
    dm.setup("fit")
    expected = list(dm.train_dataloader())
    assert len(expected) == 12 and expected[0].dtype == (torch.int16 if int16 else torch.float32)
    dm.num_workers = workers
    for batch, reference in zip(dm.train_dataloader(), expected, strict=True):
        assert torch.equal(batch, reference)
    storages = []
    for batch, reference in zip(dm.train_dataloader(), expected, strict=True):
        assert torch.equal(batch, reference)
        storages.append(batch.untyped_storage())
    assert len({s.data_ptr() for s in storages}) < len(storages)
    kept = list(dm.train_dataloader())
    assert len(kept) == 12 and all(torch.equal(b, r) for b, r in zip(kept, expected))
