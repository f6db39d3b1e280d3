"""Separate audio files: ``python -m mss.separate ckpt=PATH|model=NAME input=FILE_DIR_OR_GLOB output_dir=DIR``
(``model=NAME``: a published model, downloaded and converted on first use, see :mod:`mss.pretrained.registry`).

Input: one file, a folder (searched recursively; in a MUSDB18-HQ-layout tree only the ``mixture`` files) or a glob
(``'input=songs/*.mp3'``). WAV/FLAC/OGG/AIFF are read by soundfile, MP3, M4A/AAC and other containers by ffmpeg.
Any sample rate is resampled to the model's (a log note) and the stems back to the input's; a mono file is
duplicated for a stereo model and its stems written mono; a file with more channels than the model is an error
unless ``downmix=true`` (the channels averaged, then duplicated to the model's; stems in the model's channels).

Output (see conf/separate.yaml): ``filename`` template (``{track}``, ``{source}``, ``{ext}``) under ``output_dir``,
``format=wav|flac|mp3``, ``bit_depth=16|24|32f``, ``clip=rescale|clamp|tanh|none`` (the Demucs reference's
``--clip-mode``, default rescale, per written file), ``stems=[vocals]`` (two-stem mode: the listed sources plus their
complement ``no_vocals``, ``mixture − vocals`` with ``complement=minus`` or the sum of the other estimates with
``add``), ``residual=true`` (also ``residual`` = mixture − sum of all estimates), ``tta=[flip_channels,flip_sign]``;
speed: ``compile=true`` (torch.compile), ``precision=bf16|fp16`` (autocast, :mod:`mss.inference.speed`);
``ckpt=model.onnx``: a model exported by ``python -m mss.export``, run by onnxruntime.
Every file is written atomically (temporary file, then renamed), as long as the input and at its sample rate.

A file that cannot be read or separated is reported and skipped; the others are written, and the command exits
non-zero at the end, naming the failed files. Several files are pipelined (:func:`separate_files`): the next file is
decoded and the previous one's stems encoded in two background threads while the network separates the current
one; memory holds at most three tracks (the one ahead, the current one, the one being written), each whole: the
separation itself keeps the track and its estimates in memory (the ``clip=rescale`` peak is that of the whole stem).
"""

from __future__ import annotations

import glob
import logging
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from mss.audio.io import (
    CLIP_MODES,
    FFMPEG_SUFFIXES,
    SOUNDFILE_SUFFIXES,
    AudioError,
    decode_audio,
    output_subtype,
    prevent_clip,
    resample,
    save_audio,
)
from mss.checkpoint import load_model
from mss.inference.export import OnnxSeparator, is_onnx
from mss.inference.overlap_add import apply_model
from mss.inference.speed import check_precision
from mss.inference.tta import check_tta
from mss.pretrained.registry import resolve_checkpoint
from mss.run import CONF_DIR

log = logging.getLogger("mss.separate")

AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES + FFMPEG_SUFFIXES
TEMPLATE_FIELDS = ("track", "source", "ext")


class SeparateError(RuntimeError):
    """Some input files could not be separated (the others were written)."""


