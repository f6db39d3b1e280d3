"""Datasets described by a CSV or JSON listing (``data=listing data.listing=FILE``).

Two forms, told apart by the columns (CSV header, or the keys of the JSON list's objects):

- one row per track: ``track``, optional ``split`` (``train``/``valid``/``test``, default ``train``), optional
  ``mixture``, and one column per source of ``data.sources`` holding a path, empty when the track lacks the source;
- one row per stem file: ``path``, ``source``, optional ``track``, optional ``split``. Rows naming a track form
  aligned tracks (several files of one source in one track are summed); rows without a track go to that source's
  stem pool (:mod:`mss.data.pools`).

Paths are relative to the listing's folder. Sources a track lacks are missing stems (read as zeros, marked absent;
``data.missing_stems=error`` refuses them). Bad rows are a :class:`DatasetError` naming the file, the line (CSV) or
entry (JSON) and the column. Training draws from the aligned ``train`` tracks and, when there are pool rows, from the
pools with probability ``pool_weight``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from mss.audio.pcm16 import is_pcm16
from mss.data.datamodule import MSSDataModule
from mss.data.multi import MixtureDataset
from mss.data.pools import PoolDataset, StemFile, check_file, parse_gains
from mss.data.tracks import MISSING, DatasetError, Track, build_track

SPLITS = ("train", "valid", "test")


def _rows(path: Path) -> list[tuple[str, dict[str, str]]]:
    """``(where, row)`` pairs: ``where`` names the line (CSV) or entry (JSON) for errors."""
    if not path.is_file():
        raise DatasetError(f"data.listing={path}: file not found (expected a .csv or .json listing)")
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(path.read_text())
        except ValueError as e:
            raise DatasetError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DatasetError(f"{path}: expected a JSON list of objects (one per track or stem file)")
        return [(f"{path}, entry {i}", {str(k): "" if v is None else str(v) for k, v in r.items()})
                for i, r in enumerate(rows)]
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise DatasetError(f"{path}: empty listing (expected a header line)")
        out = []
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            if None in row:
                raise DatasetError(f"{where}: more cells than the header's {len(reader.fieldnames)} columns")
            out.append((where, {k.strip(): (v or "").strip() for k, v in row.items()}))
        return out


def read_listing(path, sources: list[str], *, sample_rate: int, channels: int, convert: bool = False,
                 missing: str = "allow") -> tuple[dict[str, list[Track]], dict[str, list[StemFile]]]:
    """``({split: [Track]}, {source: [StemFile]})`` of a listing (see the module docstring), files checked."""
    path = Path(path).expanduser()
    base = path.parent
    rows = _rows(path)
    if not rows:
        raise DatasetError(f"{path}: the listing has no rows")
    columns = set().union(*(r.keys() for _, r in rows))
    per_file = {"path", "source"} <= columns
    allowed = {"path", "source", "track", "split"} if per_file else {"track", "split", "mixture", *sources}
    if not per_file and "track" not in columns:
        raise DatasetError(f"{path}: expected the columns track[,split,mixture],{','.join(sources)} (one row per "
                           f"track) or path,source[,track,split] (one row per stem file); got {sorted(columns)}")
    tracks: dict[str, dict] = {}
    pools: dict[str, list[StemFile]] = {s: [] for s in sources}
    for where, row in rows:
        for column in row:
            if column not in allowed:
                raise DatasetError(f"{where}, column '{column}': unknown column (expected {sorted(allowed)})")
        split = row.get("split") or "train"
        if split not in SPLITS:
            raise DatasetError(f"{where}, column 'split': {split!r} is not one of {SPLITS}")

        def file(column: str, value: str, where: str = where) -> str:
            f = Path(value).expanduser()
            f = f if f.is_absolute() else base / f
            if not f.is_file():
                raise DatasetError(f"{where}, column '{column}': file {f} not found")
            return str(f)

        name = row.get("track", "")
        if per_file:
            source = row["source"]
            if source not in sources:
                raise DatasetError(f"{where}, column 'source': {source!r} is not one of data.sources={sources}")
            if not row["path"]:
                raise DatasetError(f"{where}, column 'path': empty")
            f = file("path", row["path"])
            if not name:
                try:
                    pools[source].append(check_file(f, sample_rate=sample_rate, channels=channels, convert=convert))
                except Exception as e:
                    raise DatasetError(f"{where}, column 'path': {e}") from None
                continue
            entry = tracks.setdefault(name, {"split": split, "where": where, "files": {}, "mixture": None})
            if entry["split"] != split:
                raise DatasetError(f"{where}, column 'split': track '{name}' is in split {entry['split']!r} at "
                                   f"{entry['where']}, here {split!r}")
            entry["files"].setdefault(source, []).append(f)
        else:
            if not name:
                raise DatasetError(f"{where}, column 'track': empty (every row of a per-track listing names its "
                                   "track)")
            if name in tracks:
                raise DatasetError(f"{where}, column 'track': track '{name}' is listed twice (also at "
                                   f"{tracks[name]['where']})")
            tracks[name] = {"split": split, "where": where, "mixture": file("mixture", row["mixture"]) if row.get(
                "mixture") else None, "files": {s: [file(s, row[s])] for s in sources if row.get(s)}}
    splits: dict[str, list[Track]] = {s: [] for s in SPLITS}
    for name, entry in tracks.items():
        lacking = [s for s in sources if s not in entry["files"]]
        if lacking and missing != "allow":
            raise DatasetError(f"{entry['where']}: track '{name}' has no file for {lacking} (set "
                               "data.missing_stems=allow to train on tracks that lack some sources)")
        resolved = {s: tuple(entry["files"].get(s, ())) for s in sources}
        try:
            track = build_track(name, resolved, entry["mixture"], sample_rate=sample_rate, channels=channels,
                                convert=convert, where=entry["where"])
        except DatasetError:
            raise
        except Exception as e:
            raise DatasetError(f"{entry['where']}: track '{name}': {e}") from None
        splits[entry["split"]].append(track)
    return splits, pools


class ListingDataModule(MSSDataModule):
    """``data=listing``: tracks and stem pools from a CSV/JSON listing (:func:`read_listing`).

    Args (besides those of :class:`MSSDataModule` that apply):
        listing: the ``.csv`` or ``.json`` file.
        gains: per-source gain ranges of the pool examples (as ``data=stems_pool``).
        pool_weight: the share of training examples drawn from the pools when the listing has both aligned
            ``train`` tracks and pool rows.
    """

    requires_root = False

    def __init__(self, *, listing: str, sources: list[str], gains: dict | None = None, pool_weight: float = 0.5,
                 missing_stems: str = "allow", **kw):
        if missing_stems not in MISSING:
            raise ValueError(f"data.missing_stems={missing_stems!r}: expected one of {MISSING}")
        if listing in (None, "", "???"):
            raise ValueError("data.listing is not set: point it at a .csv or .json listing")
        self.listing = Path(listing).expanduser()
        super().__init__(root=str(self.listing.parent), sources=sources, valid_tracks=None,
                         missing_stems=missing_stems, **kw)
        if not 0.0 <= float(pool_weight) <= 1.0:
            raise ValueError(f"data.pool_weight={pool_weight}: expected a share in [0, 1]")
        self.gains, self.pool_weight = parse_gains(gains, self.sources), float(pool_weight)
        self.pools: dict[str, list[StemFile]] = {}

    def prepare_data(self) -> None:
        pass

    def setup(self, stage: str | None = None) -> None:
        if self.tracks:
            return
        if self.segment * self.sample_rate < 1:
            raise ValueError(f"data.segment={self.segment}: must be positive")
        splits, self.pools = read_listing(self.listing, self.sources, sample_rate=self.sample_rate,
                                          channels=self.channels, convert=self.convert, missing=self.missing_stems)
        self.tracks.update(splits)
        if not self.tracks["train"] and not any(self.pools.values()):
            raise DatasetError(f"{self.listing}: no training tracks and no pool files")
        self._log_found(splits)

    def int16_batches(self) -> bool:
        """As :meth:`MSSDataModule.int16_batches`, and pool rows only without gains (gains leave the 16-bit grid)."""
        pools = not any(self.pools.values()) or all(g == (0.0, 0.0) for g in self.gains.values()) and all(
            is_pcm16(f.path, self.channels, self.sample_rate) for pool in self.pools.values() for f in pool)
        return pools and super().int16_batches()

    def train_dataset(self, int16: bool | None = None):
        have_pools = any(self.pools.values())
        if not have_pools:
            return super().train_dataset(int16)
        int16 = self.int16_batches() if int16 is None else int16
        pool = PoolDataset(self.pools, self.sources, segment=self.segment_frames,
                           samples_per_epoch=self.samples_per_epoch, channels=self.channels,
                           sample_rate=self.sample_rate, convert=self.convert, gains=self.gains, int16=int16)
        if not self.tracks["train"]:
            return pool
        return MixtureDataset({"tracks": super().train_dataset(int16), "pools": pool},
                              {"tracks": 1 - self.pool_weight, "pools": self.pool_weight}, self.samples_per_epoch)
