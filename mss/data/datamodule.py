"""The LightningDataModule for every folder-based dataset: MUSDB18-HQ (wav), MUSDB18 (stems, decoded once into a
cache), custom folders in the same layout, and the embedded synthetic dataset (generated on first use).

Batches: training ``(B, S, C, T)`` stems (the mixture is formed after augmentation, in the LightningModule),
float32 on the training device; they leave the loader workers as int16 when that is lossless
(:meth:`MSSDataModule.int16_batches`) and :meth:`MSSDataModule.on_after_batch_transfer` converts them; validation/test
one whole track at a time (``{"name", "mixture": (1, C, T), "stems": (1, S, C, T)}``).

Distributed and resumable: the training order is a function of ``(seed, epoch)`` only, and each example's random
excerpt a function of ``(seed, epoch, position)`` (:class:`EpochSampler`), so it does not depend on the number of
workers or ranks; ranks take interleaved positions of one global order (a global batch is the same examples whatever
the world size), validation/test tracks are split across ranks, and the position within an epoch is saved in
checkpoints (:meth:`MSSDataModule.state_dict`) so a run resumed mid-epoch continues with the very next batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import weakref
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from mss.data.datasets import SegmentDataset, TrackDataset
from mss.data.tracks import DatasetError, Track, decode_stems, find_tracks, is_pcm16, read_track_list
from mss.platform.allocator import tune_allocator
from mss.platform.shm import has_shared_memory, shared_storage

FORMATS = ("wav", "flac", "stems")
SYNTH_FLAGS = ("generate", "overwrite")  # keys of data.synth that are not generation parameters

log = logging.getLogger("mss.data")


class EpochSampler(Sampler):
    """Deterministic, resumable, rank-sharded order of the training examples.

    Epoch ``e`` visits a permutation of ``range(n)`` drawn from ``(seed, e)``; rank ``r`` of ``world_size`` takes
    positions ``r, r + W, r + 2W, ...`` (``n // W`` each). It yields ``(index, item_seed)`` pairs, ``item_seed`` a
    function of ``(seed, epoch, position)`` that :class:`SeededDataset` uses for the example's own randomness.
    :meth:`resume` makes the next iteration of that epoch start ``skip`` examples (this rank's) later.
    """

    def __init__(self, n: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: rank {rank} is not in [0, {world_size})")
        if n < world_size:
            raise ValueError(f"EpochSampler: {n} examples cannot be split over {world_size} ranks")
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, int(seed), rank, world_size, shuffle
        self.epoch, self._skip = 0, 0

    def __len__(self) -> int:
        return self.n // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before every epoch."""
        self.epoch = int(epoch)

    def resume(self, epoch: int, skip: int) -> None:
        self.epoch, self._skip = int(epoch), int(skip)

    def __iter__(self):
        epoch, skip, self._skip = self.epoch, self._skip, 0
        order = self._order(epoch)
        for position in range(self.rank + skip * self.world_size, len(self) * self.world_size, self.world_size):
            yield self._item(order, epoch, position)

    def _order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=generator).tolist() if self.shuffle else list(range(self.n))

    def _item(self, order: list[int], epoch: int, position: int) -> tuple[int, int]:
        """``(index, item_seed)`` at global ``position`` of the epoch."""
        return order[position], int(np.random.SeedSequence((self.seed, epoch, position)).generate_state(1)[0])

    def batch(self, epoch: int, batch: int, batch_size: int) -> list[tuple[int, int]]:
        """The ``(index, item_seed)`` pairs of this rank's batch ``batch`` (counted from the start of ``epoch``,
        resumed or not) of ``batch_size`` examples: what :meth:`__iter__` yielded for it."""
        order, first = self._order(epoch), batch * batch_size
        return [self._item(order, epoch, self.rank + (first + j) * self.world_size) for j in range(batch_size)]


class SeededDataset(Dataset):
    """Wraps a dataset whose items draw from torch's global generator: item ``(index, seed)`` is drawn with the
    generator seeded by ``seed`` (in a forked RNG state, so the caller's random stream is left untouched); a plain
    ``index`` reads the wrapped dataset as it is.

    Batches (:meth:`__getitems__`, which the DataLoader calls with a whole batch of indices) are written in place:
    when the wrapped dataset has ``item_shape`` and ``read(index, out)``, one ``(B, *item_shape)`` tensor is
    allocated (in shared memory inside a loader worker, where the default collate would have copied the items to;
    from the workers' pool of reused storages when ``pool``, see :func:`_empty_batch`) and every example is read
    straight into its row; :func:`collate` passes it through."""

    def __init__(self, dataset: Dataset, pool: bool = True):
        self.dataset, self.pool = dataset, pool

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]):
        if not isinstance(item, tuple):
            return self.dataset[item]
        index, seed = item
        with _seeded(seed):
            return self.dataset[index]

    def __getitems__(self, items: list) -> torch.Tensor | list:
        shape = getattr(self.dataset, "item_shape", None)
        if shape is None or not all(isinstance(item, tuple) for item in items):
            return [self[item] for item in items]
        batch = _empty_batch((len(items), *shape), getattr(self.dataset, "item_dtype", torch.float32), self.pool)
        for row, (index, seed) in zip(batch, items):
            with _seeded(seed):
                self.dataset.read(index, out=row)  # type: ignore[attr-defined]
        return batch

    def describe(self, item: tuple[int, int]) -> str:
        """Where example ``(index, seed)`` comes from (the wrapped dataset's ``describe``, in the same seeded
        state as the read)."""
        index, seed = item
        with _seeded(seed):
            return self.dataset.describe(index)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _seeded(seed: int):
    """torch's CPU generator seeded by ``seed`` inside, restored after (``torch.manual_seed`` would also queue a
    lazy CUDA seed with a stack trace: ~1 ms per item)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


class BatchStream:
    """Endless batches of ``dataset``: :class:`EpochSampler` epochs one after the other, each example drawn with
    its own seed (:class:`SeededDataset`), so the stream is a function of ``(seed, epoch, batch)`` alone (not of
    torch's global generator or the loader workers) and :meth:`get_state` / :meth:`set_state` resume it exactly
    (a :class:`mss.lightning.resume.RandomStream`). Under DDP each rank takes its share of every epoch.
    ``next(stream)``: the next collated batch."""

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0):
        self.sampler = EpochSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)  # type: ignore
        self.loader = DataLoader(SeededDataset(dataset), batch_size=batch_size, sampler=self.sampler,
                                 num_workers=num_workers, persistent_workers=num_workers > 0,
                                 generator=torch.Generator().manual_seed(seed))
        self.epoch, self.batches, self._iter = 0, 0, None

    def __iter__(self):
        return self

    def __next__(self):
        for _ in range(2):
            if self._iter is None:
                self.sampler.resume(self.epoch, self.batches * self.loader.batch_size)
                self._iter = iter(self.loader)
            try:
                batch = next(self._iter)
            except StopIteration:
                self.epoch, self.batches, self._iter = self.epoch + 1, 0, None
                continue
            self.batches += 1
            return batch
        raise RuntimeError(f"BatchStream: {type(self.loader.dataset.dataset).__name__} yields no batch")

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.batches}

    def set_state(self, state: dict[str, int]) -> None:
        self.epoch, self.batches, self._iter = int(state["epoch"]), int(state["batches"]), None


_POOL_SLOTS = 4  # pooled storages per worker: its prefetch_factor=2 batches in flight + those the consumer holds
_FLAG_BYTES = 64  # trailing bytes of a pooled storage; the first is its flag (0: in use, 1: free)
_pool: list[tuple[torch.UntypedStorage, torch.Tensor]] = []  # this worker's pooled storages and their flag bytes


def _empty_batch(shape: tuple[int, ...], dtype: torch.dtype, pool: bool = True) -> torch.Tensor:
    """Uninitialised tensor, in shared memory when called in a DataLoader worker with ``pool`` (sent to the main
    process without a copy, as the default collate does); a plain tensor otherwise (which the DataLoader moves to
    shared memory itself when it sends it from a worker: ``pool=False`` is the fallback where the platform cannot
    share memory, :func:`mss.platform.shm.has_shared_memory`).

    With ``pool``, in a worker, batches reuse a small per-worker pool of shared-memory storages: writing into pages
    already mapped costs ~2 ms per 44 MB batch, a fresh storage ~25-30 ms of first-touch page faults here (more than
    reading the examples). A storage is reused once the main process has dropped the batch it held (:func:`collate`
    ships it as :class:`PooledBatch`, whose unpickling there attaches the release to the received tensor's garbage
    collection; a view of the batch, or autograd saving it or a view of it for backward, keeps that tensor alive);
    when no pooled storage is free and the pool is full, a fresh one is made as before, so nothing ever waits for the
    consumer, and the pool never holds more storages than were in use at once. Whoever keeps the memory of a
    training batch without a tensor view of it (``batch.numpy()``, ``batch.untyped_storage()``) after dropping the
    batch must ``clone()`` it: the worker refills that memory."""
    if not pool or torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    nbytes = dtype.itemsize * math.prod(shape)
    slot = next((slot for slot in _pool if slot[0].nbytes() == nbytes + _FLAG_BYTES and slot[1].item()), None)
    if slot is None and len(_pool) < _POOL_SLOTS:
        storage = shared_storage(nbytes + _FLAG_BYTES)
        slot = (storage, _flag(storage, nbytes))
        _pool.append(slot)
    if slot is None:
        return torch.empty(0, dtype=dtype).set_(shared_storage(nbytes), 0, shape)
    slot[1].fill_(0)
    return torch.empty(0, dtype=dtype).set_(slot[0], 0, shape)


def _flag(storage: torch.UntypedStorage, offset: int) -> torch.Tensor:
    """The pool flag of ``storage`` (one uint8 at byte ``offset``, after the batch) as a one-element tensor."""
    return torch.empty(0, dtype=torch.uint8).set_(storage, offset, (1,))


class PooledBatch:
    """A batch in a pooled shared-memory storage, as a loader worker hands it to the result queue. Pickling it
    (the DataLoader's ForkingPickler) sends the tensor as usual, and unpickling in the main process yields the
    plain tensor through :func:`_attach_release`."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def __reduce__(self):
        return _attach_release, (self.tensor,)


def _attach_release(tensor: torch.Tensor) -> torch.Tensor:
    """Main-process side of :class:`PooledBatch`: returns ``tensor`` (a plain Tensor for pin_memory, Lightning and
    user code) and sets its storage's pool flag to free once that tensor is garbage-collected. Views and autograd's
    saved tensors keep it alive (numpy arrays and bare storages do not: see :func:`_empty_batch`). When the worker
    refills the storage, torch's receive-side cache (keyed by the shared-memory file) may hand back the storage
    object still mapped here: it is the same memory, so the new batch reads correctly."""
    finalizer = weakref.finalize(tensor, _flag(tensor.untyped_storage(), tensor.nbytes).fill_, 1)
    finalizer.atexit = False
    return tensor


def collate(batch):
    """The DataLoader's ``collate_fn``: a batch already built by :meth:`SeededDataset.__getitems__` passes
    through (inside a worker, wrapped in :class:`PooledBatch` when it lies in a pooled storage, so that the main
    process releases the storage when done with it; the main process receives the plain tensor), anything else
    goes to torch's default collate."""
    if not isinstance(batch, torch.Tensor):
        return default_collate(batch)
    pooled = any(s.data_ptr() == batch.untyped_storage().data_ptr() for s, _ in _pool)
    return PooledBatch(batch) if pooled else batch


def tune_worker_allocator(worker_id: int = 0) -> None:
    """``worker_init_fn`` of the training loader: keep freed heap memory in the worker for reuse
    (:func:`mss.platform.allocator.tune_allocator`, glibc ``mallopt``) instead of returning it to the OS. The loader
    allocates and frees tens of MB per example (repitch: ~20 arrays of ~30 MB); fresh pages cost a page fault each,
    which measured 1.4x the repitch time. No effect where glibc is not the allocator."""
    tune_allocator()


class MSSDataModule(L.LightningDataModule):
    """Folder datasets in MUSDB18-HQ layout (``root/{train,test}/<track>/<source>.wav``).

    Args:
        root: dataset folder, used as it is; a missing or empty folder is an error (unless ``synth`` says to
            generate there). ``None`` is only allowed with ``synth``: the synthetic dataset is then generated on
            first use into a folder under ``cache_dir`` keyed by the generation parameters.
        sources: the stems the model separates, in order (``data.sources``; models read it by interpolation).
        format: ``wav``/``flac`` (MUSDB18-HQ layout) or ``stems`` (MUSDB18 ``.stem.mp4``, decoded once).
        segment: training excerpt length in seconds.
        remix: draw each source of a training example from a random track (new mixtures every epoch).
        valid_tracks: ``musdb`` (the official 14), a file of names relative to ``root``, or a list of names.
            Validation tracks are taken out of the training subset.
        aggregates: sources built by summing others when they have no file (``accompaniment``).
        convert: resample / convert channels of mismatching files on load (with a warning) instead of raising.
        synth: parameters for :func:`mss.data.synth.generate` (``data=synth``), plus two flags: ``generate`` (write
            the dataset into ``root``, which may then be missing or empty) and ``overwrite`` (also replace a
            synthetic dataset there written with other parameters; implies ``generate``). Without ``root`` the
            dataset is generated into the cache whatever the flags.
        seed: seed of the training order and excerpts (default: the seed of ``lightning.seed_everything``, i.e.
            the run's ``seed``, else 0).
        repitch: optional :class:`mss.augment.repitch.Repitch` (pitch/tempo change in the loader workers).
        segment_margin: seconds read beyond ``segment`` for batch augmentations that shorten the excerpt (the
            ``Shift`` of ``augment=demucs``), so the network still trains on ``segment`` seconds.
        batch_pool: loader workers write training batches into a pool of reused shared-memory buffers (see
            :func:`_empty_batch`); only with ``num_workers > 0``, and only where torch can share memory (else plain
            tensors, logged once: :mod:`mss.platform.shm`).
    """

    def __init__(self, *, root: str | None, sources: list[str], sample_rate: int = 44100, channels: int = 2,
                 format: str = "wav", segment: float = 6.0, batch_size: int = 4, num_workers: int = 0,
                 samples_per_epoch: int = 1000, remix: bool = False, valid_tracks="musdb",
                 train_subset: str = "train", test_subset: str = "test",
                 aggregates: dict[str, list[str]] | None = None, convert: bool = False,
                 cache_dir: str = "~/.cache/mss", synth: dict | None = None, pin_memory: bool = False,
                 seed: int | None = None, repitch=None, segment_margin: float = 0.0, batch_pool: bool = True):
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"data.format={format!r}: expected one of {FORMATS}")
        if not sources:
            raise ValueError("data.sources is empty: list the stems to separate, e.g. [drums, bass, other, vocals]")
        if root is None and synth is None:
            raise ValueError("data.root is not set: point it at a dataset folder in MUSDB18-HQ layout")
        self.sources, self.sample_rate, self.channels = list(sources), int(sample_rate), int(channels)
        self.format, self.segment, self.batch_size = format, float(segment), int(batch_size)
        self.num_workers, self.samples_per_epoch, self.remix = int(num_workers), int(samples_per_epoch), remix
        self.valid_spec, self.train_subset, self.test_subset = valid_tracks, train_subset, test_subset
        self.aggregates, self.convert, self.pin_memory = dict(aggregates or {}), convert, pin_memory
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self.repitch, self.segment_margin = repitch, float(segment_margin)
        self.batch_pool = bool(batch_pool)
        self.synth = dict(synth) if synth is not None else None
        self.root = Path(root).expanduser() if root is not None else self._synth_root()
        self._generate = self.synth is not None and (root is None or any(self.synth.get(k) for k in SYNTH_FLAGS))
        self.tracks: dict[str, list[Track]] = {}
        self._decoded: Path | None = None
        self.seed = seed
        self._sampler: EpochSampler | None = None
        self._train_set: SeededDataset | None = None
        self._resume: dict | None = None

    @property
    def _synth_params(self) -> dict:
        return {k: v for k, v in (self.synth or {}).items() if k not in SYNTH_FLAGS}

    def _synth_root(self) -> Path:
        spec = json.dumps({"sources": self.sources, "sample_rate": self.sample_rate, **self._synth_params},
                          sort_keys=True)
        return self.cache_dir / "synth" / hashlib.sha1(spec.encode()).hexdigest()[:12]

    # -- I/O happens here, never in __init__ ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self._generate:  # into the cache (no data.root), or into data.root as data.synth.generate/overwrite ask
            from mss.data.synth import generate

            generate(self.root, sources=self.sources, sample_rate=self.sample_rate,
                     overwrite=bool(self.synth.get("overwrite")), **self._synth_params)
        self._require_root()
        if self.format == "stems":
            self._decoded = decode_stems(self.root, [self.train_subset, self.test_subset], self.cache_dir)

    @property
    def wav_root(self) -> Path:
        """Root of the folder tree actually read (the decoded cache for ``format=stems``)."""
        if self.format != "stems":
            return self.root
        if self._decoded is None:
            self._decoded = decode_stems(self.root, [self.train_subset, self.test_subset], self.cache_dir)
        return self._decoded

    def _require_root(self) -> None:
        """``data.root`` must hold something: a missing or empty folder is an error naming it and the ways out (no
        run ever writes into a user's folder unless asked to)."""
        root = self.root
        if root.is_dir() and any(root.iterdir()):
            return
        state = "does not exist" if not root.exists() else "is empty" if root.is_dir() else "is not a folder"
        raise DatasetError(
            f"data.root={root} {state}: nothing to train or evaluate on. Point data.root at a dataset (MUSDB18-HQ: "
            f"data=musdbhq data.root=DIR; MUSDB18 .stem.mp4: data=musdb data.root=DIR; your own stems: data=folder "
            f"data.root=DIR data.sources=[...]), write the synthetic dataset there first (python -m mss.data.synth "
            f"root={root}), or let this run generate it there (data=synth data.root={root} data.synth.generate=true)")

    def _log_found(self, splits: dict[str, list[Track]]) -> None:
        """One log line: what ``data.root`` holds for ``splits`` (tracks per split, sources, sample rate), and
        whether a synthetic dataset there differs from ``data.synth`` (it is used as it is)."""
        if self._rank_world[0] != 0:
            return
        tracks = [t for ts in splits.values() for t in ts]
        rates = "/".join(str(r) for r in sorted({t.sample_rate for t in tracks}))
        counts = " + ".join(f"{len(ts)} {split}" for split, ts in splits.items())
        note = ""
        if self.synth is not None and not self._generate:
            from mss.data.synth import read_manifest

            have = (read_manifest(self.root) or {}).get("params", {})
            diff = {k: have[k] for k, v in self._synth_params.items() if k in have and have[k] != v}
            if diff:
                note = (f"; a synthetic dataset written with {', '.join(f'{k}={v}' for k, v in diff.items())}, used "
                        "as it is (data.synth applies only with data.synth.generate=true)")
        log.info("data.root=%s: %s track%s; sources %s; %s Hz, %d channel(s)%s", self.root, counts,
                 "" if len(tracks) == 1 else "s", ",".join(self.sources), rates, self.channels, note)

    def _find(self, subset: str) -> list[Track]:
        return find_tracks(self.wav_root / subset, self.sources, sample_rate=self.sample_rate,
                           channels=self.channels, aggregates=self.aggregates,
                           extension="wav" if self.format == "stems" else self.format, convert=self.convert,
                           cache_dir=self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        self._require_root()
        if stage in ("fit", "validate", None) and "train" not in self.tracks:
            train = self._find(self.train_subset)
            valid_names = set(read_track_list(self.valid_spec, self.wav_root, [t.name for t in train]))
            self.tracks["train"] = [t for t in train if t.name not in valid_names]
            self.tracks["valid"] = [t for t in train if t.name in valid_names]
            if not self.tracks["train"]:
                raise DatasetError(f"{self.wav_root / self.train_subset}: no training tracks left after removing "
                                   f"the {len(valid_names)} validation tracks")
            if self.segment * self.sample_rate < 1:
                raise ValueError(f"data.segment={self.segment}: must be positive")
            self._log_found({"train": self.tracks["train"], "valid": self.tracks["valid"]})
        if stage in ("test", "predict", None) and "test" not in self.tracks:
            self.tracks["test"] = self._find(self.test_subset)
            self._log_found({"test": self.tracks["test"]})

    # -- distributed -----------------------------------------------------------------------------------------------
    @property
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _shard(self, tracks: list[Track], split: str) -> list[Track]:
        """This rank's share of whole tracks (every track on exactly one rank; metrics are reduced across ranks)."""
        rank, world = self._rank_world
        if world > 1 and len(tracks) < world:
            raise DatasetError(f"{split}: {len(tracks)} tracks cannot be split over {world} ranks (each rank needs "
                               f"at least one); use more {split} tracks or fewer devices")
        return tracks[rank::world]

    # -- resume: position within the epoch, saved in checkpoints ---------------------------------------------------
    def state_dict(self) -> dict:
        trainer = getattr(self, "trainer", None)
        if trainer is None or self._sampler is None or trainer.state.fn != "fit":
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
        epoch = trainer.current_epoch
        if done >= trainer.num_training_batches:  # saved at the end of the epoch: the next one starts afresh
            epoch, done = epoch + 1, 0
        return {"epoch": epoch, "batches": done, "batch_size": self.batch_size, "world_size": trainer.world_size}

    def load_state_dict(self, state: dict) -> None:
        if state and state.get("batch_size", self.batch_size) != self.batch_size:
            raise ValueError(f"resuming mid-epoch with data.batch_size={self.batch_size}, but the checkpoint was "
                             f"written with {state['batch_size']}: use the same batch size")
        self._resume = state or None

    # -- loaders ---------------------------------------------------------------------------------------------
    def track_dataset(self, split: str, shard: bool = False) -> TrackDataset:
        """Whole tracks of ``split`` (``train``, ``valid`` or ``test``; call :meth:`setup` first); ``shard``: only
        this rank's share under DDP."""
        if split not in self.tracks:
            raise KeyError(f"split {split!r} is not set up; available: {sorted(self.tracks)}")
        tracks = self._shard(self.tracks[split], split) if shard else self.tracks[split]
        return TrackDataset(tracks, self.sources, channels=self.channels, sample_rate=self.sample_rate,
                            convert=self.convert)

    def _loader(self, dataset, **kw) -> DataLoader:
        return DataLoader(dataset, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0, **kw)

    def int16_batches(self) -> bool:
        """Whether training batches travel as int16 (``float = int16 / 32768``, converted on the device by
        :meth:`on_after_batch_transfer`): exactly when that is lossless, i.e. no repitch and every training source
        is one 16-bit PCM WAV file at ``sample_rate`` / ``channels`` (MUSDB18-HQ, the decoded MUSDB18 cache).
        Half the bytes through the loader's shared memory, whose allocation and page faults dominate its cost."""
        return self.repitch is None and all(
            len(files) == 1 and is_pcm16(files[0], self.channels, self.sample_rate)
            for track in self.tracks["train"] for files in track.sources.values())

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """int16 training batches (see :meth:`int16_batches`) become float32 on the device; the rest passes."""
        if isinstance(batch, torch.Tensor) and batch.dtype == torch.int16:
            return batch.float().mul_(1 / 32768)
        return batch

    def train_dataloader(self) -> DataLoader:
        """Training batches ``(B, S, C, T)``: float32, or int16 when :meth:`int16_batches` (Lightning converts them
        in :meth:`on_after_batch_transfer`; a plain loop calls it itself)."""
        segment = round((self.segment + self.segment_margin) * self.sample_rate)
        dataset = SegmentDataset(self.tracks["train"], self.sources, segment=segment,
                                 samples_per_epoch=self.samples_per_epoch, channels=self.channels,
                                 sample_rate=self.sample_rate, remix=self.remix, convert=self.convert,
                                 repitch=self.repitch, int16=self.int16_batches())
        rank, world = self._rank_world
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        self._sampler = EpochSampler(len(dataset), seed=seed, rank=rank, world_size=world)
        if self._resume:
            if self._resume["batches"] and self._resume.get("world_size", world) != world:
                raise ValueError(f"resuming mid-epoch on {world} process(es), but the checkpoint was written by "
                                 f"{self._resume['world_size']}: use the same number of devices (or resume from an "
                                 "end-of-epoch checkpoint)")
            self._sampler.resume(self._resume["epoch"], self._resume["batches"] * self.batch_size)
            self._resume = None
        elif getattr(self, "trainer", None) is not None:
            self._sampler.set_epoch(self.trainer.current_epoch)
        # the loader's own generator: iterating never draws from (and so never shifts) the training process's RNG
        pool = self.batch_pool and self.num_workers > 0 and has_shared_memory()
        self._train_set = SeededDataset(dataset, pool)
        return self._loader(self._train_set, batch_size=self.batch_size, sampler=self._sampler,
                            drop_last=True, generator=torch.Generator().manual_seed(seed), collate_fn=collate,
                            worker_init_fn=tune_worker_allocator)

    def describe_train_batch(self, epoch: int, batch: int) -> list[str]:
        """Where each example of this rank's training batch ``batch`` of ``epoch`` came from (track, offset; see
        :meth:`SegmentDataset.describe`), replayed from the sampler's seeds without reading audio (nothing travels
        with the batches); empty before :meth:`train_dataloader`."""
        if self._sampler is None or self._train_set is None:
            return []
        return [self._train_set.describe(item) for item in self._sampler.batch(epoch, batch, self.batch_size)]

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.track_dataset("valid", shard=True), batch_size=1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.track_dataset("test", shard=True), batch_size=1)
