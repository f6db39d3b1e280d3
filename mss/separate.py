"""Separate audio files: ``python -m mss.separate ckpt=PATH input=FILE_OR_DIR output_dir=DIR``.

Writes ``DIR/<track>/<source>.<format>``, each as long as the input and at its sample rate. Inputs at another rate
or channel count are converted to the model's on load (with a warning) and the stems converted back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from mss.audio.io import AudioError, audio_info, convert_channels, load_audio, resample, save_audio
from mss.checkpoint import load_model
from mss.inference.overlap_add import apply_model
from mss.run import CONF_DIR

log = logging.getLogger("mss.separate")

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")


def list_inputs(path: str | Path) -> list[Path]:
    """Audio files of ``path`` (a file, or a folder searched recursively), sorted; in a folder of MUSDB18-HQ-layout
    tracks only the ``mixture`` files."""
    path = Path(path).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input={path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    mixtures = [p for p in files if p.stem == "mixture"]
    files = mixtures or files  # a MUSDB18-HQ-layout tree: separate the mixtures only
    if not files:
        raise AudioError(f"input={path}: no audio files ({', '.join(AUDIO_SUFFIXES)}) in this folder")
    return files


def separate_file(net: torch.nn.Module, path: Path, out_dir: Path, *, fmt: str = "wav", subtype: str = "PCM_16",
                  device: torch.device | None = None, **apply_kw) -> list[Path]:
    """Separate one file into ``out_dir/<track>/<source>.<fmt>`` (``<track>`` is the file name without suffix, or
    the folder name for a ``mixture`` file); returns the written paths."""
    info = audio_info(path)
    mix = load_audio(path, sample_rate=net.sample_rate, channels=net.audio_channels, convert=True)
    est = apply_model(net, mix, device=device, progress=True, **apply_kw).cpu()  # (S, C, T)
    if info.channels != net.audio_channels:
        est = torch.stack([convert_channels(e, info.channels) for e in est])
    if info.sample_rate != net.sample_rate:
        est = resample(est, net.sample_rate, info.sample_rate)
    est = torch.nn.functional.pad(est, (0, max(0, info.frames - est.shape[-1])))[..., : info.frames]
    name = path.parent.name if path.stem == "mixture" else path.stem
    return [save_audio(out_dir / name / f"{source}.{fmt}", wav, info.sample_rate, subtype=subtype)
            for source, wav in zip(net.sources, est)]


@hydra.main(config_path=str(CONF_DIR), config_name="separate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    files = list_inputs(cfg.input)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = load_model(cfg.ckpt, map_location=device)
    segment = None if cfg.segment is None else round(cfg.segment * net.sample_rate)
    out = Path(cfg.output_dir).expanduser()
    for i, path in enumerate(files):
        written = separate_file(net, path, out, fmt=cfg.format, subtype=cfg.subtype, device=device,
                                segment=segment, overlap=cfg.overlap, batch_size=cfg.batch_size, shifts=cfg.shifts)
        log.info("[%d/%d] %s -> %s", i + 1, len(files), path, written[0].parent)


if __name__ == "__main__":
    main()
