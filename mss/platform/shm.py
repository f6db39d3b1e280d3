"""Shared-memory storages for the loader workers' batch pool (:func:`mss.data.batch_pool.empty_batch`), through
torch's public ``UntypedStorage.share_memory_`` (the sharing strategy torch uses on this platform: a file descriptor
on Linux, a named file elsewhere). Where torch cannot share memory here, or ``MSS_DISABLE_FAST_PATHS`` says so, the
pool is off: workers fill plain tensors, which the DataLoader moves to shared memory itself (the same bytes,
in a fresh buffer per batch)."""

from __future__ import annotations

import torch

from mss.platform import disabled, fallback

_INSTEAD = "plain batch tensors (the DataLoader shares each one itself)"


def has_shared_memory() -> bool:
    """Whether storages can be moved to shared memory here (probed with a one-byte storage); logs the fallback
    once otherwise."""
    if disabled("shm_pool"):
        fallback("shm_pool", "MSS_DISABLE_FAST_PATHS", _INSTEAD)
        return False
    try:
        ok = torch.UntypedStorage(1).share_memory_().is_shared()
    except (RuntimeError, OSError) as e:
        ok, why = False, f"torch cannot share memory here: {e}"
    else:
        why = "torch reports the storage is not shared"
    if not ok:
        fallback("shm_pool", why, _INSTEAD)
    return ok


def shared_storage(nbytes: int) -> torch.UntypedStorage:
    """An uninitialised ``nbytes`` CPU storage in shared memory (only where :func:`has_shared_memory`)."""
    return torch.UntypedStorage(nbytes).share_memory_()
