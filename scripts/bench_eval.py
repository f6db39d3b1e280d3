"""Benchmark BSS Eval v4: museval 0.4.1 vs mss (all four metrics, and SDR only), time, peak memory and agreement.

    python scripts/bench_eval.py [--lengths 30 180] [--threads 2] [--device cpu|cuda] [--repeat 3]
                                 [--museval-repeat 1] [--skip-museval] [--load N] [--plain]
                                 [--panned identical|scaled]

Signals: 4 stereo sources, 44.1 kHz, band-limited amplitude-modulated noise at RMS 0.1 quantised to 16 bit with TPDF
dither (like MUSDB), vocals digitally silent from 2 to 5 s; float32 estimates = source + 0.1·(other sources) + noise at
-26 dB, filtered by [0.9, 0.1]. Each measurement runs in its own subprocess (threads fixed with
``torch.set_num_threads`` / ``OMP_NUM_THREADS``); peak memory is the child's peak RSS during the evaluation
(``VmHWM``, restarted after imports and loading the signals, whose transient copies would otherwise count;
``PeakMemory`` of ``scripts/_memory.py``, which says n/a where the platform cannot restart it) and its increase
over the RSS at that point. mss is timed ``--repeat``
times and museval ``--museval-repeat`` times (fresh processes; the median time and the largest peak are reported:
on a shared VM single runs scatter by +-25 %, museval's as much as ours); all signals are generated first and
museval runs last (a process started right after another freed GBs starts measurably slower here). Prints one
table with ratios against museval (same machine, same run) and the max |Δ| of every metric against museval.

Contention: ``--load N`` starts N busy processes (``while True: pass``, each ending by itself after ``--load-seconds``
and killed when the benchmark ends) before the first measurement, so that every run shares the cores with them; the
load average is printed before they start. A second table gives each method's CPU seconds (user / system, medians;
``resource.getrusage`` of the evaluation). ``--plain`` also times mss with ``MSS_DISABLE_FAST_PATHS=threads`` (every
core, the OpenMP runtime's default spinning wait: the behaviour before :mod:`mss.platform.threads`). The mss worker
imports ``mss`` before ``torch`` (as ``python -m mss.evaluate`` does), so passive waiting is in effect.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SR = 44100


PANNED = {"identical": (0.0, 0.0), "scaled": (-0.2, 0.3)}  # pans of (vocals, bass-ish) for --panned


def make_signals(seconds: float, seed: int = 0, panned: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(refs (4, T, 2) float64 on the 16-bit grid, ests (4, T, 2) float32)``; ``panned``: sources 0 and 1 are mono
    signals panned to stereo (constant power, :data:`PANNED`): ``"identical"`` centred, both channels bit-identical;
    ``"scaled"`` scaled copies, each channel rounded to 16 bit on its own."""
    from scipy.signal import butter, lfilter, sosfilt

    from mss.data.synth.instruments import pan_mono

    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    refs = np.empty((4, n, 2))
    for j, (lo, hi) in enumerate(((150, 3500), (30, 250), (200, 8000), (2000, 16000))):  # vocals, bass-ish, ...
        sos = butter(4, [lo, hi], btype="band", fs=SR, output="sos")
        x = sosfilt(sos, rng.standard_normal((n, 2)), axis=0) * (1 + 0.6 * np.sin(2 * np.pi * (0.3 + 0.7 * j) * t))[
            :, None]
        if panned and j < 2:
            x = pan_mono(x[:, 0], PANNED[panned][j])
        refs[j] = 0.1 * x / np.sqrt(np.mean(x**2))
    dither = rng.uniform(-0.5, 0.5, refs.shape) + rng.uniform(-0.5, 0.5, refs.shape)
    if panned == "identical":  # one rounding for both channels
        dither[:2, :, 1] = dither[:2, :, 0]
    refs = np.round(refs * 32768 + dither) / 32768
    refs[0, 2 * SR:5 * SR] = 0.0
    ests = refs + 0.1 * (refs.sum(0, keepdims=True) - refs) + 0.1 * 10 ** (-26 / 20) * rng.standard_normal(refs.shape)
    return refs, lfilter([0.9, 0.1], [1.0], ests, axis=1).astype(np.float32)


