"""Per-track scores in museval's format, without importing museval (which pulls in musdb/stempeg and needs ffmpeg).

:class:`TrackScores` mirrors ``museval.TrackStore``: the same nested dict (``scores``), the same 5-decimal
round-half-even quantisation with ``±inf → NaN``, byte-identical JSON (``simplejson``, ``indent=2``, ``NaN``
literals) that validates against museval's schema, and the same long DataFrame (``df``: ``time, target, metric,
score, track``). Files written from it are read by ``museval.TrackStore``/``EvalStore``/``MethodStore`` tooling.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["METRICS", "MUSEVAL_VERSION", "TrackScores", "read_track_json"]

METRICS: tuple[str, ...] = ("SDR", "SIR", "ISR", "SAR")
_JSON_ORDER = ("SDR", "SIR", "SAR", "ISR")  # museval's key order inside a frame
_DF_ORDER = ("SDR", "SAR", "ISR", "SIR")  # museval's json2df melt order
_QUANTUM = Decimal(".00001")

try:
    MUSEVAL_VERSION = importlib.metadata.version("museval")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - museval is a dependency
    MUSEVAL_VERSION = "0.4.1"


def _q(value: float) -> Decimal | float:
    """museval's ``TrackStore._q``: ``±inf`` -> NaN, else ``Decimal`` rounded half-even to 5 decimals."""
    if np.isinf(value):
        return math.nan
    return Decimal(Decimal(float(value)).quantize(_QUANTUM))


class TrackScores:
    """Frame-wise SDR/SIR/ISR/SAR of one track, stored exactly like ``museval.TrackStore``.

    Args:
        track_name: the track's name (``df["track"]``).
        win, hop: frame length and hop in seconds (written as each frame's ``duration`` / ``time`` step).

    Attributes:
        scores: ``{"targets": [{"name", "frames": [{"time", "duration", "metrics": {...}}]}], "museval_version"}``.
        reliable: ``False`` when BSS Eval flagged sources of the track (their ISR/SIR/SAR may be off by more than
            0.01 dB); not part of the JSON.
        cond: condition-number estimate of the reference Gram matrix (NaN when unknown).
        error_db: ``{source: estimated rounding error of its ISR/SIR/SAR in dB}`` (empty when unknown).
        unreliable: the flagged sources.
    """

    def __init__(self, track_name: str, win: float = 1.0, hop: float = 1.0):
        self.track_name, self.win, self.hop = track_name, win, hop
        self.scores: dict = {"targets": [], "museval_version": MUSEVAL_VERSION}
        self.reliable, self.cond = True, math.nan
        self.error_db: dict[str, float] = {}
        self.unreliable: list[str] = []

    def add_target(self, target_name: str, values: dict) -> None:
        """Add one target from ``{"SDR": [...], "SIR": [...], "ISR": [...], "SAR": [...]}`` per-frame lists."""
        frames = [{"time": i * self.hop, "duration": self.win,
                   "metrics": {m: _q(values[m][i]) for m in _JSON_ORDER}} for i in range(len(values["SDR"]))]
        self.scores["targets"].append({"name": target_name, "frames": frames})

    def with_absent(self, sources: Sequence[str]) -> TrackScores:
        """These scores with a target for every name of ``sources`` in that order: the ones not scored here (sources
        the track lacks) get NaN frames at the same times, which every aggregate skips."""
        have = {t["name"]: t for t in self.scores["targets"]}
        frames = next(iter(have.values()))["frames"] if have else []
        nan = {m: math.nan for m in _JSON_ORDER}
        self.scores["targets"] = [have.get(name) or {"name": name, "frames": [
            {"time": f["time"], "duration": f["duration"], "metrics": dict(nan)} for f in frames]}
            for name in sources]
        return self

    @property
    def targets(self) -> list[str]:
        return [t["name"] for t in self.scores["targets"]]

    @property
    def json(self) -> str:
        """museval's JSON text (byte-identical to ``TrackStore.json`` for the same values)."""
        import simplejson

        return simplejson.dumps(self.scores, indent=2, allow_nan=True, use_decimal=True)

    @property
    def df(self) -> pd.DataFrame:
        """Long DataFrame ``time, target, metric, score, track`` (the rows of museval's ``json2df``, same order)."""
        rows = [(f["time"], t["name"], m, float(f["metrics"][m]))
                for m in _DF_ORDER for t in self.scores["targets"] for f in t["frames"]]
        df = pd.DataFrame(rows, columns=["time", "target", "metric", "score"])
        df["track"] = self.track_name
        return df

    def values(self, metric: str) -> np.ndarray:
        """``(targets, frames)`` float array of one metric (quantised values, NaN included)."""
        return np.array([[float(f["metrics"][metric]) for f in t["frames"]] for t in self.scores["targets"]],
                        dtype=np.float64)

    def validate(self) -> None:
        """Validate against museval's ``musdb.schema.json`` (raises ``jsonschema.ValidationError``)."""
        import jsonschema

        spec = importlib.util.find_spec("museval")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("museval is not installed: its JSON schema is needed to validate")
        schema = json.loads((Path(spec.submodule_search_locations[0]) / "musdb.schema.json").read_text())
        jsonschema.validate(json.loads(self.json), schema)

    @classmethod
    def from_json(cls, text: str, track_name: str) -> TrackScores:
        """Rebuild from museval JSON text (values kept as written)."""
        import simplejson

        data = simplejson.loads(text, allow_nan=True, use_decimal=True)
        frames = [f for t in data["targets"] for f in t["frames"]]
        win = float(frames[0]["duration"]) if frames else 1.0
        hop = float(frames[1]["time"]) if len(frames) > 1 and data["targets"][0]["frames"][1:] else win
        out = cls(track_name, win=win, hop=hop)
        out.scores = {"targets": data["targets"], "museval_version": data.get("museval_version", MUSEVAL_VERSION)}
        return out

    def __repr__(self) -> str:
        lines = []
        for name in self.targets:
            meds = "  ".join(f"{m}:{np.nanmedian(self.values(m)[self.targets.index(name)]):>8.3f}"
                             if not np.isnan(self.values(m)[self.targets.index(name)]).all() else f"{m}:     nan"
                             for m in METRICS)
            lines.append(f"{name:<16}==> {meds}")
        return "\n".join(lines)


def read_track_json(path: str | os.PathLike) -> TrackScores:
    """Read a per-track museval JSON file (the track name is the file stem, as in museval's ``add_eval_dir``)."""
    path = Path(path)
    try:
        return TrackScores.from_json(path.read_text(), path.stem)
    except (ValueError, KeyError, IndexError) as err:
        raise ValueError(f"{path}: not a museval per-track JSON file ({err})") from err
