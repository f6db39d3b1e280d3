"""Logging callbacks: listenable validation examples and spectrogram images for the trackers, and a one-line
summary per epoch.

- :class:`ValidationMedia`: every ``every_n_epochs`` epochs, separates an excerpt of one validation track and logs
  the mixture, each estimated stem (and, once, the references) as audio, plus a figure of log-magnitude
  spectrograms (mixture, then reference | estimate per source), to TensorBoard and Weights & Biases (other loggers
  are skipped). Rank 0 only.
- :class:`EpochSummary`: ``epoch 3/8 | train/loss 0.1234 | val/nsdr 4.56 (best 4.80) | lr 1.0e-03 | 12.3 s``.

Configs: ``conf/callbacks/default.yaml`` (``epoch_summary``) and ``conf/callbacks/media.yaml`` (``callbacks=media``).
"""

from __future__ import annotations

import logging
import math
import time

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from mss.audio.spectral import stft

log = logging.getLogger("mss.train")


def spectrogram_figure(mixture: torch.Tensor, references: torch.Tensor | None, estimates: torch.Tensor,
                       sources: list[str], sample_rate: int, n_fft: int = 2048, hop_length: int = 512):
    """Matplotlib figure of log-magnitude spectrograms (first channel): the mixture on top, then one row per source
    with the reference (left, when given) and the estimate (right). ``mixture (C, T)``, stems ``(S, C, T)``."""
    from matplotlib.figure import Figure  # no pyplot: safe in training processes, any backend

    def db(x: torch.Tensor) -> torch.Tensor:
        return 20 * torch.log10(stft(x[0].float().cpu(), n_fft, hop_length).abs() + 1e-5)

    cols = 2 if references is not None else 1
    fig = Figure(figsize=(5 * cols, 1.8 * (len(sources) + 1)), layout="constrained")
    axes = fig.subplots(len(sources) + 1, cols, squeeze=False, sharex=True, sharey=True)
    extent = (0, mixture.shape[-1] / sample_rate, 0, sample_rate / 2000)
    panels = [(0, 0, "mixture", mixture)] + [(0, 1, "", None)] * (cols - 1)
    for i, name in enumerate(sources):
        if references is not None:
            panels.append((i + 1, 0, f"{name} (reference)", references[i]))
        panels.append((i + 1, cols - 1, f"{name} (estimate)", estimates[i]))
    for row, col, title, wav in panels:
        ax = axes[row, col]
        if wav is None:
            ax.axis("off")
            continue
        ax.imshow(db(wav).numpy(), origin="lower", aspect="auto", extent=extent, vmin=-80, vmax=20, cmap="magma")
        ax.set_title(title, fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    for ax in axes[:, 0]:
        ax.set_ylabel("kHz")
    return fig


class ValidationMedia(L.Callback):
    """Log audio of a validation excerpt and spectrogram images every ``every_n_epochs`` epochs.

    Args:
        every_n_epochs: logging interval (epochs in which validation ran).
        track: index of the validation track.
        offset, duration: excerpt in seconds (clipped to the track).
    """

    def __init__(self, every_n_epochs: int = 5, track: int = 0, offset: float = 0.0, duration: float = 10.0):
        if every_n_epochs < 1 or duration <= 0:
            raise ValueError(f"ValidationMedia: every_n_epochs={every_n_epochs} must be >= 1 and "
                             f"duration={duration} > 0")
        self.every_n_epochs, self.track, self.offset, self.duration = every_n_epochs, track, offset, duration
        self._references_logged = False

    def _media_loggers(self, trainer: L.Trainer) -> list:
        return [lg for lg in trainer.loggers if isinstance(lg, (TensorBoardLogger, WandbLogger))]

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = self._media_loggers(trainer)
        if trainer.sanity_checking or not loggers or trainer.current_epoch % self.every_n_epochs:
            return
        dm = trainer.datamodule
        tracks = dm.track_dataset("valid") if dm is not None and hasattr(dm, "track_dataset") else None
        if tracks is None or len(tracks) == 0:
            return
        item = tracks[min(self.track, len(tracks) - 1)]
        sr = pl_module.sample_rate
        start = min(round(self.offset * sr), max(0, item["mixture"].shape[-1] - 1))
        stop = start + round(self.duration * sr)
        mixture, references = item["mixture"][..., start:stop], item["stems"][..., start:stop]
        with torch.no_grad():
            estimates = pl_module.separate(mixture[None].to(pl_module.device))[0].cpu()
        sources, step = list(pl_module.sources), trainer.global_step
        clips = {"mixture": mixture, **{f"estimate/{s}": e for s, e in zip(sources, estimates)}}
        if not self._references_logged:
            clips.update({f"reference/{s}": r for s, r in zip(sources, references)})
            self._references_logged = True
        figure = spectrogram_figure(mixture, references, estimates, sources, sr)
        for lg in loggers:
            if isinstance(lg, TensorBoardLogger):
                for name, wav in clips.items():
                    # TensorBoard audio is mono: the channel mean, clipped to [-1, 1]
                    lg.experiment.add_audio(f"media/{name}", wav.mean(0).clamp(-1, 1), step, sample_rate=sr)
                lg.experiment.add_figure("media/spectrograms", figure, step, close=False)
            else:
                try:
                    import wandb
                except ImportError as err:
                    raise ImportError('logger=wandb needs wandb: pip install "mss[wandb]"') from err
                lg.experiment.log({**{f"media/{name}": wandb.Audio(wav.T.clamp(-1, 1).numpy(), sample_rate=sr)
                                      for name, wav in clips.items()},
                                   "media/spectrograms": wandb.Image(figure), "trainer/global_step": step})


class EpochSummary(L.Callback):
    """One log line per epoch with the training loss, the validation metric (and best so far), LR and time."""

    def __init__(self, metrics: tuple[str, ...] = ("train/loss_epoch", "val/nsdr", "val/loss"),
                 monitor: str = "val/nsdr", mode: str = "max"):
        if mode not in ("max", "min"):
            raise ValueError(f"EpochSummary: mode={mode!r}, expected max or min")
        self.metrics, self.monitor, self.mode = tuple(metrics), monitor, mode
        self.best: float | None = None
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def line(self, trainer: L.Trainer) -> str:
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k in self.metrics or k == self.monitor}
        current = values.get(self.monitor)
        if current is not None and not math.isnan(current):
            better = max if self.mode == "max" else min
            self.best = current if self.best is None else better(self.best, current)
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for key in self.metrics:
            if key in values:
                parts.append(f"{key.removesuffix('_epoch')} {values[key]:.4f}"
                             + (f" (best {self.best:.4f})" if key == self.monitor and self.best is not None else ""))
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.1e}")
        parts.append(f"{time.monotonic() - self._start:.1f} s")
        return " | ".join(parts)

    @rank_zero_only
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            log.info(self.line(trainer))

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best = state_dict.get("best")