def _mb(nbytes: int | None) -> float:
    return float("nan") if nbytes is None else nbytes / 2**20


def worker(method: str, folder: Path, threads: int, device: str) -> None:
    """Run one measurement in this (fresh) process; print a JSON line."""
    refs, ests = np.load(folder / "refs.npy"), np.load(folder / "ests.npy")
    if method == "museval":
        import museval

        evaluate = museval.evaluate
    else:
        # isort: off
        import mss  # noqa: F401  (before torch, as in python -m mss.evaluate: sets the OpenMP wait policy)
        import torch
        # isort: on

        from mss.metrics import bss_eval_v4

        torch.set_num_threads(threads)

        def evaluate(r, e):
            out = bss_eval_v4(r, e, device=device, sdr_only=method.startswith("mss-sdr"))
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return [m.cpu().numpy() for m in out]

        if device.startswith("cuda"):  # warm-up (CUDA context, cuFFT plans) outside the timing
            evaluate(refs[:, :SR * 3], ests[:, :SR * 3])
    from scripts._memory import PeakMemory

    with PeakMemory("cpu") as mem:  # restarts the peak count: loading the signals does not count
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        result = evaluate(refs, ests)
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
    increase = _mb(mem.peak)  # NaN where the platform cannot tell (see scripts/_memory.py)
    peak = _mb(mem.base) + increase
    np.save(folder / f"{method}.npy", np.stack([np.asarray(m, dtype=np.float64) for m in result]))
    print(json.dumps({"time": seconds, "peak": peak, "increase": increase, "user": after.ru_utime - before.ru_utime,
                      "sys": after.ru_stime - before.ru_stime}))


def run_child(method: str, folder: Path, threads: int, device: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads)}
    if method.endswith("-plain"):  # the behaviour without mss.platform.threads
        env["MSS_DISABLE_FAST_PATHS"] = "threads"
        for key in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME"):
            env.pop(key, None)
    proc = subprocess.run([sys.executable, __file__, "--worker", method.removesuffix("-plain"), str(folder),
                           "--threads", str(threads),
                           "--device", device], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(method: str, folder: Path, threads: int, device: str, repeat: int) -> dict:
    """``repeat`` fresh-process runs: the median time, the largest peak and every run's time."""
    runs = sorted((run_child(method, folder, threads, device) for _ in range(max(1, repeat))), key=lambda r: r["time"])
    median = statistics.median
    return {**runs[len(runs) // 2], "peak": max(r["peak"] for r in runs),
            "increase": max(r["increase"] for r in runs), "times": [round(r["time"], 3) for r in runs],
            "user": median(r["user"] for r in runs), "sys": median(r["sys"] for r in runs)}


BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def busy_processes(n: int, seconds: float):
    """``n`` processes spinning on one core each, for at most ``seconds`` (they end by themselves; killed on exit)."""
    procs = [subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=float(seconds))]) for _ in range(n)]
    try:
        if procs:
            time.sleep(1.0)  # let them get going
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()


def max_delta(a: np.ndarray, b: np.ndarray) -> tuple[float, bool]:
    same_nan = bool(np.array_equal(np.isnan(a), np.isnan(b)))
    ok = np.isfinite(a) & np.isfinite(b)
    return (float(np.abs(a[ok] - b[ok]).max()) if ok.any() else 0.0), same_nan