def list_inputs(spec: str | Path) -> list[Path]:
    """Audio files of ``spec``: a file, a folder searched recursively (in a folder of MUSDB18-HQ-layout tracks only
    the ``mixture`` files) or a glob pattern; sorted."""
    text = str(spec)
    if glob.has_magic(text) and not Path(text).expanduser().exists():
        files = sorted(Path(p) for p in glob.glob(str(Path(text).expanduser()), recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"input={text}: no file matches this pattern")
        return files
    path = Path(text).expanduser()
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


@dataclass(frozen=True)
class OutputOptions:
    """What :func:`separate_file` writes (the output keys of conf/separate.yaml), checked on construction."""

    format: str = "wav"
    bit_depth: str = "16"
    clip: str = "rescale"
    filename: str = "{track}/{source}.{ext}"
    stems: tuple[str, ...] | None = None
    complement: str = "minus"
    residual: bool = False
    downmix: bool = False
    subtype: str = field(init=False, default="")

    def __post_init__(self):
        object.__setattr__(self, "format", str(self.format).lower())
        object.__setattr__(self, "bit_depth", str(self.bit_depth).lower())
        object.__setattr__(self, "subtype", output_subtype(self.format, self.bit_depth))
        if self.clip not in CLIP_MODES:
            raise AudioError(f"clip={self.clip!r}: expected one of {', '.join(CLIP_MODES)}")
        if self.complement not in ("minus", "add"):
            raise AudioError(f"complement={self.complement!r}: expected minus (mixture − stems) or add (sum of the "
                             "other estimates)")
        fields = {name for _, name, _, _ in string.Formatter().parse(self.filename) if name is not None}
        unknown = fields - set(TEMPLATE_FIELDS)
        if unknown or "source" not in fields:
            raise AudioError(f"filename={self.filename!r}: the template may use {{track}}, {{source}} and {{ext}} and "
                             f"needs {{source}}" + (f"; unknown field(s) {sorted(unknown)}" if unknown else ""))
        if Path(self.filename).is_absolute():
            raise AudioError(f"filename={self.filename!r}: give a path relative to output_dir")

    def check_sources(self, sources: Sequence[str]) -> None:
        if self.stems is not None:
            unknown = [s for s in self.stems if s not in sources]
            if unknown or not self.stems:
                raise AudioError(f"stems={list(self.stems)}: the model separates {list(sources)}; name one or more "
                                 "of them (or stems=null for all)")

    def path(self, out_dir: Path, track: str, source: str) -> Path:
        return out_dir / self.filename.format(track=track, source=source, ext=self.format)


def track_name(path: Path) -> str:
    """``<track>`` of an input: the file name without suffix, or the folder name for a ``mixture`` file."""
    return path.parent.name if path.stem == "mixture" else path.stem


def to_model(wav: torch.Tensor, rate: int, net: torch.nn.Module, downmix: bool, path: Path) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """``(mix for the model (C_model, T_model), the input as the stems will be written (C_out, T))``."""
    channels, want = wav.shape[0], int(net.audio_channels)
    if channels > want:
        if not downmix:
            raise AudioError(f"{path}: {channels} channels, the model separates {want}; pass downmix=true to "
                             f"average the channels down to {'mono' if want == 1 else f'mono, duplicated to {want}'}")
        log.info("%s: downmixing %d channels to %d", path, channels, want)
        wav = wav.mean(0, keepdim=True).expand(want, -1).clone()
    elif channels < want:
        if channels != 1:
            raise AudioError(f"{path}: {channels} channels, the model separates {want}; expected mono or {want}")
        log.info("%s: mono input, duplicated to %d channels (stems written mono)", path, want)
    mix = wav.expand(want, -1) if channels == 1 else wav
    if rate != net.sample_rate:
        log.info("%s: resampling %d Hz to the model's %d Hz (stems written at %d Hz)", path, rate, net.sample_rate,
                 rate)
        mix = resample(mix, rate, int(net.sample_rate))
    return mix.contiguous(), wav


@dataclass
class Decoded:
    """An input file as the model takes it: ``mix`` ``(C_model, T_model)`` at the model's rate, the file's own audio
    ``original`` ``(C, T)`` and its sample ``rate``."""

    path: Path
    mix: torch.Tensor
    original: torch.Tensor
    rate: int


def decode_input(path: Path, net: torch.nn.Module, downmix: bool = False) -> Decoded:
    """Read ``path`` (soundfile or ffmpeg) and bring it to the model's channels and rate (:func:`to_model`)."""
    wav, rate = decode_audio(path)
    mix, original = to_model(wav, rate, net, downmix, path)
    return Decoded(path, mix, original, rate)


def write_stems(net: torch.nn.Module, item: Decoded, est: torch.Tensor, out_dir: Path,
                options: OutputOptions) -> list[Path]:
    """Write the estimates ``est`` ``(S, C_model, T_model)`` of ``item`` as :class:`OutputOptions` asks (back to the
    file's channels and rate, two-stem complement, residual, clipping, format); returns the written paths."""
    original, rate = item.original, item.rate
    if original.shape[0] != est.shape[1]:  # mono input: the stems averaged back to mono
        est = est.mean(1, keepdim=True)
    if rate != net.sample_rate:
        est = resample(est, int(net.sample_rate), rate)
    frames = original.shape[-1]
    est = torch.nn.functional.pad(est, (0, max(0, frames - est.shape[-1])))[..., :frames]
    stems = dict(zip(net.sources, est))
    chosen = list(net.sources) if options.stems is None else list(options.stems)
    outputs = {s: stems[s] for s in chosen}
    rest = [s for s in net.sources if s not in chosen]
    if rest:
        name = "no_" + "_".join(chosen)
        outputs[name] = (original - sum(outputs.values()) if options.complement == "minus"
                         else sum(stems[s] for s in rest))
    if options.residual:
        outputs["residual"] = original - est.sum(0)
    track = track_name(item.path)
    paths = {name: options.path(out_dir, track, name) for name in outputs}
    if len(set(paths.values())) != len(paths):
        raise AudioError(f"filename={options.filename!r} gives the same path to several stems of {item.path}")
    return [save_audio(paths[name], prevent_clip(wave, options.clip), rate, subtype=options.subtype)
            for name, wave in outputs.items()]


def separate_file(net: torch.nn.Module, path: Path, out_dir: Path, options: OutputOptions | None = None, *,
                  device: torch.device | None = None, **apply_kw) -> list[Path]:
    """Separate one file into ``out_dir/<filename template>`` per :class:`OutputOptions`; returns the written
    paths. ``apply_kw`` go to :func:`mss.inference.overlap_add.apply_model` (segment, overlap, shifts, tta, ...)."""
    options = options or OutputOptions()
    item = decode_input(path, net, options.downmix)
    est = apply_model(net, item.mix, device=device, progress=True, **apply_kw).cpu()
    return write_stems(net, item, est, out_dir, options)


def separate_files(net: torch.nn.Module, files: Sequence[Path], out_dir: Path, options: OutputOptions | None = None,
                   *, device: torch.device | None = None, progress: bool = True, **apply_kw
                   ) -> tuple[dict[Path, list[Path]], list[tuple[Path, str]]]:
    """:func:`separate_file` for every file, pipelined: the next file is decoded (one reader thread) and the previous
    one's stems encoded and written (one writer thread) while the network separates the current one, so the network
    waits for neither; at most one decoded file ahead and one being written are held besides the current one. A file
    that fails at any stage is logged and skipped. Returns ``({input: written paths}, [(input, error)])``."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    options = options or OutputOptions()
    written: dict[Path, list[Path]] = {}
    failed: list[tuple[Path, str]] = []

    def fail(path: Path, err: Exception) -> None:
        log.error("%s: skipped: %s", path, str(err).splitlines()[0] if str(err) else type(err).__name__)
        failed.append((path, str(err) or type(err).__name__))

    def finish(job) -> None:
        path, future = job
        try:
            written[path] = future.result()
            log.info("%s -> %s", path, ", ".join(str(p) for p in written[path]))
        except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
            fail(path, err)

    with ThreadPoolExecutor(1, thread_name_prefix="mss-decode") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="mss-encode") as writer:
        ahead = reader.submit(decode_input, files[0], net, options.downmix) if files else None
        pending = None
        for i, path in enumerate(tqdm(files, desc="files", unit="file", disable=not progress or len(files) < 2)):
            current = ahead
            ahead = reader.submit(decode_input, files[i + 1], net, options.downmix) if i + 1 < len(files) else None
            try:
                item = current.result()
                est = apply_model(net, item.mix, device=device, progress=progress, **apply_kw).cpu()
            except Exception as err:  # noqa: BLE001
                fail(path, err)
                continue
            if pending is not None:
                finish(pending)  # the previous file's stems are on disk before the next write starts
            pending = (path, writer.submit(write_stems, net, item, est, out_dir, options))
        if pending is not None:
            finish(pending)
    return written, failed


def output_options(cfg: DictConfig) -> OutputOptions:
    stems = cfg.get("stems")
    if stems is not None:
        stems = tuple([stems] if isinstance(stems, str) else OmegaConf.to_container(stems))
    return OutputOptions(format=cfg.format, bit_depth=cfg.bit_depth, clip=cfg.clip, filename=cfg.filename,
                         stems=stems, complement=cfg.complement, residual=bool(cfg.residual),
                         downmix=bool(cfg.downmix))


def quote_template(args: Sequence[str]) -> list[str]:
    """Command-line overrides with an unquoted ``filename={track}/{source}.{ext}`` quoted for Hydra's grammar (where
    braces would start a dictionary)."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "filename" and "{" in value and value[:1] not in ("'", '"'):
            arg = f"{key}='{value}'" if "'" not in value else f'{key}="{value}"'
        out.append(arg)
    return out


@hydra.main(config_path=str(CONF_DIR), config_name="separate", version_base="1.3")
def _run(cfg: DictConfig) -> None:
    options = output_options(cfg)
    tta = check_tta(OmegaConf.to_container(cfg.tta) if OmegaConf.is_config(cfg.tta) else cfg.tta)
    files = list_inputs(cfg.input)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if cfg.get("ckpt") is None:
        raise ValueError("nothing to separate with: set model=NAME (a published model: python -m mss.pretrained list) "
                         "or ckpt=PATH (an mss checkpoint)")
    check_precision(cfg.get("precision"), device)
    if is_onnx(cfg.ckpt):  # an exported model (python -m mss.export): onnxruntime
        if cfg.get("compile") or str(cfg.get("precision") or "fp32").lower() != "fp32":
            raise ValueError(f"ckpt={cfg.ckpt}: an ONNX model runs as exported; compile and precision are for "
                             "PyTorch checkpoints")
        net = OnnxSeparator(cfg.ckpt)
    else:
        net = load_model(resolve_checkpoint(cfg.ckpt), map_location=device)
    options.check_sources(net.sources)
    segment = None if cfg.segment is None else round(cfg.segment * net.sample_rate)
    out = Path(cfg.output_dir).expanduser()
    _, failed = separate_files(net, files, out, options, device=device, segment=segment, overlap=cfg.overlap,
                               batch_size=cfg.batch_size, shifts=cfg.shifts, tta=tta,
                               compile=bool(cfg.get("compile", False)), precision=cfg.get("precision"))
    if failed:
        raise SeparateError(f"{len(failed)} of {len(files)} input file(s) failed (the others were written): "
                            + "; ".join(f"{p}: {e.splitlines()[0] if e else '?'}" for p, e in failed))
    log.info("separated %d file(s) into %s", len(files), out)


def main() -> None:
    """``python -m mss.separate`` / ``mss-separate``."""
    import sys

    # `model=NAME` (a published model) is `ckpt=NAME`: Hydra would read `model=` as the config group of that name
    sys.argv[1:] = [f"ckpt={a[6:]}" if a.startswith("model=") else a for a in quote_template(sys.argv[1:])]
    _run()


if __name__ == "__main__":
    main()
