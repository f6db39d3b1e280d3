"""Excerpts of unlabeled mixtures where one source is silent (Demucs 2019, section 4), for unlabeled remixing:

- :func:`extract` runs a detector (:mod:`mss.unlabeled.detectors`) over a folder of mixtures (or stems) and keeps
  runs of silent frames lasting at least ``min_duration`` (5 s) as excerpts ``m_i`` of ``D_i`` with a score (mean
  silence probability; mean dB below the mixture for the oracle). One JSON per input (resumable), then
  ``index.json``. CLI: ``python -m mss.unlabeled.extract_silent``.
- :class:`UnlabeledExcerpts` serves ``{"source": i, "excerpt": (C, T)}`` items from that index to the extra
  training step of :class:`mss.lightning.module.SeparationModule`.
- :func:`evaluate_index`: precision / recall of an index against the stems of the same tracks.

Shapes: S sources, C channels, T samples, N frames.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mss.audio.io import audio_info, load_audio
from mss.unlabeled.detectors import FRAME, HOP, relative_volume, runs
from mss.utils import atomic_write_text

log = logging.getLogger("mss.unlabeled")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")
INDEX = "index.json"


# ----------------------------------------------------------------------------------------------- extraction


def find_inputs(root: Path, sources: Sequence[str], needs_stems: bool) -> list[tuple[str, list[Path]]]:
    """``(relative name, files)``: track folders holding every source file (``needs_stems``), else every audio
    file under ``root`` that is not a stem of a track folder (unlabeled mixtures; ``mixture.wav`` of a track)."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if needs_stems:
        by_folder: dict[Path, dict[str, Path]] = {}
        for p in files:
            by_folder.setdefault(p.parent, {}).setdefault(p.stem, p)
        return [(str(folder.relative_to(root)), [stems[s] for s in sources])
                for folder, stems in sorted(by_folder.items()) if all(s in stems for s in sources)]
    return [(str(p.relative_to(root)), [p]) for p in files if p.stem not in sources]


def extract(input_dir: str | Path, out_dir: str | Path, sources: Sequence[str], detector, *,
            min_duration: float = 5.0) -> dict:
    """Run ``detector`` over every input of ``input_dir`` and write the excerpt index (see module doc). Inputs
    already processed with the same detector and settings are skipped (``out_dir/items/<hash>.json``)."""
    root, out = Path(input_dir).expanduser(), Path(out_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"input={root}: folder not found")
    inputs = find_inputs(root, sources, detector.needs_stems)
    if not inputs:
        what = f"track folders with {{{','.join(sources)}}} files" if detector.needs_stems else "audio files"
        raise FileNotFoundError(f"input={root}: no {what} found")
    settings = {**detector.signature, "min_duration": min_duration, "sources": list(sources)}
    excerpts: dict[str, list[dict]] = {s: [] for s in sources}
    done = 0
    for name, files in inputs:
        item_path = out / "items" / f"{hashlib.sha1(name.encode()).hexdigest()[:16]}.json"
        item = json.loads(item_path.read_text()) if item_path.is_file() else None
        if item is None or item.get("settings") != settings:
            item = _process(name, files, sources, detector, min_duration, settings)
            atomic_write_text(item_path, json.dumps(item))
        else:
            done += 1
        for s in sources:
            excerpts[s] += [{"path": item["path"], "start": a, "end": b, "score": sc,
                             "sample_rate": item["sample_rate"]} for a, b, sc in item["excerpts"][s]]
    index = {"format": "mss.unlabeled", "settings": settings, "root": str(root), "inputs": len(inputs),
             "excerpts": excerpts,
             "seconds": {s: sum((e["end"] - e["start"]) / e["sample_rate"] for e in v) for s, v in excerpts.items()}}
    atomic_write_text(out / INDEX, json.dumps(index, indent=1))
    log.info("%d inputs (%d reused): %s", len(inputs), done,
             ", ".join(f"{s} {len(v)} excerpts / {index['seconds'][s]:.1f} s" for s, v in excerpts.items()))
    return index


def _process(name: str, files: list[Path], sources, detector, min_duration: float, settings: dict) -> dict:
    sr = audio_info(files[0]).sample_rate
    if detector.needs_stems:
        audio = torch.stack([load_audio(f, sample_rate=sr) for f in files])
        mix_path = files[0].parent / f"mixture{files[0].suffix}"
        path = mix_path if mix_path.is_file() else files[0].parent  # a folder: the dataset sums its stems
    else:
        audio = load_audio(files[0])
        path = files[0]
    silent, score = detector(audio, sr)
    hop, frame = round(HOP * sr), round(FRAME * sr)
    min_frames = max(1, math.ceil((min_duration * sr - frame) / hop) + 1)
    found = {}
    for i, s in enumerate(sources):
        found[s] = [(a * hop, min(b * hop + frame, audio.shape[-1]), float(score[i, a: b + 1].mean()))
                    for a, b in runs(silent[i], min_frames)]
    return {"name": name, "path": str(path), "sample_rate": sr, "length": int(audio.shape[-1]),
            "settings": settings, "excerpts": found}


