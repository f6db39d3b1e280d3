"""Several datasets in one training run (``data=multi``): each training example picks a child dataset by weight,
then an example of that child.

``datasets: {name: {weight: w, data: {<a data config: _target_ ...>}}, ...}``. Every child shares the audio
constants of the top node (``SHARED``: sources, sample rate, channels, segment and its margin): a child that leaves
one out inherits it, a child that sets it to another value is an error naming the key. The training order and each
example's randomness are those of :class:`~mss.data.datamodule.MSSDataModule` (one :class:`EpochSampler` over the
mixture dataset, per-item seeds), so resuming mid-epoch and the worker/rank independence hold unchanged.
Validation / test: the union of the children's tracks, or one child's (``valid: name``, ``test: name``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from mss.data.datamodule import MSSDataModule
from mss.data.tracks import DatasetError

SHARED = ("sources", "sample_rate", "channels", "segment", "segment_margin")


class MixtureDataset(Dataset):
    """Items drawn from several datasets with the :class:`mss.data.datasets.SegmentDataset` protocol: item ``i``
    picks dataset ``k`` with probability ``weights[k] / sum(weights)`` and then a uniformly random index of it (torch's
    generator, so :class:`mss.data.sampling.SeededDataset` seeds both). Stems ``(S, C, T)``; with
    :attr:`with_presence` (any child has it) ``{"stems", "present": (S,) bool}``, all-present for children without
    missing stems."""

    def __init__(self, datasets: dict[str, Dataset], weights: dict[str, float], samples_per_epoch: int):
        if not datasets:
            raise ValueError("MixtureDataset: no datasets")
        self.names = list(datasets)
        self.datasets = [datasets[n] for n in self.names]
        bad = {n: weights.get(n) for n in self.names if not float(weights.get(n, 0)) >= 0}
        if bad or sum(float(weights[n]) for n in self.names) <= 0:
            raise ValueError(f"MixtureDataset: weights must be >= 0 with a positive sum, got {weights}")
        self.weights = torch.tensor([float(weights[n]) for n in self.names], dtype=torch.float64)
        shapes = {n: tuple(d.item_shape) for n, d in zip(self.names, self.datasets)}
        dtypes = {n: getattr(d, "item_dtype", torch.float32) for n, d in zip(self.names, self.datasets)}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"MixtureDataset: the datasets give items of different shapes (S, C, T): {shapes}")
        if len(set(dtypes.values())) > 1:
            raise ValueError(f"MixtureDataset: the datasets give items of different dtypes: {dtypes}")
        self.item_shape, self.item_dtype = next(iter(shapes.values())), next(iter(dtypes.values()))
        self.samples_per_epoch = int(samples_per_epoch)
        self.with_presence = any(getattr(d, "with_presence", False) for d in self.datasets)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> torch.Tensor | dict:
        if not self.with_presence:
            return self.read(index)
        present = torch.empty(self.item_shape[0], dtype=torch.bool)
        return {"stems": self.read(index, present=present), "present": present}

    def _draw(self) -> tuple[int, int]:
        """``(dataset, index in it)`` of the next item; :meth:`read` and :meth:`describe` both draw here."""
        k = int(torch.multinomial(self.weights, 1))
        return k, int(torch.randint(0, len(self.datasets[k]), ()))

    def read(self, index: int, out: torch.Tensor | None = None, present: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Item ``index`` into ``out`` (``(S, C, T)`` of :attr:`item_dtype`) and its presence into ``present``."""
        k, j = self._draw()
        child = self.datasets[k]
        if out is None:
            out = torch.empty(self.item_shape, dtype=self.item_dtype)
        if getattr(child, "with_presence", False):
            return child.read(j, out=out, present=present)
        if present is not None:
            present.fill_(True)
        return child.read(j, out=out)

    def describe(self, index: int) -> str:
        k, j = self._draw()
        return f"{self.names[k]}: {self.datasets[k].describe(j)}"


