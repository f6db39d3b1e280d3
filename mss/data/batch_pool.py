"""The loader workers' pool of reused shared-memory batch storages (``data.batch_pool``, on by default where the
platform shares memory: :func:`mss.platform.shm.has_shared_memory`; off, batches are plain tensors that the
DataLoader moves to shared memory itself), the ``collate_fn`` that ships pooled batches, and the workers' allocator
set-up.
"""

from __future__ import annotations

import math
import weakref

import torch
from torch.utils.data import default_collate

from mss.platform.allocator import tune_allocator
from mss.platform.shm import shared_storage

POOL_SLOTS = 4  # pooled storages per worker: its prefetch_factor=2 batches in flight + those the consumer holds
_FLAG_BYTES = 64  # trailing bytes of a pooled storage; the first is its flag (0: in use, 1: free)
_pool: list[tuple[torch.UntypedStorage, torch.Tensor]] = []  # this worker's pooled storages and their flag bytes


def empty_batch(shape: tuple[int, ...], dtype: torch.dtype, pool: bool = True) -> torch.Tensor:
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
    if slot is None and len(_pool) < POOL_SLOTS:
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
    saved tensors keep it alive (numpy arrays and bare storages do not: see :func:`empty_batch`). When the worker
    refills the storage, torch's receive-side cache (keyed by the shared-memory file) may hand back the storage
    object still mapped here: it is the same memory, so the new batch reads correctly."""
    finalizer = weakref.finalize(tensor, _flag(tensor.untyped_storage(), tensor.nbytes).fill_, 1)
    finalizer.atexit = False
    return tensor


def collate(batch):
    """The DataLoader's ``collate_fn``: a batch already built by :meth:`SeededDataset.__getitems__` passes
    through (inside a worker, wrapped in :class:`PooledBatch` when it lies in a pooled storage, so that the main
    process releases the storage when done with it; the main process receives the plain tensor), anything else
    goes to torch's default collate. A ``{"stems", "present"}`` batch passes through likewise (its stems pooled)."""
    if isinstance(batch, dict) and isinstance(batch.get("stems"), torch.Tensor) and batch["stems"].dim() == 4:
        return {**batch, "stems": collate(batch["stems"])}
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