def bench_statistics(repeat: int, tracks: int = 50, methods: int = 10, resamples: int = 10_000) -> None:
    """Time :func:`mss.report.statistics.summary` and :func:`~mss.report.statistics.paired` (BCa, ``resamples``) on
    per-track scores of ``methods`` x ``tracks`` x 4 sources, against the same intervals from one
    ``scipy.stats.bootstrap`` call per sample (the reference, timed once), in this process."""
    import pandas as pd
    from scipy import stats as sps

    from mss.report.statistics import _median, paired, summary

    rng = np.random.default_rng(0)
    sources = ["drums", "bass", "other", "vocals"]
    rows = [{"method": f"m{m}", "track": f"t{t}", "target": s, "metric": "SDR", "score": 5 + 0.1 * m + rng.normal()}
            for m in range(methods) for t in range(tracks) for s in sources]
    per_track = pd.DataFrame(rows)
    times = {"summary": [], "paired": []}
    for _ in range(repeat):
        for name, fn in (("summary", summary), ("paired", paired)):
            start = time.perf_counter()
            table = fn(per_track, resamples=resamples)
            times[name].append(time.perf_counter() - start)
    wide = per_track.pivot_table(index=["method", "track"], columns="target", values="score")
    wide["mean"] = wide.mean(axis=1)
    samples = [wide.loc[m][s].to_numpy() for m in dict.fromkeys(wide.index.get_level_values(0)) for s in wide]
    samples += [wide.loc[a][s].to_numpy() - wide.loc[b][s].to_numpy()
                for a, b in itertools.combinations(dict.fromkeys(wide.index.get_level_values(0)), 2) for s in wide]
    start = time.perf_counter()
    for x in samples:
        sps.bootstrap((np.sort(x),), _median, n_resamples=resamples, vectorized=True, method="BCa",
                      rng=np.random.default_rng(0))
    reference = time.perf_counter() - start
    ours = statistics.median(times["summary"]) + statistics.median(times["paired"])
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"\n{tracks} tracks x {methods} methods x (4 sources + mean), BCa, {resamples} resamples; load average "
          f"{load} ({os.cpu_count()} cores); mss: median of {repeat} runs\n")
    print("| part | mss | scipy.stats.bootstrap per sample | ratio |\n|---|---|---|---|")
    print(f"| summary ({methods * 5} intervals) | {statistics.median(times['summary']):.3f} s | | |")
    print(f"| paired ({len(table)} intervals + Wilcoxon + Holm) | {statistics.median(times['paired']):.3f} s | | |")
    print(f"| total | {ours:.3f} s | {reference:.2f} s | {reference / ours:.0f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=float, nargs="+", default=[30.0, 180.0], help="track lengths, seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="device for mss (cpu, cuda)")
    parser.add_argument("--skip-museval", action="store_true", help="only time mss")
    parser.add_argument("--cache", type=Path, default=None, help="keep signals/results here (reuse museval runs)")
    parser.add_argument("--repeat", type=int, default=3, help="fresh-process runs of each mss measurement (median)")
    parser.add_argument("--museval-repeat", type=int, default=1, help="fresh-process runs of museval (median)")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="run N busy processes (one core each) during every measurement")
    parser.add_argument("--load-seconds", type=float, default=1800.0,
                        help="the busy processes end by themselves after this long")
    parser.add_argument("--plain", action="store_true",
                        help="also time mss with MSS_DISABLE_FAST_PATHS=threads (no thread budget, spinning waits)")
    parser.add_argument("--statistics", action="store_true",
                        help="only time mss.report.statistics (summary + paired) on 50 tracks x 10 methods")
    parser.add_argument("--panned", choices=sorted(PANNED), default=None,
                        help="vocals and the bass-ish source are panned mono: bit-identical or scaled-copy channels")
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.statistics:
        bench_statistics(args.repeat)
        return
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), args.threads, args.device)
        return
    root = args.cache or Path(tempfile.mkdtemp(prefix="bench_eval_"))
    rows, agreement = [], []
    folders = {}
    for seconds in args.lengths:  # every signal first, every mss run next, museval last: a process started right
        # after another freed GBs (signal generation, museval) starts measurably slower
        folder = root / f"{seconds:g}s{'-' + args.panned if args.panned else ''}"
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "refs.npy").is_file():
            refs, ests = make_signals(seconds, panned=args.panned)
            np.save(folder / "refs.npy", refs)
            np.save(folder / "ests.npy", ests)
            del refs, ests
        folders[seconds] = folder
    methods = ("mss", "mss-sdr") + (("mss-plain",) if args.plain else ())
    load_before = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"load average before: {load_before} ({os.cpu_count()} cores); {args.load} busy process(es) started",
          flush=True)
    with busy_processes(args.load, args.load_seconds):
        for seconds, folder in folders.items():
            rows.append((seconds, {method: measure(method, folder, args.threads, args.device, args.repeat)
                                   for method in methods}))
        for seconds, res in rows:
            folder = folders[seconds]
            cached = folder / ("museval.json" if not args.load else f"museval-load{args.load}.json")
            if not args.skip_museval:
                if cached.is_file() and (folder / "museval.npy").is_file():
                    res["museval"] = json.loads(cached.read_text())
                else:
                    res["museval"] = measure("museval", folder, args.threads, "cpu", args.museval_repeat)
                    cached.write_text(json.dumps(res["museval"]))
                ref = np.load(folder / "museval.npy")
                ours = np.load(folder / "mss.npy")
                sdr_only = np.load(folder / "mss-sdr.npy")
                deltas = [max_delta(ref[k], ours[k]) for k in range(4)] + [max_delta(ref[0], sdr_only[0])]
                agreement.append((seconds, deltas))
            print(f"done {seconds:g} s: " + ", ".join(f"{k} {v['time']:.2f} s (runs: {v.get('times', '?')})"
                                                        for k, v in res.items()), flush=True)

    print(f"\nBSS Eval v4, 4 stereo sources, 44.1 kHz, 16-bit references"
          f"{f' (vocals, bass panned mono: {args.panned})' if args.panned else ''}; {args.threads} threads; mss on "
          f"{args.device}; {args.load} busy process(es); load average before {load_before}\n")
    head = ("| track | museval time | museval peak RSS (+Δ) | mss all-four time | mss peak RSS (+Δ) "
            "| mss SDR-only time | speed-up all-four | speed-up SDR-only | memory ratio (Δ) |")
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for seconds, res in rows:
        m, a, s = res.get("museval"), res["mss"], res["mss-sdr"]

        def mem(r):
            return f"{r['peak']:.0f} MB (+{r['increase']:.0f})"

        if m:
            print(f"| {seconds:g} s | {m['time']:.2f} s | {mem(m)} | {a['time']:.2f} s | {mem(a)} | {s['time']:.3f} s "
                  f"| {m['time'] / a['time']:.1f}× | {m['time'] / s['time']:.0f}× | "
                  f"{a['increase'] / max(m['increase'], 1):.2f} |")
        else:
            print(f"| {seconds:g} s | – | – | {a['time']:.2f} s | {mem(a)} | {s['time']:.3f} s | – | – | – |")
    if agreement:
        print("\nmax |Δ| vs museval per frame (dB), identical NaN pattern:\n")
        print("| track | SDR | ISR | SIR | SAR | SDR (SDR-only path) |")
        print("|---|---|---|---|---|---|")
        for seconds, deltas in agreement:
            print(f"| {seconds:g} s | " + " | ".join(f"{d:.1e} ({'yes' if same else 'NO'})" for d, same in deltas)
                  + " |")

    print("\nwall time and CPU seconds (user / system) of the evaluation, medians:\n")
    names = ["museval"] * (not args.skip_museval) + list(methods)
    print("| track | " + " | ".join(f"{n} wall | {n} CPU" for n in names) + " | museval / mss all-four |"
          + (" museval / mss plain |" if args.plain else ""))
    print("|---" * (2 * len(names) + 1 + args.plain + 1) + "|")
    for seconds, res in rows:
        cells = [f"{res[n]['time']:.2f} s | {res[n]['user']:.2f} / {res[n]['sys']:.2f} s" for n in names]
        m = res.get("museval")
        ratios = [f"{m['time'] / res['mss']['time']:.1f}×" if m else "–"]
        if args.plain:
            ratios.append(f"{m['time'] / res['mss-plain']['time']:.1f}×" if m else "–")
        print(f"| {seconds:g} s | " + " | ".join(cells + ratios) + " |")


if __name__ == "__main__":
    main()