def read_index(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path}: excerpt index not found (write it with "
                                "`python -m mss.unlabeled.extract_silent`)")
    index = json.loads(path.read_text())
    if index.get("format") != "mss.unlabeled":
        raise ValueError(f"{path}: not an mss excerpt index (format 'mss.unlabeled' expected)")
    return index


# ----------------------------------------------------------------------------------------------- training items


class UnlabeledExcerpts(Dataset):
    """Items ``{"source": i, "excerpt": (C, T)}``: a source ``i`` drawn uniformly among those with excerpts of at
    least ``segment`` seconds (and score >= ``min_score``), one of its excerpts ``m_i`` (source ``i`` silent) and a
    random ``segment``-long window in it. A folder excerpt (oracle on a track folder without ``mixture``) is read
    as the sum of its stems.

    Args:
        index: path of ``index.json`` (or its folder).
        sources: the model's sources (``${data.sources}``); excerpts of other sources are ignored.
        segment, sample_rate, channels: training excerpt length (seconds) and audio format (``${data.*}``).
        samples_per_epoch: nominal length (items are random).
    """

    def __init__(self, index: str | Path, sources: Sequence[str], *, segment: float, sample_rate: int,
                 channels: int, samples_per_epoch: int = 1000, min_score: float | None = None):
        data = read_index(index)
        self.sources, self.sample_rate, self.channels = list(sources), int(sample_rate), int(channels)
        self.segment, self.samples_per_epoch = float(segment), int(samples_per_epoch)
        self.excerpts: dict[int, list[dict]] = {}
        for i, s in enumerate(self.sources):
            keep = [e for e in data["excerpts"].get(s, [])
                    if (e["end"] - e["start"]) / e["sample_rate"] >= self.segment
                    and (min_score is None or e["score"] >= min_score)]
            if keep:
                self.excerpts[i] = keep
        if not self.excerpts:
            raise ValueError(f"{index}: no excerpt of at least {self.segment} s for sources {self.sources} "
                             "(lower data.segment or extract with a smaller min_duration)")
        self.choices = sorted(self.excerpts)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __getitem__(self, index: int) -> dict:
        i = self.choices[int(torch.randint(len(self.choices), ()))]
        e = self.excerpts[i][int(torch.randint(len(self.excerpts[i]), ()))]
        frames = math.ceil(self.segment * e["sample_rate"])
        start = e["start"] + int(torch.randint(max(1, e["end"] - e["start"] - frames + 1), ()))
        path = Path(e["path"])
        kw = dict(start=start, frames=frames, sample_rate=self.sample_rate, channels=self.channels)
        if path.is_dir():
            stems = [p for p in path.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES]
            wav = torch.stack([load_audio(p, **kw) for p in stems]).sum(0)
        else:
            wav = load_audio(path, **kw)
        length = round(self.segment * self.sample_rate)
        wav = torch.nn.functional.pad(wav[..., :length], (0, max(0, length - wav.shape[-1])))
        return {"source": i, "excerpt": wav}


# ----------------------------------------------------------------------------------------------- detector quality


def evaluate_index(index: dict, stems_root: str | Path, sources: Sequence[str], *,
                   silent_db: float = -30.0) -> dict[str, dict[str, float]]:
    """Precision / recall of an index against the stems of the same tracks (MUSDB layout under ``stems_root``; an
    excerpt's track is the folder holding its file). On the 64 ms frame grid: precision = fraction of excerpt frames
    where the source is truly silent (``V_i <= silent_db``); recall = fraction of the truly silent frames lying in
    silent runs of at least ``min_duration`` that some excerpt covers."""
    root = Path(stems_root).expanduser()
    min_duration = index["settings"]["min_duration"]
    totals = {s: [0, 0, 0, 0] for s in sources}  # tp frames, excerpt frames, covered truth, truth frames
    for name, files in find_inputs(root, sources, needs_stems=True):
        sr = audio_info(files[0]).sample_rate
        stems = torch.stack([load_audio(f, sample_rate=sr) for f in files])
        hop, frame = round(HOP * sr), round(FRAME * sr)
        truth = relative_volume(stems, frame, hop) <= silent_db
        min_frames = max(1, math.ceil((min_duration * sr - frame) / hop) + 1)
        folder = (root / name).resolve()
        for i, s in enumerate(sources):
            predicted = torch.zeros_like(truth[i])
            for e in index["excerpts"].get(s, []):
                p = Path(e["path"]).resolve()
                if p == folder or p.parent == folder:
                    a = round(e["start"] * sr / e["sample_rate"]) // hop
                    b = (round(e["end"] * sr / e["sample_rate"]) - frame) // hop
                    predicted[a: b + 1] = True
            target = torch.zeros_like(truth[i])
            for a, b in runs(truth[i], min_frames):
                target[a: b + 1] = True
            t = totals[s]
            t[0] += int((predicted & truth[i]).sum())
            t[1] += int(predicted.sum())
            t[2] += int((predicted & target).sum())
            t[3] += int(target.sum())
    return {s: {"precision": t[0] / t[1] if t[1] else float("nan"), "recall": t[2] / t[3] if t[3] else float("nan"),
                "excerpt_frames": t[1], "silent_frames": t[3]} for s, t in totals.items()}
