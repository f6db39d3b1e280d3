"""A cache of separated tracks: separate once, score many times.

An entry is one track's estimates ``(S, C, T)`` float32, stored as ``<key>.npy`` under the cache folder, where the
key hashes everything that determines them: the model (checkpoint sha256, or the model config of an oracle), the
inference settings (segment, overlap, shifts) and the track (name, length, sample rate, sources, and the dataset
root). A changed setting changes the keys of exactly the tracks it touches. Writes are atomic (a temporary file
renamed into place), so an interrupted run never leaves a partial entry, and the folder is kept under
``max_bytes`` by removing the least recently used entries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from mss.utils import atomic_write

__all__ = ["EstimateCache", "estimate_key"]

log = logging.getLogger("mss.inference")


def estimate_key(model: dict, inference: dict, track: dict) -> str:
    """The entry name (sha1, 24 hex digits) of one track's estimates; arguments are JSON-serialisable dicts."""
    text = json.dumps({"model": model, "inference": inference, "track": track}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:24]


class EstimateCache:
    """``get(key)`` -> tensor or ``None``; ``put(key, tensor)``. ``folder=None`` disables it (both no-ops)."""

    def __init__(self, folder: str | os.PathLike | None, max_bytes: int = 20 * 2**30):
        self.folder = None if folder is None else Path(folder)
        self.max_bytes, self.hits, self.misses = int(max_bytes), 0, 0

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"  # type: ignore[operator]

    def get(self, key: str) -> torch.Tensor | None:
        if self.folder is None or not self._path(key).is_file():
            self.misses += self.folder is not None
            return None
        try:
            array = np.load(self._path(key))
        except (OSError, ValueError) as err:  # unreadable entry: drop it, separate again
            log.warning("estimate cache: dropping unreadable %s (%s)", self._path(key), err)
            self._path(key).unlink(missing_ok=True)
            self.misses += 1
            return None
        os.utime(self._path(key))  # recently used: kept longest
        self.hits += 1
        return torch.from_numpy(array)

    def put(self, key: str, estimates: torch.Tensor) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        array = estimates.detach().cpu().float().numpy()

        def save(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
                np.save(f, array)

        atomic_write(self._path(key), save)
        self._trim()

    def _trim(self) -> None:
        entries = sorted(self.folder.glob("*.npy"), key=lambda p: p.stat().st_mtime)  # type: ignore[union-attr]
        total = sum(p.stat().st_size for p in entries)
        while entries and total > self.max_bytes:
            oldest = entries.pop(0)
            total -= oldest.stat().st_size
            oldest.unlink(missing_ok=True)
