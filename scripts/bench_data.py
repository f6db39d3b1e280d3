"""Benchmark the training data pipeline: segments/s (and per worker core) of mss's loader with and without repitch
on 1 and 2 workers, against a naive decode-on-the-fly baseline built on the ``musdb`` package, in the same run; and
the two repitch backends (quality as round-trip error, speed).

    python scripts/bench_data.py                          # synthetic MUSDB-HQ folder generated in a temp dir
    python scripts/bench_data.py --root DIR --batches 20  # an existing MUSDB-HQ-layout folder
    python scripts/bench_data.py --repitch-only --rubberband
    python scripts/bench_data.py --effects-only           # cost per example of each codec / effect transform

Pipelines (batch of ``--batch-size`` examples of 4 stereo stems, ``--segment`` seconds + 1 s shift margin, as
``augment=demucs`` reads them; random excerpts, no remix):

- ``mss``: :class:`mss.data.datamodule.MSSDataModule` as ``conf/data`` builds it (16-bit WAV bytes read with one
  ``pread`` per stem straight into a shared-memory batch, int16 when lossless, i.e. here, in buffers each worker
  reuses once the main process has dropped the batch), repitch off;
- ``mss+repitch``: the same with ``augment=demucs``'s repitch (p=0.2, +-2 semitones, tempo N(0, 5 %) clipped at
  12 %, vocoder backend with its default STFT; ``--rubberband`` adds a row with the Rubber Band backend);
- ``musdb-wav``: ``musdb.DB(is_wav=True)``, per example a random track, ``chunk_start``/``chunk_duration`` and
  ``track.sources[s].audio`` for each source (what a naive musdb training loop does);
- ``musdb-stems``: the same on MUSDB18 ``.stem.mp4`` files (ffmpeg decodes the track for every example).

Throughput = examples delivered per second after one warm-up batch (workers started), main process idle; per core
= divided by the number of workers (each worker is one process with torch threads fixed to 1); per worker
CPU-second = examples / CPU time (user + system; /proc, else psutil) the worker processes used meanwhile, i.e. what a
dedicated core delivers, which stays meaningful when other jobs share the machine. The goal on a training host: >= 200
segments/s per core without repitch, >= 20 with it. Load average is printed: on a shared machine the wall-clock
figures are pessimistic; the CPU-second column and the ratios in the same run are what to read.

Repitch tables: a two-partial tone and synthetic vocals and drums stems, shifted by (pitch, tempo) and back;
round-trip error as waveform SDR and magnitude-spectrogram SNR (phase vocoders do not keep the phase, so the
spectral figure is the meaningful one), and seconds of compute per second of stereo audio; then the CPU time of one
repitched training example (4 stereo stems, segment + 1 s), the figure behind the >= 20 segments/s goal.

Effects table (:mod:`mss.augment.effects`, ``augment=codec_effects``): milliseconds of CPU (this process plus the
ffmpeg children it waited for) and wall time per training example (4 stereo stems of synthetic music, ``--segment``
seconds) of each transform forced on (proba 1: every stem for the per-stem ones), median of ``--effect-runs`` runs with
different seeds; then the mean over 32 seeds of the whole ``codec_effects`` chain at the recipe's probabilities (what
a loader worker spends per example on average). ``--effects`` adds a ``mss+codec_effects`` row to the loader table.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCES = ["drums", "bass", "other", "vocals"]


class MusdbNaive(torch.utils.data.Dataset):
    """Decode-on-the-fly baseline with the musdb package: random track, random chunk, every source read."""

    def __init__(self, root: Path, is_wav: bool, segment: float, n: int):
        import musdb

        self.db = musdb.DB(root=str(root), subsets="train", is_wav=is_wav)
        if not self.db.tracks:
            raise SystemExit(f"{root}: musdb found no training tracks")
        self.segment, self.n = segment, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        track = self.db.tracks[int(torch.randint(len(self.db.tracks), ()))]
        track.chunk_duration = self.segment
        track.chunk_start = float(torch.rand(()) * max(0.0, track.duration - self.segment))
        stems = [torch.from_numpy(track.sources[s].audio.T.copy()).float() for s in SOURCES]
        length = min(x.shape[-1] for x in stems)
        return torch.stack([x[..., :length] for x in stems])


def _collate(items):
    length = min(x.shape[-1] for x in items)
    return torch.stack([x[..., :length] for x in items])


def throughput(loader, batches: int) -> tuple[float, float | None]:
    """(segments per wall-clock second, segments per CPU-second of the worker processes, or None where their CPU
    time is unknown: :func:`mss.platform.process.cpu_seconds`). The second figure is what one dedicated core would
    deliver, and it stays meaningful on a loaded machine where the wall-clock rate depends on what else runs."""
    from mss.platform.process import cpu_seconds

    it = iter(loader)
    next(it)  # warm-up: workers started, files opened
    pids = [w.pid for w in getattr(it, "_workers", [])]

    def cpu():
        if not pids:
            return time.process_time()
        values = [cpu_seconds(p) for p in pids]
        return None if None in values else sum(values)

    cpu0, start, count = cpu(), time.perf_counter(), 0
    for _ in range(batches):
        count += next(it).shape[0]
    wall, cpu1 = time.perf_counter() - start, cpu()
    used = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return count / wall, (count / used if used else None)


def mss_loader(root: Path, workers: int, args, repitch: str | None, effects: bool = False):
    from hydra.utils import instantiate

    from mss.augment.repitch import Repitch
    from mss.data.datamodule import MSSDataModule
    from mss.run import compose

    rp = None if repitch is None else Repitch(proba=0.2, sample_rate=44100, backend=repitch)
    fx = instantiate(compose("train", ["augment=codec_effects", "paths.output_dir=unused"]).effects,
                     _convert_="all") if effects else None
    dm = MSSDataModule(root=str(root), sources=SOURCES, segment=args.segment, segment_margin=1.0,
                       batch_size=args.batch_size, num_workers=workers, samples_per_epoch=10**6,
                       valid_tracks=None, cache_dir=str(root.parent / "cache"), repitch=rp, seed=0, effects=fx)
    dm.setup("fit")
    return dm.train_dataloader()


def naive_loader(root: Path, workers: int, args, is_wav: bool):
    ds = MusdbNaive(root, is_wav, args.segment + 1.0, 10**6)
    return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, num_workers=workers, collate_fn=_collate,
                                       persistent_workers=False)


def repitch_table(seconds: float, rubberband: bool) -> list[str]:
    from mss.audio.spectral import stft
    from mss.audio.vocoder import repitch
    from mss.data.synth import render_track

    sr = 44100
    t = torch.arange(int(seconds * sr)) / sr
    tone = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.2 * torch.sin(2 * math.pi * 660 * t)
    stems = render_track("train", 0, sources=["drums", "vocals"], duration=max(seconds, 4.0), sample_rate=sr, seed=0)
    signals = {"tone": torch.stack([tone, 0.8 * tone])}
    for name in ("vocals", "drums"):
        x = torch.from_numpy(stems[name]).float().T[:, : len(t)]
        signals[name] = x / x.abs().max().clamp_min(1e-9) * 0.5

    def errors(ref, est):
        n, g = min(ref.shape[-1], est.shape[-1]), sr // 4
        r, e = ref[..., g: n - g], est[..., g: n - g]
        sdr = 10 * torch.log10(r.square().sum() / (r - e).square().sum().clamp_min(1e-12))
        R, E = (stft(x, 2048, 512).abs() for x in (r, e))
        snr = 10 * torch.log10(R.square().sum() / (R - E).square().sum().clamp_min(1e-12))
        return float(sdr), float(snr)

    rows = ["| backend | signal | pitch, tempo | round-trip SDR (dB) | round-trip spectral SNR (dB) | s per s of "
            "stereo audio |", "|---|---|---|---|---|---|"]
    backends = [("vocoder", {}), ("vocoder 2048/512", {"hop_length": 512})]
    backends += [("rubberband", {"backend": "rubberband"})] if rubberband else []
    for label, kw in backends:
        for name, x in signals.items():
            for pitch, tempo in ((2, 1.0), (0, 1.1), (-2, 0.9), (1, 1.05)):
                start = time.perf_counter()
                y = repitch(x, pitch, tempo, sr, **kw)
                cost = (time.perf_counter() - start) / (x.shape[-1] / sr)
                back = repitch(y, -pitch, 1 / tempo, sr, **kw)
                sdr, snr = errors(x, back)
                rows.append(f"| {label} | {name} | {pitch:+d} st, x{tempo:g} | {sdr:.1f} | {snr:.1f} | {cost:.3f} |")
    return rows


def repitch_example_cost(segment: float, rubberband: bool) -> list[str]:
    """CPU milliseconds of :class:`mss.augment.repitch.Repitch` on one training example (4 stereo stems of
    ``segment`` + 1 s, what the loader repitches), median over the (pitch, tempo) draws of 8 seeds."""
    from mss.augment.repitch import Repitch

    sr, length = 44100, round((segment + 1.0) * 44100)
    rows = ["| backend | ms CPU per repitched example (median) | ms wall (median) |", "|---|---|---|"]
    for label, kw in [("vocoder", {}), ("vocoder 2048/512", {"hop_length": 512})] + (
            [("rubberband", {"backend": "rubberband"})] if rubberband else []):
        rp = Repitch(proba=1.0, sample_rate=sr, **kw)
        stems = torch.randn(4, 2, rp.input_length(length), generator=torch.Generator().manual_seed(0)) * 0.1
        cpu, wall = [], []
        for seed in range(-1, 8):  # seed -1: warm-up
            change = rp.draw(torch.Generator().manual_seed(max(seed, 0)))
            c, w = time.process_time(), time.perf_counter()
            rp(stems, change, length)
            if seed >= 0:
                cpu.append(time.process_time() - c)
                wall.append(time.perf_counter() - w)
        rows.append(f"| {label} | {1e3 * sorted(cpu)[4]:.0f} | {1e3 * sorted(wall)[4]:.0f} |")
    return rows


def _cpu() -> float:
    """CPU seconds of this process and of its waited-for children (the ffmpeg encoders and decoders)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def effects_cost(segment: float, runs: int) -> list[str]:
    """Per-example cost of each :mod:`mss.augment.effects` transform (forced on) and of the recipe chain."""
    from hydra.utils import instantiate

    from mss.augment import effects as fx
    from mss.data.synth import render_track
    from mss.run import compose

    sr = 44100
    n = round(segment * sr)
    track = render_track("train", 0, sources=SOURCES, duration=segment + 1.0, sample_rate=sr, seed=0)
    stems = torch.stack([torch.from_numpy(track[s]).float().T[:, :n].contiguous() for s in SOURCES])
    other = render_track("train", 1, sources=SOURCES, duration=segment + 1.0, sample_rate=sr, seed=0)

    def reader(name):  # an in-memory excerpt: the row counts the mixing, not the dataset's extra file read
        return torch.from_numpy(other[name]).float().T[:, :n].contiguous()

    rows = [f"| transform (forced on) | ms CPU per example (median of {runs}) | ms wall (median) |", "|---|---|---|"]
    cases = [
        ("Codec mixture, mp3 128 kbit/s", fx.Codec(1.0, codecs=["mp3"], bitrates=[128])),
        ("Codec mixture, mp3 64 kbit/s", fx.Codec(1.0, codecs=["mp3"], bitrates=[64])),
        ("Codec mixture, aac 128 kbit/s", fx.Codec(1.0, codecs=["aac"], bitrates=[128])),
        ("Codec mixture, mp3_vbr q 5 (pedalboard, in process)", fx.Codec(1.0, codecs=["mp3_vbr"], vbr_quality=(5, 5))),
        ("Codec stems (4), mp3 128 kbit/s", fx.Codec(1.0, codecs=["mp3"], bitrates=[128], target="stems")),
        ("Codec stems (4), aac 128 kbit/s", fx.Codec(1.0, codecs=["aac"], bitrates=[128], target="stems")),
        ("Codec stems (4), mp3_vbr q 5", fx.Codec(1.0, codecs=["mp3_vbr"], vbr_quality=(5, 5), target="stems")),
        ("Lowpass (4 stems, Butterworth 8 zero-phase)", fx.Lowpass(1.0)),
        ("Equalizer (4 stems, 3 peaks)", fx.Equalizer(1.0)),
        ("Reverb (4 stems)", fx.Reverb(1.0)),
        ("Chorus (4 stems)", fx.Chorus(1.0)),
        ("Distortion (4 stems)", fx.Distortion(1.0)),
        ("Loudness, mixture (BS.1770)", fx.Loudness(1.0)),
        ("Loudness, each stem", fx.Loudness(1.0, target="stems")),
        ("SourceMixup (4 stems, in-memory excerpt)", fx.SourceMixup(1.0)),
    ]
    for label, t in cases:
        cpu, wall = [], []
        for seed in range(-1, runs):  # seed -1: warm-up (imports, first ffmpeg start)
            c, w = _cpu(), time.perf_counter()
            t(stems, SOURCES, torch.Generator().manual_seed(max(seed, 0)), reader)
            if seed >= 0:
                cpu.append(_cpu() - c)
                wall.append(time.perf_counter() - w)
        rows.append(f"| {label} | {1e3 * sorted(cpu)[runs // 2]:.0f} | {1e3 * sorted(wall)[runs // 2]:.0f} |")
    cfg = compose("train", ["augment=codec_effects", "paths.output_dir=unused"])
    chain = instantiate(cfg.effects, _convert_="all")
    cpu, wall = [], []
    for seed in range(32):
        c, w = _cpu(), time.perf_counter()
        chain(stems, torch.Generator().manual_seed(seed), reader)
        cpu.append(_cpu() - c)
        wall.append(time.perf_counter() - w)
    rows.append(f"| augment=codec_effects chain at its probabilities (mean of 32 seeds) | {1e3 * sum(cpu) / 32:.0f} | "
                f"{1e3 * sum(wall) / 32:.0f} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, help="MUSDB-HQ-layout folder (default: generate a synthetic one)")
    p.add_argument("--tracks", type=int, default=6)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--segment", type=float, default=7.8, help="training seconds (1 s shift margin is added)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rubberband", action="store_true", help="also time the Rubber Band repitch backend")
    p.add_argument("--no-musdb-stems", action="store_true")
    p.add_argument("--no-naive", action="store_true", help="only the mss rows (e.g. with many --batches)")
    p.add_argument("--repitch-only", action="store_true", help="only the repitch backend table")
    p.add_argument("--effects-only", action="store_true", help="only the codec / effect cost table")
    p.add_argument("--effects", action="store_true", help="also a loader row with augment=codec_effects' effects")
    p.add_argument("--effect-runs", type=int, default=7, help="runs (seeds) per effect row; the median is shown")
    args = p.parse_args()
    torch.set_num_threads(1)
    if args.repitch_only:
        print("\n".join(repitch_table(3.0, args.rubberband)))
        print("\n" + "\n".join(repitch_example_cost(args.segment, args.rubberband)))
        return
    if args.effects_only:
        load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"
        print(f"# effects on 4 stereo stems of {args.segment:g} s at 44.1 kHz; load average {load} on "
              f"{os.cpu_count()} cores")
        print("\n".join(effects_cost(args.segment, args.effect_runs)))
        return
    from mss.data.synth import generate

    tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
    root = args.root or generate(Path(tmp.name) / "synth", n_train=args.tracks, n_valid=0, n_test=0,
                                 duration=args.duration, seed=0, stems_mp4=not args.no_musdb_stems)
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "n/a"  # no load average on Windows
    print(f"# data: {root} ({args.tracks} tracks x {args.duration:g} s), batch {args.batch_size}, segment "
          f"{args.segment:g} s + 1 s margin, {args.batches} timed batches; load average {load} on "
          f"{os.cpu_count()} cores")
    pipelines = [("mss", lambda w: mss_loader(root, w, args, None)),
                 ("mss+repitch (vocoder)", lambda w: mss_loader(root, w, args, "vocoder"))]
    if args.rubberband:
        pipelines.append(("mss+repitch (rubberband)", lambda w: mss_loader(root, w, args, "rubberband")))
    if args.effects:
        pipelines.append(("mss+codec_effects", lambda w: mss_loader(root, w, args, None, effects=True)))
    if not args.no_naive:
        pipelines.append(("musdb-wav (naive)", lambda w: naive_loader(root, w, args, True)))
    if (root / "stems").is_dir() and not args.no_musdb_stems and not args.no_naive:
        pipelines.append(("musdb-stems (naive, ffmpeg)", lambda w: naive_loader(root / "stems", w, args, False)))
    results: dict[tuple[str, int], tuple[float, float | None]] = {}
    print("\n| pipeline | workers | segments/s | per core (wall / workers) | per worker CPU-second | vs musdb-wav "
          "(same workers, wall) |\n|---|---|---|---|---|---|")
    for name, make in pipelines:
        for w in args.workers:
            results[name, w] = throughput(make(w), args.batches)
    for name, _ in pipelines:
        for w in args.workers:
            (v, per_cpu), base = results[name, w], results.get(("musdb-wav (naive)", w))
            cpu_text = f"{per_cpu:.1f}" if per_cpu else "n/a"
            ratio = f"{v / base[0]:.2f}x" if base else "n/a"
            print(f"| {name} | {w} | {v:.1f} | {v / max(w, 1):.1f} | {cpu_text} | {ratio} |")
    print("\n" + "\n".join(repitch_table(3.0, args.rubberband)))
    print("\n" + "\n".join(repitch_example_cost(args.segment, args.rubberband)))
    if args.effects:
        print("\n" + "\n".join(effects_cost(args.segment, args.effect_runs)))
    tmp.cleanup()


if __name__ == "__main__":
    main()
