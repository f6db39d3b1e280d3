"""Unlabeled-data remixing (Demucs 2019, section 4): find excerpts of unlabeled mixtures where one source is silent,
and serve them for the extra training step of :class:`mss.lightning.module.SeparationModule`.

Pipeline:

1. A **detector** says, per source and frame (0.64 s windows every 64 ms), whether the source is silent:
   - :class:`EnergyDetector` (oracle, needs the stems): relative volume ``V_i = 10 log10(|s_i|^2 / |mix|^2)``,
     silent when ``V_i <= threshold_db`` (-30 dB: perceptually zero).
   - :class:`ClassifierDetector`: :class:`mss.models.presence.PresenceNet` trained on a supervised set
     (:func:`train_classifier`; labels ``V_i <= -13 dB`` as in the paper), with per-source probability thresholds
     calibrated so that >= 95 % of the frames it calls silent have ``V_i <= -20 dB`` on the supervised tracks.
2. :func:`extract` keeps runs of silent frames lasting at least ``min_duration`` (5 s) as excerpts ``m_i`` of
   ``D_i`` with a score (mean silence probability; mean dB below the mixture for the oracle). One JSON per input
   (resumable), then ``index.json``. CLI: ``python -m mss.data.extract_silent``.
3. :class:`UnlabeledExcerpts` serves ``{"source": i, "excerpt": (C, T)}`` items from that index.

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

from mss.audio.io import audio_info, load_audio, resample
from mss.utils import atomic_write, atomic_write_text

log = logging.getLogger("mss.unlabeled")

FRAME, HOP = 0.64, 0.064  # seconds: the paper's detector window and stride
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")
INDEX = "index.json"


# ----------------------------------------------------------------------------------------------- frame statistics


def relative_volume(stems: torch.Tensor, frame: int, hop: int, floor_db: float = -120.0) -> torch.Tensor:
    """``V_i`` in dB per frame: stems ``(S, C, T)`` → ``(S, N)``, ``N = max(1, 1 + (T - frame) // hop)``; frame
    ``n`` covers samples ``[n hop, n hop + frame)`` (zero-padded at the end)."""
    if stems.shape[-1] < frame:
        stems = torch.nn.functional.pad(stems, (0, frame - stems.shape[-1]))
    energy = stems.double().square().sum(1).unfold(-1, frame, hop).sum(-1)  # (S, N)
    mix = stems.double().sum(0).square().sum(0).unfold(-1, frame, hop).sum(-1)  # (N,)
    ratio = energy / mix.clamp_min(1e-20)
    return (10 * torch.log10(ratio.clamp_min(10 ** (floor_db / 10)))).float().clamp_max(60.0)


def runs(mask: torch.Tensor, min_frames: int) -> list[tuple[int, int]]:
    """``[first, last]`` frame indices (inclusive) of runs of ``True`` in ``mask`` ``(N,)`` of >= ``min_frames``."""
    padded = torch.nn.functional.pad(mask.int(), (1, 1))
    edges = padded.diff()
    starts, ends = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
    return [(a, b - 1) for a, b in zip(starts, ends) if b - a >= min_frames]


# ----------------------------------------------------------------------------------------------- detectors


class EnergyDetector:
    """Oracle on supervised stems: ``silent[i, n] = V_i <= threshold_db``; score = dB below ``threshold_db``."""

    needs_stems = True

    def __init__(self, threshold_db: float = -30.0):
        self.threshold_db = float(threshold_db)

    @property
    def signature(self) -> dict:
        return {"detector": "energy", "threshold_db": self.threshold_db}

    def __call__(self, audio: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stems ``(S, C, T)`` → ``(silent (S, N) bool, score (S, N))`` on the FRAME/HOP grid."""
        volume = relative_volume(audio, round(FRAME * sample_rate), round(HOP * sample_rate))
        return volume <= self.threshold_db, -volume


class ClassifierDetector:
    """Trained :class:`~mss.models.presence.PresenceNet` on the mixture; ``silent[i, n] = P_i >= p_i`` with the
    calibrated per-source thresholds stored with the network; score = ``P_i``."""

    needs_stems = False

    def __init__(self, path: str | Path, device: str = "cpu"):
        from mss.models.presence import PresenceNet

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"detector_path={self.path}: classifier not found (train it with "
                                    "`python -m mss.data.extract_silent train root=... out=...`)")
        stored = torch.load(self.path, map_location="cpu", weights_only=True)
        if stored.get("format") != "mss.presence":
            raise ValueError(f"{self.path}: not an mss presence classifier (no format 'mss.presence')")
        self.net = PresenceNet(**stored["config"]).eval().to(device)
        self.net.load_state_dict(stored["state_dict"])
        self.thresholds = torch.tensor([stored["thresholds"][s] for s in self.net.sources])
        self.digest = hashlib.sha1(self.path.read_bytes()).hexdigest()[:12]
        self.device = device

    @property
    def signature(self) -> dict:
        return {"detector": "classifier", "sha1": self.digest}

    @torch.no_grad()
    def probabilities(self, mix: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """Mixture ``(C, T)`` → P(silent) ``(S, N)`` on the net's frame grid (``frame_hop`` at its rate)."""
        mono = resample(mix.mean(0), sample_rate, self.net.sample_rate)
        return torch.sigmoid(self.net(mono[None].to(self.device)))[0].cpu()

    def __call__(self, audio: torch.Tensor, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixture ``(C, T)`` → ``(silent, score)`` ``(S, N)`` resampled onto the FRAME/HOP grid."""
        probs = self.probabilities(audio, sample_rate)
        n = max(1, 1 + (audio.shape[-1] - round(FRAME * sample_rate)) // round(HOP * sample_rate))
        # frame n of the FRAME/HOP grid covers [n HOP, n HOP + FRAME): it is silent when every net frame inside is
        centres = (torch.arange(n)[:, None] * HOP + torch.linspace(0, FRAME, 11)[None]) * self.net.sample_rate
        idx = (centres / self.net.frame_hop).long().clamp_max(probs.shape[-1] - 1)  # (n, 11)
        window = probs[:, idx]  # (S, n, 11)
        score = window.min(-1).values
        return score >= self.thresholds[:, None], score


def make_detector(name: str, path: str | None = None, threshold_db: float = -30.0):
    if name == "energy":
        return EnergyDetector(threshold_db)
    if name == "classifier":
        if not path:
            raise ValueError("detector=classifier needs detector_path=<classifier .pt from `extract_silent train`>")
        return ClassifierDetector(path)
    raise ValueError(f"detector={name!r}: expected 'energy' (oracle on stems) or 'classifier'")


# ----------------------------------------------------------------------------------------------- classifier training


def _labels(stems: torch.Tensor, sample_rate: int, frame_hop: int, n: int) -> torch.Tensor:
    """Relative volume ``(S, n)`` of 0.64 s windows centred on the classifier's frames (rate ``sample_rate``)."""
    frame = round(FRAME * sample_rate)
    pad = (frame - frame_hop) // 2
    padded = torch.nn.functional.pad(stems, (pad, frame))
    return relative_volume(padded, frame, frame_hop)[:, :n]


def train_classifier(tracks: Sequence, sources: Sequence[str], *, valid_tracks: Sequence = (), steps: int = 300,
                     batch_size: int = 8, segment: float = 6.0, lr: float = 5e-4, label_db: float = -13.0,
                     target_db: float = -20.0, precision: float = 0.95, net_kw: dict | None = None,
                     seed: int = 0) -> tuple[torch.nn.Module, dict[str, float], dict]:
    """Train a :class:`PresenceNet` on random excerpts of supervised tracks (:class:`mss.data.tracks.Track`), each
    source with a random gain (+-6 dB) so the relative volumes vary. Returns ``(net, thresholds, stats)``:
    ``thresholds[s]`` is the lowest probability ``p`` such that >= ``precision`` of the calibration frames with
    ``P >= p`` have ``V <= target_db`` (on ``valid_tracks``, else the training tracks)."""
    from mss.models.presence import PresenceNet

    gen = torch.Generator().manual_seed(seed)
    net = PresenceNet(sources, **(net_kw or {}))
    sr = net.sample_rate
    length = round(segment * sr)
    cache = {t.name: torch.stack([resample(t.read_source(s).mean(0), t.sample_rate, sr) for s in sources])
             for t in list(tracks) + list(valid_tracks)}  # mono 16 kHz stems (S, T)
    train_names = [t.name for t in tracks]
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for step in range(steps):
        batch = []
        for _ in range(batch_size):
            stems = cache[train_names[int(torch.randint(len(train_names), (), generator=gen))]]
            start = int(torch.randint(max(1, stems.shape[-1] - length), (), generator=gen))
            gain = 10 ** ((torch.rand(len(sources), 1, generator=gen) * 12 - 6) / 20)
            excerpt = stems[:, start: start + length] * gain
            batch.append(torch.nn.functional.pad(excerpt, (0, length - excerpt.shape[-1])))
        stems = torch.stack(batch)  # (B, S, T)
        logits = net(stems.sum(1))
        target = torch.stack([_labels(s[:, None], sr, net.frame_hop, logits.shape[-1]) for s in stems])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, (target <= label_db).float(),
                                                                    reduction="none").mean((0, 2)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log.info("presence classifier step %d/%d: loss %.4f", step + 1, steps, loss.item())
    net.eval()
    probs, volumes = [], []
    with torch.no_grad():
        for t in (valid_tracks or tracks):
            stems = cache[t.name]
            p = torch.sigmoid(net(stems.sum(0)[None]))[0]
            probs.append(p)
            volumes.append(_labels(stems[:, None], sr, net.frame_hop, p.shape[-1]))
    probs, volumes = torch.cat(probs, -1), torch.cat(volumes, -1)
    thresholds, stats = {}, {}
    for i, s in enumerate(sources):
        order = probs[i].argsort(descending=True)
        good = (volumes[i][order] <= target_db).double().cumsum(0) / torch.arange(1, len(order) + 1)
        ok = (good >= precision).nonzero().flatten()
        # the longest prefix (lowest threshold) that still meets the precision; 1.0 (never silent) if none
        thresholds[s] = float(probs[i][order][ok[-1]]) if len(ok) else 1.0
        truth = volumes[i] <= label_db
        pred = probs[i] >= 0.5
        stats[s] = {"accuracy": float((pred == truth).float().mean()), "threshold": thresholds[s]}
    return net, thresholds, stats


def save_classifier(path: str | Path, net, thresholds: dict[str, float], stats: dict | None = None) -> Path:
    config = {"sources": net.sources, "sample_rate": net.sample_rate, "n_fft": net.n_fft,
              "hop_length": net.hop_length, "bands": net.bands, "pool": net.pool,
              "channels": net.convs[0][0].out_channels, "hidden": net.rnn.hidden_size}
    blob = {"format": "mss.presence", "config": config, "state_dict": net.state_dict(), "thresholds": thresholds,
            "stats": stats or {}}
    return atomic_write(path, lambda tmp: torch.save(blob, tmp))


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
        raise FileNotFoundError(f"{path}: excerpt index not found (write it with `python -m mss.data.extract_silent`)")
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
