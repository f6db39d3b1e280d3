"""Seeded, resumable sampling of training examples: :class:`EpochSampler` (the order of an epoch, sharded over
ranks), :class:`SeededDataset` (each example drawn with its own seed, batches written in place) and
:class:`BatchStream` (an endless, exactly resumable stream of batches, e.g. of unlabeled excerpts).

The training order is a function of ``(seed, epoch)`` only and each example's randomness of
``(seed, epoch, position)``, so neither depends on the number of loader workers or ranks.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mss.data.batch_pool import empty_batch


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
    from the workers' pool of reused storages when ``pool``, see :func:`empty_batch`) and every example is read
    straight into its row; :func:`collate` passes it through. A dataset whose items carry source presence
    (``with_presence``) gives ``{"stems": (B, *item_shape), "present": (B, S)}``."""

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
        batch = empty_batch((len(items), *shape), getattr(self.dataset, "item_dtype", torch.float32), self.pool)
        present = torch.empty(len(items), shape[0], dtype=torch.bool) if getattr(
            self.dataset, "with_presence", False) else None
        for i, (row, (index, seed)) in enumerate(zip(batch, items)):
            with _seeded(seed):
                self.dataset.read(index, out=row, present=None if present is None else present[i])  # type: ignore
        return batch if present is None else {"stems": batch, "present": present}

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
