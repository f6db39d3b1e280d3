"""The LightningDataModule for every folder-based dataset: MUSDB18-HQ (wav), MUSDB18 (stems, decoded once into a
cache), custom folders in the same layout, and the embedded synthetic dataset (generated on first use).

Batches: training ``(B, S, C, T)`` stems (the mixture is formed after augmentation, in the LightningModule),
float32 on the training device; they leave the loader workers as int16 when that is lossless
(:meth:`MSSDataModule.int16_batches`) and :meth:`MSSDataModule.on_after_batch_transfer` converts them; validation/test
one whole track at a time (``{"name", "mixture": (1, C, T), "stems": (1, S, C, T)}``).

Distributed and resumable: the training order is a function of ``(seed, epoch)`` only, and each example's random
excerpt a function of ``(seed, epoch, position)`` (:mod:`mss.data.sampling`), so it does not depend on the number of
workers or ranks; ranks take interleaved positions of one global order (a global batch is the same examples whatever
the world size), validation/test tracks are split across ranks, and the position within an epoch is saved in
checkpoints (:meth:`MSSDataModule.state_dict`) so a run resumed mid-epoch continues with the very next batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from mss.audio.pcm16 import is_pcm16
from mss.data.batch_pool import collate, tune_worker_allocator
from mss.data.datasets import SegmentDataset, TrackDataset
from mss.data.sampling import EpochSampler, SeededDataset
from mss.data.tracks import DatasetError, Track, decode_stems, find_tracks, read_track_list
from mss.platform.shm import has_shared_memory

FORMATS = ("wav", "flac", "stems")
SYNTH_FLAGS = ("generate", "overwrite")  # keys of data.synth that are not generation parameters

log = logging.getLogger("mss.data")


class MSSDataModule(L.LightningDataModule):
    """Folder datasets in MUSDB18-HQ layout (``root/{train,test}/<track>/<source>.wav``).

    Args:
        root: dataset folder, used as it is; a missing or empty folder is an error (unless ``synth`` says to
            generate there). ``None`` is only allowed with ``synth``: the synthetic dataset is then generated on
            first use into a folder under ``cache_dir`` keyed by the generation parameters.
        sources: the stems the model separates, in order (``data.sources``; models read it by interpolation).
        format: ``wav``/``flac`` (MUSDB18-HQ layout) or ``stems`` (MUSDB18 ``.stem.mp4``, decoded once).
        segment: training excerpt length in seconds.
        random_tracks: draw each source of a training example from a random track (new mixtures every epoch).
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
        effects: optional :class:`mss.augment.effects.Effects` (codec round trips and effects on each training
            example, in the loader workers; the top-level ``effects`` node of ``augment=codec_effects``).
        segment_margin: seconds read beyond ``segment`` for batch augmentations that shorten the excerpt (the
            ``Shift`` of ``augment=demucs``), so the network still trains on ``segment`` seconds.
        missing_stems: ``error`` (every track must have every source) or ``allow``: tracks may lack sources, which
            read as silence and are marked absent (training batches become ``{"stems", "present"}``; the loss skips
            absent targets unless ``module.missing_stems=silence``; metrics skip them).
        batch_pool: loader workers write training batches into a pool of reused shared-memory buffers (see
            :mod:`mss.data.batch_pool`); only with ``num_workers > 0``, and only where torch can share memory (else
            plain tensors, logged once: :mod:`mss.platform.shm`).
    """

    requires_root = True  # subclasses that read no dataset root (stem pools, listings, data=multi) say False

    def __init__(self, *, root: str | None, sources: list[str], sample_rate: int = 44100, channels: int = 2,
                 format: str = "wav", segment: float = 6.0, batch_size: int = 4, num_workers: int = 0,
                 samples_per_epoch: int = 1000, random_tracks: bool = False, valid_tracks="musdb",
                 train_subset: str = "train", test_subset: str = "test",
                 aggregates: dict[str, list[str]] | None = None, convert: bool = False,
                 cache_dir: str = "~/.cache/mss", synth: dict | None = None, pin_memory: bool = False,
                 seed: int | None = None, repitch=None, segment_margin: float = 0.0, batch_pool: bool = True,
                 effects=None, missing_stems: str = "error"):
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"data.format={format!r}: expected one of {FORMATS}")
        if not sources:
            raise ValueError("data.sources is empty: list the stems to separate, e.g. [drums, bass, other, vocals]")
        if root is None and synth is None and self.requires_root:
            raise ValueError("data.root is not set: point it at a dataset folder in MUSDB18-HQ layout")
        self.sources, self.sample_rate, self.channels = list(sources), int(sample_rate), int(channels)
        self.format, self.segment, self.batch_size = format, float(segment), int(batch_size)
        self.num_workers, self.samples_per_epoch = int(num_workers), int(samples_per_epoch)
        self.random_tracks = random_tracks
        self.valid_spec, self.train_subset, self.test_subset = valid_tracks, train_subset, test_subset
        self.aggregates, self.convert, self.pin_memory = dict(aggregates or {}), convert, pin_memory
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self.repitch, self.segment_margin, self.effects = repitch, float(segment_margin), effects
        self.batch_pool, self.missing_stems = bool(batch_pool), missing_stems
        self.synth = dict(synth) if synth is not None else None
        self.root = Path(root).expanduser() if root is not None else (
            self._synth_root() if synth is not None else None)
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
                           cache_dir=self.cache_dir, missing=self.missing_stems)

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
        :meth:`on_after_batch_transfer`): exactly when that is lossless, i.e. no repitch, no effects and every training
        source is one 16-bit PCM WAV file at ``sample_rate`` / ``channels`` (MUSDB18-HQ, the decoded MUSDB18 cache).
        Half the bytes through the loader's shared memory, whose allocation and page faults dominate its cost."""
        return self.repitch is None and self.effects is None and all(
            len(files) == 1 and is_pcm16(files[0], self.channels, self.sample_rate)
            for track in self.tracks["train"] for files in track.sources.values())

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """int16 training batches (see :meth:`int16_batches`) become float32 on the device; the rest passes."""
        if isinstance(batch, dict) and "present" in batch and isinstance(batch.get("stems"), torch.Tensor):
            return {**batch, "stems": self.on_after_batch_transfer(batch["stems"], dataloader_idx)}
        if isinstance(batch, torch.Tensor) and batch.dtype == torch.int16:
            return batch.float().mul_(1 / 32768)
        return batch

    @property
    def segment_frames(self) -> int:
        """Samples of every training item: ``segment`` plus ``segment_margin`` seconds."""
        return round((self.segment + self.segment_margin) * self.sample_rate)

    def train_dataset(self, int16: bool | None = None):
        """The training examples (call :meth:`setup` first): a dataset of ``samples_per_epoch`` items with the
        :class:`SegmentDataset` protocol (``item_shape``, ``item_dtype``, ``with_presence``, ``read(index, out,
        present)``, ``describe``), which :meth:`train_dataloader` wraps in a :class:`SeededDataset`; ``data=multi``
        draws from its children's. ``int16``: items as 16-bit samples (default :meth:`int16_batches`)."""
        return SegmentDataset(self.tracks["train"], self.sources, segment=self.segment_frames,
                              samples_per_epoch=self.samples_per_epoch, channels=self.channels,
                              sample_rate=self.sample_rate, random_tracks=self.random_tracks, convert=self.convert,
                              repitch=self.repitch, int16=self.int16_batches() if int16 is None else int16,
                              effects=self.effects)

    def train_dataloader(self) -> DataLoader:
        """Training batches ``(B, S, C, T)``: float32, or int16 when :meth:`int16_batches` (Lightning converts them
        in :meth:`on_after_batch_transfer`; a plain loop calls it itself)."""
        dataset = self.train_dataset()
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
