"""Silent-source detectors for unlabeled-data remixing (Demucs 2019, section 4): per source and frame (0.64 s
windows every 64 ms), is the source silent?

- :class:`EnergyDetector` (oracle, needs the stems): relative volume ``V_i = 10 log10(|s_i|^2 / |mix|^2)``, silent
  when ``V_i <= threshold_db`` (-30 dB: perceptually zero).
- :class:`ClassifierDetector`: :class:`mss.unlabeled.presence.PresenceNet` trained on a supervised set
  (:func:`train_classifier`; labels ``V_i <= -13 dB`` as in the paper), with per-source probability thresholds
  calibrated so that >= 95 % of the frames it calls silent have ``V_i <= -20 dB`` on the supervised tracks.

The excerpts they find and the dataset serving them are :mod:`mss.unlabeled.excerpts`.

Shapes: S sources, C channels, T samples, N frames.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from mss.audio.io import resample
from mss.utils import atomic_write

log = logging.getLogger("mss.unlabeled")

FRAME, HOP = 0.64, 0.064  # seconds: the paper's detector window and stride


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
    """Trained :class:`~mss.unlabeled.presence.PresenceNet` on the mixture; ``silent[i, n] = P_i >= p_i`` with the
    calibrated per-source thresholds stored with the network; score = ``P_i``."""

    needs_stems = False

    def __init__(self, path: str | Path, device: str = "cpu"):
        from mss.unlabeled.presence import PresenceNet

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FileNotFoundError(f"detector_path={self.path}: classifier not found (train it with "
                                    "`python -m mss.unlabeled.extract_silent train root=... out=...`)")
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
    from mss.unlabeled.presence import PresenceNet

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
