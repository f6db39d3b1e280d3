"""What exact resumption needs beyond Lightning's own checkpoint state (weights, optimiser, scheduler, loops,
callbacks such as EMA): the random number generators, and checkpoint files that a kill cannot corrupt.

- :class:`RNGState`: saves the torch (CPU and CUDA), numpy and Python generator states in every checkpoint and puts
  them back when training resumes, so augmentation and dropout draw the numbers the uninterrupted run would have;
  likewise every :class:`RandomStream` the trained modules or the datamodule hold (:func:`random_streams`): a
  network's own ``torch.Generator`` (the LSH projections of sparse attention), the unlabeled-remix batches.
- :class:`AtomicCheckpointIO`: Lightning writes checkpoints in place (truncate, then write); this plug-in writes to a
  temporary file beside the target and renames it, so a crash during a save leaves the previous file loadable.

The data order and position within the epoch are the datamodule's (:class:`mss.data.sampling.EpochSampler`).
"""

from __future__ import annotations

import logging
import random
from typing import Any, Protocol, runtime_checkable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mss.utils import atomic_write

log = logging.getLogger("mss.resume")


@runtime_checkable
class RandomStream(Protocol):
    """A random stream outside torch/numpy/Python's global state, checkpointed by :class:`RNGState` when a module
    (network included: it only *holds* the stream) or the datamodule keeps it as an attribute. ``get_state()``
    returns plain types and tensors. ``torch.Generator`` is one as it is."""

    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


def random_streams(module: torch.nn.Module, datamodule: object | None = None) -> dict[str, RandomStream]:
    """Every :class:`RandomStream` held as an attribute by ``module`` or its submodules (``module.<path>.<attr>``)
    or by ``datamodule`` (``datamodule.<attr>``)."""
    owners = [(f"module.{name}." if name else "module.", m) for name, m in module.named_modules()]
    owners += [("datamodule.", datamodule)] if datamodule is not None else []
    return {prefix + attr: value for prefix, owner in owners for attr, value in vars(owner).items()
            if isinstance(value, RandomStream)}


class RNGState(L.Callback):
    """Checkpoint the global random generators and the modules' :class:`RandomStream` s; restore them just before
    the first resumed training batch."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._owners: tuple = ()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._owners = (pl_module, trainer.datamodule)

    @property
    def state_key(self) -> str:
        return "RNGState"

    def state_dict(self) -> dict[str, Any]:
        # plain types and tensors only, so checkpoints still load with torch.load(weights_only=True)
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        numpy_state = (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        if self._owners:
            state["streams"] = {name: s.get_state() for name, s in random_streams(*self._owners).items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict  # restored at on_train_start: setting up the run draws numbers before that

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._pending = self._pending, None
        if not state:
            return
        torch.set_rng_state(state["torch"])
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        streams = random_streams(pl_module, trainer.datamodule)
        if "streams" not in state and streams:
            log.warning("resuming from a checkpoint without random-stream state: %s restart", sorted(streams))
            return
        saved = state.get("streams", {})
        if set(saved) != set(streams):
            raise ValueError(f"resuming: the checkpoint's random streams {sorted(saved)} are not this run's "
                             f"{sorted(streams)} (missing: {sorted(set(streams) - set(saved))}, unexpected: "
                             f"{sorted(set(saved) - set(streams))}); resume with the config it was written with")
        for name, stream in streams.items():
            stream.set_state(saved[name])


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a temporary file in the checkpoint's folder, then an atomic rename onto the target."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"AtomicCheckpointIO.save_checkpoint: storage_options are not supported, got "
                            f"{storage_options!r}")
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