def _child_config(name: str, data, top: dict, inherit: dict | None = None) -> dict:
    """The child's config with the shared keys ``top`` filled in from the top node (an error names a disagreeing
    one) and the keys of ``inherit`` where the child leaves them out."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(data, DictConfig):
        data = OmegaConf.to_container(data, resolve=True)
    if not isinstance(data, dict) or "_target_" not in data:
        raise ValueError(f"data.datasets.{name}.data: expected a data config with a _target_, got {data!r}")
    data = {**(inherit or {}), **data}
    for key, value in top.items():
        if key not in data or data[key] is None:
            data[key] = value
        elif _norm(data[key]) != _norm(value):
            raise ValueError(f"data.datasets.{name}.data.{key}={data[key]!r} differs from data.{key}={value!r}: "
                             "the datasets of data=multi share it (leave it out of the child to inherit it)")
    return data


def _norm(value):
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else float(value)


class MultiDataModule(MSSDataModule):
    """``data=multi``: a weighted mixture of child data modules (see the module docstring).

    Args (besides the shared audio constants, batch_size, num_workers, samples_per_epoch, seed, pin_memory,
    batch_pool, cache_dir of :class:`MSSDataModule`):
        datasets: ``{name: {"weight": float, "data": data config dict (with _target_) or a data module}}``.
        valid / test: ``all`` (the union of the children's tracks, each named ``<child>-<track>``), a child's name
            (its tracks only, names unchanged) or ``None`` (none).
    """

    requires_root = False

    def __init__(self, *, datasets: dict, sources: list[str], sample_rate: int = 44100, channels: int = 2,
                 segment: float = 6.0, segment_margin: float = 0.0, valid: str | None = "all",
                 test: str | None = "all", cache_dir: str = "~/.cache/mss", **kw):
        super().__init__(root=None, sources=sources, sample_rate=sample_rate, channels=channels, segment=segment,
                         segment_margin=segment_margin, cache_dir=cache_dir, valid_tracks=None, **kw)
        if not datasets:
            raise ValueError("data.datasets is empty: give at least one {name: {weight, data}}")
        top = {"sources": self.sources, "sample_rate": self.sample_rate, "channels": self.channels,
               "segment": self.segment, "segment_margin": self.segment_margin}
        self.children: dict[str, MSSDataModule] = {}
        self.weights: dict[str, float] = {}
        for name, entry in dict(datasets).items():
            if not hasattr(entry, "keys") or "data" not in entry:
                raise ValueError(f"data.datasets.{name}: expected {{weight: float, data: {{_target_: ...}}}}")
            weight = entry.get("weight", 1.0)
            if not isinstance(weight, (int, float)) or weight < 0:
                raise ValueError(f"data.datasets.{name}.weight={weight!r}: expected a number >= 0")
            child = entry["data"]
            if not isinstance(child, MSSDataModule):
                from hydra.utils import instantiate

                child = instantiate(_child_config(name, child, top, {"cache_dir": cache_dir}), _convert_="all")
            for key, value in top.items():
                if _norm(getattr(child, key)) != _norm(value):
                    raise ValueError(f"data.datasets.{name}: its {key}={getattr(child, key)!r} differs from "
                                     f"data.{key}={value!r}")
            self.children[name], self.weights[name] = child, float(weight)
        if sum(self.weights.values()) <= 0:
            raise ValueError(f"data.datasets: the weights {self.weights} sum to 0")
        for which, spec in (("valid", valid), ("test", test)):
            if spec not in (None, "all") and spec not in self.children:
                raise ValueError(f"data.{which}={spec!r}: expected all, null or one of {list(self.children)}")
        self.valid_from, self.test_from = valid, test

    @property
    def wav_root(self) -> Path:
        """A name for the mixture (the children's roots), e.g. for the estimate cache keys of mss.evaluate."""
        return Path("multi:" + "+".join(f"{n}={c.wav_root}" for n, c in self.children.items()))

    def prepare_data(self) -> None:
        for child in self.children.values():
            child.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        for child in self.children.values():
            child.trainer = getattr(self, "trainer", None)
            child.setup(stage)
        if stage in ("fit", "validate", None) and "train" not in self.tracks:
            self.tracks["train"] = self._union("train", "all")
            self.tracks["valid"] = self._union("valid", self.valid_from)
        if stage in ("test", "predict", None) and "test" not in self.tracks:
            self.tracks["test"] = self._union("test", self.test_from)

    def _union(self, split: str, spec: str | None) -> list:
        if spec is None:
            return []
        if spec != "all":
            return list(self.children[spec].tracks.get(split, []))
        from dataclasses import replace

        return [replace(t, name=f"{n}-{t.name}") for n, c in self.children.items() for t in c.tracks.get(split, [])]

    def int16_batches(self) -> bool:
        return all(c.int16_batches() for n, c in self.children.items() if self.weights[n] > 0)

    def train_dataset(self, int16: bool | None = None) -> MixtureDataset:
        int16 = self.int16_batches() if int16 is None else int16
        children = {n: c.train_dataset(int16=int16) for n, c in self.children.items() if self.weights[n] > 0}
        if not children:
            raise DatasetError("data=multi: no child dataset with a positive weight")
        return MixtureDataset(children, self.weights, self.samples_per_epoch)
