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
non-zero at the end, naming the failed files. Files are streamed (:class:`FileSeparation`): decoded in blocks of
``BLOCK_SECONDS`` (ffmpeg through a pipe), separated by :func:`mss.inference.streaming.separation_stream` (the
chunk grid of whole-track overlap-add, with the same result), and the stems collected in spool files beside their
destinations and encoded at the end (``clip=rescale`` needs the whole stem's peak), so memory is bounded by the
segment and the block, not by the track: a two-hour recording separates in the memory a song does. Several files
are pipelined (:func:`separate_files`): a reader thread decodes ahead (also into the next file) and a writer thread
encodes the previous file's stems while the network separates the current one.
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

from mss.audio.io import CLIP_MODES, FFMPEG_SUFFIXES, SOUNDFILE_SUFFIXES, AudioError, output_subtype
from mss.audio.stream import BlockResampler, Spool, open_audio
from mss.checkpoint import load_model
from mss.inference.export import OnnxSeparator, is_onnx
from mss.inference.speed import check_precision
from mss.inference.streaming import separation_stream
from mss.inference.tta import check_tta
from mss.pretrained.registry import resolve_checkpoint
from mss.run import CONF_DIR

log = logging.getLogger("mss.separate")

AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES + FFMPEG_SUFFIXES
TEMPLATE_FIELDS = ("track", "source", "ext")
BLOCK_SECONDS = 10.0  # decoded, separated and written in blocks of this many seconds of the input


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


class FileSeparation:
    """One input file separated as its blocks arrive (:class:`mss.audio.stream.AudioStream`), its stems collected in
    spools beside their destinations (:class:`mss.audio.stream.Spool`) and encoded by :meth:`encode`.

    Each block is brought to the model's channels (a mono file duplicated; more channels than the model: averaged
    with ``downmix``, else an error) and rate (:class:`~mss.audio.stream.BlockResampler`), separated by a
    :func:`~mss.inference.streaming.separation_stream`, and its estimates brought back to the file's channels (mono
    files: averaged) and rate and paired with the input samples they separate (two-stem complement, residual). The
    written stems are as long as the input. Memory is bounded by the segment and the block, not the track, and the
    stems equal those of separating the whole file at once (:func:`mss.inference.overlap_add.apply_model`)."""

    def __init__(self, net: torch.nn.Module, path: Path, rate: int, channels: int, out_dir: Path,
                 options: OutputOptions, **stream_kw):
        self.net, self.path, self.rate, self.options = net, Path(path), int(rate), options
        want = int(net.audio_channels)
        if channels > want and not options.downmix:
            raise AudioError(f"{path}: {channels} channels, the model separates {want}; pass downmix=true to "
                             f"average the channels down to {'mono' if want == 1 else f'mono, duplicated to {want}'}")
        if want > channels != 1:
            raise AudioError(f"{path}: {channels} channels, the model separates {want}; expected mono or {want}")
        if channels > want:
            log.info("%s: downmixing %d channels to %d", path, channels, want)
        elif channels < want:
            log.info("%s: mono input, duplicated to %d channels (stems written mono)", path, want)
        self.downmix, self.want = channels > want, want
        self.out_channels = want if self.downmix else channels
        model_rate = int(net.sample_rate)
        if self.rate != model_rate:
            log.info("%s: resampling %d Hz to the model's %d Hz (stems written at %d Hz)", path, rate, model_rate,
                     rate)
        self.to_model = BlockResampler(self.rate, model_rate) if self.rate != model_rate else None
        self.to_file = BlockResampler(model_rate, self.rate) if self.rate != model_rate else None
        self.stream = separation_stream(net, want, **stream_kw)
        chosen = list(net.sources) if options.stems is None else list(options.stems)
        self.chosen, self.rest = chosen, [s for s in net.sources if s not in chosen]
        names = chosen + (["no_" + "_".join(chosen)] if self.rest else []) + (["residual"] if options.residual
                                                                            else [])
        paths = {name: options.path(out_dir, track_name(self.path), name) for name in names}
        if len(set(paths.values())) != len(paths):
            raise AudioError(f"filename={options.filename!r} gives the same path to several stems of {path}")
        self._made = sorted({d for target in paths.values() for d in (target.parent, *target.parent.parents)
                             if not d.exists()}, key=lambda d: len(d.parts), reverse=True)  # removed by discard()
        self.spools = {name: Spool(target, self.out_channels) for name, target in paths.items()}
        self._original = torch.zeros(self.out_channels, 0)  # input samples whose estimates are not written yet
        self._seen = self._written = 0

    def push(self, block: torch.Tensor) -> None:
        """Separate the next ``(C, n)`` block of the file (its own rate and channels)."""
        if self.downmix:
            block = block.mean(0, keepdim=True).expand(self.want, -1).clone()
        self._original = torch.cat([self._original, block], dim=-1)
        self._seen += block.shape[-1]
        mix = block.expand(self.want, -1) if block.shape[0] == 1 else block
        if self.to_model is not None:
            mix = self.to_model.push(mix)
        self._estimates(self.stream.push(mix.contiguous()[None])[0])

    def finish(self) -> None:
        """Separate what is left after the last block; the spools then hold the whole stems."""
        if self.to_model is not None:
            self._estimates(self.stream.push(self.to_model.finish()[None])[0])
        self._estimates(self.stream.finish()[0], last=True)
        if self._written < self._seen:  # the round trip through the model's rate can end a few samples short
            sources = len(self.net.sources)
            self._write(torch.zeros(sources, self.out_channels, self._seen - self._written))

    def _estimates(self, est: torch.Tensor, last: bool = False) -> None:
        """Estimates ``(S, C_model, m)`` at the model's rate, the next ones in time."""
        est = est.cpu()
        if self.out_channels != est.shape[1]:  # mono input: the stems averaged back to mono
            est = est.mean(1, keepdim=True)
        if self.to_file is not None:
            est = self.to_file.push(est)
            if last:
                est = torch.cat([est, self.to_file.finish()], dim=-1)
        self._write(est[..., : self._seen - self._written])

    def _write(self, est: torch.Tensor) -> None:
        n = est.shape[-1]
        original, self._original = self._original[..., :n], self._original[..., n:]
        stems = dict(zip(self.net.sources, est))
        outputs = {s: stems[s] for s in self.chosen}
        if self.rest:
            name = "no_" + "_".join(self.chosen)
            outputs[name] = (original - sum(outputs.values()) if self.options.complement == "minus"
                             else sum(stems[s] for s in self.rest))
        if self.options.residual:
            outputs["residual"] = original - est.sum(0)
        for name, wave in outputs.items():
            self.spools[name].write(wave)
        self._written += n

    def encode(self) -> list[Path]:
        """Encode every stem (clipping, format, bit depth; atomically); returns the written paths."""
        try:
            return [spool.encode(self.rate, self.options.subtype, self.options.clip) for spool in self.spools.values()]
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the spools, and the folders made for them that stayed empty (nothing is written)."""
        for spool in self.spools.values():
            spool.discard()
        for folder in self._made:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def separate_file(net: torch.nn.Module, path: Path, out_dir: Path, options: OutputOptions | None = None, *,
                  device: torch.device | None = None, block_seconds: float = BLOCK_SECONDS, **stream_kw
                  ) -> list[Path]:
    """Separate one file into ``out_dir/<filename template>`` per :class:`OutputOptions`, block by block
    (:class:`FileSeparation`); returns the written paths. ``stream_kw`` go to
    :func:`mss.inference.streaming.separation_stream` (segment, overlap, shifts, tta, ...)."""
    options = options or OutputOptions()
    with open_audio(path, block_seconds) as stream:
        job = FileSeparation(net, path, stream.rate, stream.channels, out_dir, options, device=device, **stream_kw)
        try:
            for block in stream:
                job.push(block)
            job.finish()
        except BaseException:
            job.discard()
            raise
    return job.encode()


def separate_files(net: torch.nn.Module, files: Sequence[Path], out_dir: Path, options: OutputOptions | None = None,
                   *, device: torch.device | None = None, progress: bool = True, block_seconds: float = BLOCK_SECONDS,
                   **stream_kw) -> tuple[dict[Path, list[Path]], list[tuple[Path, str]]]:
    """:func:`separate_file` for every file, pipelined: a reader thread decodes blocks (of the current file, then
    the next) into a short queue while the network separates, and a writer thread encodes one file's stems while
    the next file is separated, so the network waits for neither; memory holds a few blocks, one file's streaming
    state and nothing that grows with the tracks. A file that fails at any stage is logged and skipped (its decoding
    stopped, its spools removed). Returns ``({input: written paths}, [(input, error)])``."""
    import queue
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    options = options or OutputOptions()
    written: dict[Path, list[Path]] = {}
    failed: list[tuple[Path, str]] = []
    blocks: queue.Queue = queue.Queue(maxsize=4)
    cancelled: set[Path] = set()
    stop = threading.Event()

    def read() -> None:
        for path in files:
            try:
                with open_audio(path, block_seconds) as stream:
                    blocks.put(("start", path, stream))
                    for block in stream:
                        if path in cancelled or stop.is_set():
                            break
                        blocks.put(("block", path, block))
                blocks.put(("end", path, None))
            except Exception as err:  # noqa: BLE001 -- reported by the main thread, the next file goes on
                blocks.put(("error", path, err))
            if stop.is_set():
                return
        blocks.put(("done", None, None))

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

    reader = threading.Thread(target=read, name="mss-decode", daemon=True)
    job: FileSeparation | None = None
    pending = None
    files_bar = tqdm(total=len(files), desc="files", unit="file", disable=not progress or len(files) < 2)
    bar = None
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="mss-encode") as writer:
            reader.start()
            while True:
                kind, path, payload = blocks.get()
                if kind == "done":
                    break
                try:
                    if kind == "start":
                        seconds = payload.frames / payload.rate if payload.frames else None
                        bar = tqdm(total=seconds, desc=path.name, unit="s", disable=not progress, leave=False)
                        job = FileSeparation(net, path, payload.rate, payload.channels, out_dir, options,
                                             device=device, **stream_kw)
                    elif kind == "block" and job is not None:
                        job.push(payload)
                        bar.update(payload.shape[-1] / job.rate)
                    elif kind == "end" and job is not None:
                        job.finish()
                        if pending is not None:
                            finish(pending)  # the previous file's stems are on disk before the next encode starts
                        pending, job = (path, writer.submit(job.encode)), None
                    elif kind == "error":
                        raise payload
                except Exception as err:  # noqa: BLE001 -- one bad file must not stop the others
                    cancelled.add(path)
                    if job is not None:
                        job.discard()
                        job = None
                    fail(path, err)
                if kind in ("end", "error"):
                    files_bar.update(1)
                    if bar is not None:
                        bar.close()
                        bar = None
            if pending is not None:
                finish(pending)
    finally:
        stop.set()
        if job is not None:
            job.discard()
        files_bar.close()
        while reader.is_alive():  # let the reader see `stop` rather than wait on a full queue
            try:
                blocks.get(timeout=0.1)
            except queue.Empty:
                pass
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
