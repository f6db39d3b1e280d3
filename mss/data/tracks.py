"""Track discovery for multitrack folders (MUSDB18-HQ layout), MUSDB18 ``.stem.mp4`` decoding and the per-track
metadata cache.

Layout read here (MUSDB18-HQ, also what :mod:`mss.data.synth` writes)::

    root/<subset>/<track>/mixture.wav          (optional; otherwise the sum of the stems)
    root/<subset>/<track>/<source>.wav         one file per source in ``data.sources``

A source without its own file may be an *aggregate* of others (``accompaniment = drums + bass + other``). With
``missing="allow"`` a track may also lack a source altogether (common in MoisesDB and in-house multitracks): its
``Track.sources[source]`` is ``()``, it reads as silence, and :meth:`Track.present` says it is absent, so that the
loss and the metrics can skip it instead of treating it as a silent target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mss.audio.io import FLOAT_SUBTYPES, AudioError, audio_info, load_audio, save_audio
from mss.utils import atomic_write_text

METADATA_VERSION = 1

log = logging.getLogger("mss.data")


class DatasetError(ValueError):
    """A dataset folder does not have the expected layout or content."""


@dataclass(frozen=True)
class Track:
    """One multitrack song: the files summed to form each source, its length and mixture statistics."""

    name: str
    sources: dict[str, tuple[str, ...]]
    mixture: str | None
    length: int
    sample_rate: int
    mean: float
    std: float

    def present(self, source: str) -> bool:
        """Whether the track has audio for ``source`` (an absent source reads as zeros)."""
        return bool(self.sources[source])

    def read_source(self, source: str, *, start: int = 0, frames: int = -1, channels: int | None = None,
                    sample_rate: int | None = None, convert: bool = False, out: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """``(C, frames)`` audio of one source (aggregates summed). With ``out`` (a float32 ``(C, frames)`` CPU
        tensor, or int16 holding the samples times 32768 for a single-file source) the samples are written into
        it, zeros past the end of the track, and ``out`` is returned: for 16-bit PCM WAV files (MUSDB18-HQ, and
        the decoded MUSDB18 cache) straight from the file bytes without soundfile
        (:func:`mss.audio.io.load_audio` with ``out``), which is what the training loader uses."""
        if out is not None:
            return self._read_into(source, start, out, channels, sample_rate, convert)
        if not self.sources[source]:
            return self._silence(start, frames, channels, sample_rate)
        parts = [load_audio(f, start=start, frames=frames, channels=channels, sample_rate=sample_rate,
                            convert=convert) for f in self.sources[source]]
        return parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)

    def _silence(self, start: int, frames: int, channels: int | None, sample_rate: int | None) -> torch.Tensor:
        """Zeros ``(C, frames)`` for an absent source (``frames=-1``: to the end of the track, as a file read)."""
        if frames < 0:
            length = self.length if sample_rate in (None, self.sample_rate) else round(
                self.length * sample_rate / self.sample_rate)
            frames = max(0, length - start)
        if channels is None:
            channels = audio_info(next(f for fs in self.sources.values() for f in fs)).channels
        return torch.zeros(channels, frames)

    def _read_into(self, source, start, out, channels, sample_rate, convert) -> torch.Tensor:
        files = self.sources[source]
        if not files:
            return out.zero_()
        if out.dtype == torch.int16 and len(files) > 1:
            raise ValueError(f"source '{source}' of track '{self.name}' sums {len(files)} files: int16 output "
                             "would overflow, read it as float32")
        for i, path in enumerate(files):
            dest = out if i == 0 else torch.empty_like(out)
            load_audio(path, start=start, channels=channels, sample_rate=sample_rate, convert=convert, out=dest)
            if i:
                out += dest
        return out

    def read_mixture(self, **kw) -> torch.Tensor:
        """``(C, T)`` mixture: the mixture file when the track has one, else the sum of the sources."""
        if self.mixture is not None:
            return load_audio(self.mixture, **kw)
        present = [s for s in self.sources if self.sources[s]]
        if not present:
            raise DatasetError(f"track '{self.name}' has no mixture file and none of its sources")
        return torch.stack([self.read_source(s, **kw) for s in present]).sum(0)


def listing_key(folder: Path, files: list[Path], extra: dict) -> str:
    h = hashlib.sha1(json.dumps(extra, sort_keys=True).encode())
    h.update(str(folder.resolve()).encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(folder)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def find_tracks(
    folder: str | os.PathLike,
    sources: list[str],
    *,
    sample_rate: int,
    channels: int,
    aggregates: dict[str, list[str]] | None = None,
    extension: str = "wav",
    convert: bool = False,
    cache_dir: str | os.PathLike | None = None,
    missing: str = "error",
) -> list[Track]:
    """List and validate the tracks of ``folder`` (one sub-folder per track).

    Every track must provide each source (its own file, or all parts of its aggregate), and all files of a track
    must share sample rate, channel count and length. With ``convert=False`` a file whose sample rate or channel
    count differs from ``sample_rate``/``channels`` is an error naming the file; with ``convert=True`` it is
    resampled/converted on load with a warning. Mixture mean/std are computed once and cached in
    ``cache_dir/metadata/<hash of the listing>.json``; that pass also reads every float file in full, so a NaN/Inf
    sample anywhere is an error naming the file and sample before any training (integer PCM cannot hold one).
    ``missing="allow"`` (``data.missing_stems``) accepts tracks that lack some sources (read as silence and marked
    absent, see :meth:`Track.present`); ``"error"`` (default) names the first missing file.
    """
    if missing not in MISSING:
        raise ValueError(f"data.missing_stems={missing!r}: expected one of {MISSING}")
    folder = Path(folder).expanduser()
    aggregates = dict(aggregates or {})
    if not folder.is_dir():
        raise DatasetError(f"{folder}: dataset folder not found (set data.root to a folder in MUSDB18-HQ layout)")
    track_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not track_dirs:
        raise DatasetError(f"{folder}: no track folders; expected {folder}/<track>/{{mixture,"
                           f"{','.join(sources)}}}.{extension}")
    files = sorted(p for d in track_dirs for p in d.glob(f"*.{extension}"))
    key = listing_key(folder, files, {"v": METADATA_VERSION, "sources": sources, "aggregates": aggregates,
                                       "sr": sample_rate, "channels": channels, "convert": convert,
                                       "missing": missing})
    cache = Path(cache_dir).expanduser() / "metadata" / f"{key}.json" if cache_dir else None
    if cache is not None and cache.is_file():
        return [Track(**{**t, "sources": {k: tuple(v) for k, v in t["sources"].items()}})
                for t in json.loads(cache.read_text())["tracks"]]
    tracks = [_scan_track(d, sources, aggregates, extension, sample_rate, channels, convert, missing)
              for d in track_dirs]
    if cache is not None:
        atomic_write_text(cache, json.dumps({"folder": str(folder), "tracks": [asdict(t) for t in tracks]}))
    return tracks


MISSING = ("error", "allow")


def _scan_track(folder: Path, sources, aggregates, extension, sample_rate, channels, convert,
                missing: str = "error") -> Track:
    resolved: dict[str, tuple[str, ...]] = {}
    for source in sources:
        own = folder / f"{source}.{extension}"
        parts = [folder / f"{p}.{extension}" for p in aggregates.get(source, [])]
        if own.is_file():
            resolved[source] = (str(own),)
        elif parts and all(p.is_file() for p in parts):
            resolved[source] = tuple(map(str, parts))
        elif missing == "allow":
            resolved[source] = ()
        else:
            how = f" or all of {[p.name for p in parts]}" if parts else ""
            raise DatasetError(f"{own}: missing stem file for source '{source}'{how} in track '{folder.name}' (set "
                               "data.missing_stems=allow to train on tracks that lack some sources)")
    mixture = folder / f"mixture.{extension}"
    return build_track(folder.name, resolved, mixture if mixture.is_file() else None, sample_rate=sample_rate,
                       channels=channels, convert=convert, where=str(folder))


def build_track(name: str, resolved: dict[str, tuple[str, ...]], mixture: str | os.PathLike | None, *,
                sample_rate: int, channels: int, convert: bool, where: str) -> Track:
    """A checked :class:`Track` from its files (``resolved``: the files summed for each source, ``()`` when absent):
    sample rate / channels as ``find_tracks`` requires them, one length and rate for all files, float files finite,
    and the mixture statistics; ``where`` (a folder, a listing) prefixes the errors."""
    mixture = Path(mixture) if mixture is not None else None
    every = [Path(f) for fs in resolved.values() for f in fs] + ([mixture] if mixture is not None else [])
    if not any(resolved.values()):
        raise DatasetError(f"{where}: track '{name}' has none of the sources {list(resolved)}")
    infos = [audio_info(f) for f in every]
    for info in infos:
        if not convert and info.sample_rate != sample_rate:
            raise AudioError(f"{info.path}: sample rate is {info.sample_rate} Hz, expected data.sample_rate="
                             f"{sample_rate} (set data.convert=true to resample on load)")
        if not convert and info.channels != channels:
            raise AudioError(f"{info.path}: has {info.channels} channel(s), expected data.channels={channels} "
                             f"(set data.convert=true to convert on load)")
    short = len({info.path.name for info in infos}) == len(infos)  # file names say it unless two share one
    lengths = {info.path.name if short else str(info.path): info.frames for info in infos}
    if len({info.frames for info in infos}) > 1:
        raise AudioError(f"{where}: files of track '{name}' differ in length: {lengths}")
    if len({info.sample_rate for info in infos}) > 1:
        raise AudioError(f"{where}: files of track '{name}' differ in sample rate")
    track = Track(name, resolved, str(mixture) if mixture is not None else None, infos[0].frames,
                  infos[0].sample_rate, 0.0, 1.0)
    for info in infos:  # float files are read whole once here (and cached as checked): NaN/Inf fail before training
        if info.subtype in FLOAT_SUBTYPES and info.path != mixture:  # the mixture is read just below
            load_audio(info.path)
    mono = track.read_mixture(channels=channels, sample_rate=sample_rate, convert=convert).mean(0)
    return Track(**{**asdict(track), "mean": float(mono.mean()), "std": float(mono.std())})


VALID_LIST = "valid_tracks.txt"  # a dataset's own validation list (what mss.data.synth writes)


def read_track_list(spec, root: Path, train_names: list[str]) -> list[str]:
    """Resolve ``data.valid_tracks``: ``"musdb"`` (the official 14 MUSDB18 validation tracks; for a dataset that
    holds none of them but carries its own ``valid_tracks.txt``, as the synthetic generator writes, that list), a
    file name relative to the dataset root (one name per line), a list of names, or ``None``/empty for no
    validation."""
    if not spec:
        return []
    if isinstance(spec, str) and spec == "musdb":
        import musdb
        import yaml

        config = Path(musdb.__file__).parent / "configs" / "mus.yaml"
        names = yaml.safe_load(config.read_text())["validation_tracks"]
        if (root / VALID_LIST).is_file() and not set(names) & set(train_names):
            log.info("data.valid_tracks=musdb: %s holds none of the official MUSDB18 validation tracks; using its "
                     "own %s", root, VALID_LIST)
            return read_track_list(VALID_LIST, root, train_names)
    elif isinstance(spec, str):
        path = root / spec
        if not path.is_file():
            raise DatasetError(f"data.valid_tracks={spec!r}: {path} not found (expected 'musdb', a list of "
                               "track names, or a file of names relative to data.root)")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = list(spec)
    missing = sorted(set(names) - set(train_names))
    if missing:
        raise DatasetError(f"data.valid_tracks: {len(missing)} validation track(s) not found in {root}/train: "
                           f"{missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return names


MUSDB_STEMS = ("mixture", "drums", "bass", "other", "vocals")


def decode_stems(root: str | os.PathLike, subsets: list[str], cache_dir: str | os.PathLike) -> Path:
    """Decode a MUSDB18 (``<subset>/<track>.stem.mp4``) tree once into MUSDB18-HQ layout WAVs under the cache,
    keyed by a hash of the listing; resumable (finished tracks are skipped) and atomic per track. Returns the root
    of the decoded tree, which the folder loaders then read like MUSDB18-HQ."""
    root = Path(root).expanduser()
    stems = sorted(p for s in subsets for p in (root / s).glob("*.stem.mp4"))
    if not stems:
        raise DatasetError(f"{root}: no <subset>/<track>.stem.mp4 files for subsets {subsets} (MUSDB18 layout)")
    out = Path(cache_dir).expanduser() / "musdb-decoded" / listing_key(root, stems, {"v": METADATA_VERSION})
    import musdb

    for subset in subsets:
        db = musdb.DB(root=str(root), subsets=subset, is_wav=False)
        for track in db.tracks:
            final = out / subset / track.name
            if final.is_dir():
                continue
            tmp = out / subset / f".{track.name}.partial"
            shutil.rmtree(tmp, ignore_errors=True)
            audio = track.stems  # (5, T, C) in MUSDB stream order, decoded on the 16-bit grid
            for i, name in enumerate(MUSDB_STEMS):
                save_audio(tmp / f"{name}.wav", np.asarray(audio[i]).T, track.rate)
            os.replace(tmp, final)
    if (root / VALID_LIST).is_file():  # the synthetic generator's validation list travels along
        shutil.copy(root / VALID_LIST, out / VALID_LIST)
    return out
