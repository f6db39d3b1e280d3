"""Benchmark separating one track: mss vs the reference packages (demucs 4.0.1, openunmix 1.3.0), same weights.

    python scripts/bench_separate.py [--seconds 60] [--repeat 3] [--threads 2] [--load N [N ...]]
                                     [--cases htdemucs,umx,unet2,unet4] [--skip compile,bf16,onnx,chunks]
                                     [--quick] [--tiny] [--json OUT.json]

Track: ``--seconds`` of stereo 44.1 kHz audio, the sum of the four band-limited amplitude-modulated noise sources of
``scripts/bench_eval.py`` (RMS 0.1 each, 16-bit). Models (random weights: the reference model is built at the
released configuration with its own random initialisation, seed 0, and converted with the mss importer, so both
sides run the same weights):

* ``htdemucs``: the released ``htdemucs`` configuration (``dconv_mode=3``, ``bottom_channels=512``, 7.8 s segment),
  saved in the reference export format and converted by :mod:`mss.pretrained.import_demucs`. Reference:
  ``demucs.apply.apply_model`` with its defaults (``shifts=1``, ``split=True``, ``overlap=0.25``, the model's
  segment). mss: :func:`mss.inference.overlap_add.apply_model` with ``shifts=1``, ``overlap=0.25`` (its ``batch_size``
  4), eager, ``compile=True``, ``precision="bf16"`` (CPU autocast) and ONNX (exported with the real-valued STFT by
  :func:`mss.inference.export.export_onnx`; a refusal's reason is printed). The reference draws its shift with
  Python's ``random``; here it is set to the offset mss draws (``torch.manual_seed(0)``), so both cut the same chunks.
  What still differs: the reference cuts chunks every stride while the start is inside the (shifted) track, mss only
  until the track is covered, and the reference pads a chunk that runs past the end with the samples *before* it
  (centred), mss with zeros after it. So the two agree exactly up to the start of the last mss chunk (``max|Δ| same
  chunks``) and differ after it (``max|Δ|`` over the whole track).
* ``umx``: Open-Unmix ``umxhq`` (4 targets, hidden 512, 3 BiLSTM layers, 16 kHz bandwidth, Wiener EM 1 iteration in
  300-frame windows), target state dicts converted by :mod:`mss.pretrained.import_umx`. Reference:
  ``openunmix.model.Separator`` on the whole track (it does not chunk). mss: ``apply_model`` with one chunk of the
  whole track (``segment`` = track length, ``batch_size=1``: the reference's segmenting), eager / compile / bf16, and
  ``chunks``: mss's default 10 s chunks with ``overlap=0.25`` (what ``mss.separate`` does; differs from the reference
  at the chunk borders).
* ``unet2`` / ``unet4``: the Spleeter U-Net, ``conf/model/unet_2stems.yaml`` / ``unet.yaml`` (mss only, no reference
  runs here): ``apply_model`` defaults (its 512-frame segment, ``overlap=0.25``). Goal: >= 20x real time on 2 cores.

``precision=bf16`` on a CPU without bf16 units (no ``avx512_bf16`` / AMX) runs slow fallback kernels: one 7.8 s
HT Demucs chunk took more than 400 s on the 2-core VM (fp32: 4.7 s), so ``--skip htdemucs:bf16`` there.

``--tiny``: small versions of the same models (for ``tests/test_bench_separate.py``, not figures to quote).
``--quick``: 4 s of audio (unless ``--seconds``) and 1 repeat.

Each measurement runs in its own subprocess with ``--threads`` fixed (``torch.set_num_threads``,
``OMP_NUM_THREADS``). The mss worker imports ``mss`` before ``torch`` (as ``python -m mss.separate`` does: passive
OpenMP waiting, :mod:`mss.platform.threads`); the reference worker (``ref``) imports ``torch`` first and runs
without mss's OpenMP settings, as a user of the reference package would; ``ref-passive`` is the same reference run
with ``OMP_WAIT_POLICY=PASSIVE KMP_BLOCKTIME=0`` (mss's environment), which separates the effect of the waiting
policy (large when other processes hold the cores: libgomp's spinning workers) from that of the code. The separation
call is timed (``wall s``: median of ``--repeat`` fresh processes, the repeats interleaved across methods so that
load changes hit them alike); loading the model and the track is not. ``compile`` runs ``--compile-repeat`` times
(default 1: each fresh process compiles again). ``first call s``: for ``compile`` the call made before the timed
one, which compiles (the same chunk shape; for ``umx`` it is a whole separation plus compiling); the timed call
reuses the compiled network, as ``mss.separate`` does for every file after the first. ``peak RSS MB``: the worker's
resident set at its peak during the timed call (``PeakMemory`` of ``scripts/_memory.py``; the largest over the
repeats). ``real-time x`` = audio seconds / wall seconds; ``ratio`` = reference wall / wall (> 1: faster than the
reference).

Contention: ``--load N`` starts N busy processes (one core each, as ``scripts/bench_eval.py``) before the
measurements; several values (``--load 0 1``) measure everything at each level and add a table of how each method's
wall time grows with the load. The load average is printed before each level.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.bench_eval import busy_processes, make_signals  # noqa: E402

SR = 44100
SEED = 0  # torch seed of the shift draw (mss); the reference is given the same offset
SOURCES = ["drums", "bass", "other", "vocals"]  # the released htdemucs / umxhq order
CASES = ("htdemucs", "umx", "unet2", "unet4")
METHODS = {"htdemucs": ("ref", "ref-passive", "mss", "compile", "bf16", "onnx"),
           "umx": ("ref", "ref-passive", "mss", "compile", "bf16", "chunks"),
           "unet2": ("mss",), "unet4": ("mss",)}
LABELS = {"htdemucs": "HT Demucs (released htdemucs config)", "umx": "Open-Unmix (umxhq config)",
          "unet2": "Spleeter U-Net 2 stems", "unet4": "Spleeter U-Net 4 stems"}
METHOD_LABELS = {("htdemucs", "ref"): "demucs.apply.apply_model (reference)",
                 ("umx", "ref"): "openunmix Separator (reference)",
                 "ref-passive": "the reference, passive OpenMP waiting", "mss": "mss eager",
                 "compile": "mss compile=true", "bf16": "mss precision=bf16", "onnx": "mss ONNX (onnxruntime)",
                 "chunks": "mss eager, 10 s chunks (mss.separate default)"}
SKIPPABLE = ("ref-passive", "compile", "bf16", "onnx", "chunks")
WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}  # what `import mss` sets (mss.platform.threads)


# ---------------------------------------------------------------- preparation (own subprocess)

def _reference(module: str):
    from tests._reference import import_reference  # the torchaudio placeholder

    return import_reference(module)


def prepare(folder: Path, seconds: float, cases: list[str], tiny: bool) -> None:
    """Write the track (``mix.npy``, ``(C, T)`` float32), the reference weights and the converted mss checkpoints, and
    ``meta.json`` (per case: sources, segment length, shift offset)."""
    # isort: off
    import mss  # noqa: F401  (before torch: passive OpenMP waiting)
    import torch
    # isort: on

    from mss.checkpoint import build_model, save_checkpoint
    from mss.inference.overlap_add import DEFAULT_MAX_SHIFT

    refs, _ = make_signals(seconds)
    np.save(folder / "mix.npy", np.ascontiguousarray(refs.sum(0).T, dtype=np.float32))
    del refs
    meta: dict = {"seconds": seconds, "tiny": tiny}
    if "htdemucs" in cases:
        from fractions import Fraction

        from omegaconf import OmegaConf

        from mss import load_model
        from mss.pretrained.import_demucs import convert

        torch.manual_seed(0)
        ht = _reference("demucs.htdemucs")
        if tiny:
            ref = ht.HTDemucs(sources=SOURCES, channels=8, nfft=1024, t_layers=1, segment=Fraction(1, 2))
        else:
            ref = ht.HTDemucs(sources=SOURCES, dconv_mode=3, bottom_channels=512, t_dropout=0.02,
                              segment=Fraction(39, 5))
        package = _reference("demucs.states").serialize_model(ref, OmegaConf.create({"seed": 42}), half=False)
        torch.save(package, folder / "htdemucs.th")
        convert(folder / "htdemucs.th", folder / "htdemucs.ckpt")
        net = load_model(folder / "htdemucs.ckpt")
        max_shift = net.sample_rate // 2 if net.sample_rate else DEFAULT_MAX_SHIFT
        offset = int(torch.randint(0, max_shift, (1,), generator=torch.Generator().manual_seed(SEED)))
        meta["htdemucs"] = {"sources": list(net.sources), "segment": int(net.segment_length), "max_shift": max_shift,
                            "offset": offset, "params": sum(p.numel() for p in net.parameters())}
        del ref, package, net
    if "umx" in cases:
        from mss.pretrained.import_umx import main as import_umx

        umx = _reference("openunmix.model")
        sizes = (dict(n_fft=512, hop=128, hidden_size=16, nb_layers=1, max_bin=64) if tiny else
                 dict(n_fft=4096, hop=1024, hidden_size=512, nb_layers=3, max_bin=1487))  # max_bin: 16 kHz
        root = folder / "umx"
        root.mkdir(exist_ok=True)
        torch.manual_seed(0)
        for name in SOURCES:
            target = umx.OpenUnmix(nb_bins=sizes["n_fft"] // 2 + 1, nb_channels=2, hidden_size=sizes["hidden_size"],
                                   nb_layers=sizes["nb_layers"], max_bin=sizes["max_bin"])
            torch.save(target.state_dict(), root / f"{name}.pth")
        (root / "separator.json").write_text(json.dumps({"nfft": sizes["n_fft"], "nhop": sizes["hop"],
                                                         "sample_rate": SR}))
        import_umx([str(root), f"out={folder / 'umx.ckpt'}"])
        from mss import load_model

        net = load_model(folder / "umx.ckpt")
        meta["umx"] = {**sizes, "sources": list(net.sources), "segment": int(net.segment_length),
                       "params": sum(p.numel() for p in net.parameters())}
        del net
    for case, model, sources in (("unet2", "unet_2stems", None), ("unet4", "unet", "[vocals,drums,bass,other]")):
        if case not in cases:
            continue
        from omegaconf import OmegaConf

        from mss.run import compose

        overrides = [f"model={model}", "paths.output_dir=unused", "data.channels=2", f"data.sample_rate={SR}"]
        if sources:
            overrides.append(f"data.sources={sources}")
        if tiny:
            overrides += ["model.n_fft=512", "model.hop_length=128", "model.freq_bins=64", "model.frames=64",
                          "model.filters=[2,4,4,8,8,8]"]
        config = OmegaConf.to_container(compose("train", overrides).model, resolve=True)
        torch.manual_seed(0)
        net = build_model(config).eval()
        save_checkpoint(folder / f"{case}.ckpt", net, config)
        meta[case] = {"sources": list(net.sources), "segment": int(net.segment_length),
                      "params": sum(p.numel() for p in net.parameters())}
    (folder / "meta.json").write_text(json.dumps(meta))


# ---------------------------------------------------------------- one measurement (own subprocess)

def _reference_runner(case: str, folder: Path, meta: dict):
    import torch

    if case == "htdemucs":
        import types

        apply = _reference("demucs.apply")
        package = torch.load(folder / "htdemucs.th", map_location="cpu", weights_only=False)  # written by prepare
        model = _reference("demucs.states").load_model(package).eval()
        offset = meta["offset"]
        apply.random = types.SimpleNamespace(randint=lambda a, b: offset)  # the shift mss draws (same chunks)
        return lambda mix: apply.apply_model(model, mix[None], shifts=1, split=True, overlap=0.25)[0]
    umx = _reference("openunmix.model")
    targets = {}
    for name in meta["sources"]:  # the mss output's order
        targets[name] = umx.OpenUnmix(nb_bins=meta["n_fft"] // 2 + 1, nb_channels=2, hidden_size=meta["hidden_size"],
                                      nb_layers=meta["nb_layers"], max_bin=meta["max_bin"])
        targets[name].load_state_dict(torch.load(folder / "umx" / f"{name}.pth", weights_only=True))
    separator = umx.Separator(targets, niter=1, residual=False, sample_rate=SR, n_fft=meta["n_fft"],
                              n_hop=meta["hop"], nb_channels=2, wiener_win_len=300).eval()

    def run(mix):
        with torch.no_grad():
            return separator(mix[None])[0]

    return run


def _mss_runner(case: str, method: str, folder: Path, meta: dict):
    """(run(mix) -> (S, C, T), warm-up(mix) or None, skip reason or None)."""
    import torch

    from mss import load_model
    from mss.inference.overlap_add import apply_model

    net = load_model(folder / f"{case}.ckpt")
    options: dict = {"compile": method == "compile", "precision": "bf16" if method == "bf16" else "fp32"}
    if case == "htdemucs":
        options.update(shifts=1, overlap=0.25)
    elif case == "umx" and method != "chunks":
        options.update(segment=None, batch_size=1)  # the whole track: set per call
    if method == "onnx":
        from mss.inference.export import ExportError, OnnxSeparator, export_onnx

        try:
            export_onnx(net, folder / f"{case}.onnx")
        except ExportError as err:
            return None, None, str(err)
        net, options = OnnxSeparator(folder / f"{case}.onnx"), {k: v for k, v in options.items()
                                                                 if k not in ("compile", "precision")}

    def run(mix):
        torch.manual_seed(SEED)
        kwargs = dict(options)
        if kwargs.get("segment", 0) is None:
            kwargs["segment"] = mix.shape[-1]
        return apply_model(net, mix, **kwargs)

    def warm_up(mix):  # compiles for the chunk shape the timed call uses
        if case == "umx":
            return run(mix)
        return apply_model(net, mix[..., : meta["segment"]], **{**options, "shifts": 0})

    return run, (warm_up if method == "compile" else None), None


def _max_delta(ours: np.ndarray, ref: np.ndarray, upto: int | None = None) -> float:
    if ours.shape != ref.shape:
        raise RuntimeError(f"output shapes differ: {ours.shape} vs reference {ref.shape}")
    if upto is not None:
        ours, ref = ours[..., :upto], ref[..., :upto]
    return float(np.abs(ours - ref).max()) if ours.size else float("nan")


def same_chunks_end(meta: dict, length: int) -> int:
    """Output samples ``[0, end)`` that the reference and mss compute from the same chunks (HT Demucs, shift trick):
    up to the start of the last mss chunk of the shifted track."""
    lead = meta["max_shift"] - meta["offset"]
    shifted = length + lead
    segment = meta["segment"]
    stride = max(1, int(segment * 0.75))
    n_chunks = 1 if shifted <= segment else -(-(shifted - segment) // stride) + 1
    return max(0, (n_chunks - 1) * stride - lead)


def worker(case: str, method: str, folder: Path, threads: int) -> None:
    """Run one measurement in this (fresh) process; print a JSON line."""
    meta = json.loads((folder / "meta.json").read_text())[case]
    if method.startswith("ref"):
        import torch  # before mss: the reference runs with its runtime's own OpenMP settings
    else:
        # isort: off
        import mss  # noqa: F401  (before torch, as python -m mss.separate: passive OpenMP waiting)
        import torch
        # isort: on
    torch.set_num_threads(threads)
    mix = torch.from_numpy(np.load(folder / "mix.npy"))
    warm_up, skipped = None, None
    if method.startswith("ref"):
        run = _reference_runner(case, folder, meta)
    else:
        run, warm_up, skipped = _mss_runner(case, method, folder, meta)
    if skipped:
        print(json.dumps({"skipped": skipped}))
        return
    from scripts._memory import PeakMemory, trim

    first = None
    if warm_up is not None:
        start = time.perf_counter()
        warm_up(mix)
        first = time.perf_counter() - start
    trim()
    with PeakMemory("cpu") as mem:
        start = time.perf_counter()
        out = run(mix)
        seconds = time.perf_counter() - start
    peak = None if mem.peak is None else (mem.base + mem.peak) / 2**20
    out = out.float().numpy()
    result = {"time": seconds, "peak": peak, "first": first, "shape": list(out.shape)}
    if method == "ref":
        np.save(folder / f"{case}-ref.npy", out)
    elif (folder / f"{case}-ref.npy").is_file():
        ref = np.load(folder / f"{case}-ref.npy")
        result["delta"] = _max_delta(out, ref)
        if case == "htdemucs":
            end = same_chunks_end(meta, out.shape[-1])
            result["delta_same"], result["same_end"] = _max_delta(out, ref, end), end
    print(json.dumps(result))


# ---------------------------------------------------------------- driver

def _child_env(threads: int, method: str) -> dict:
    """Fixed thread counts; the reference (``ref``) without mss's OpenMP waiting policy, ``ref-passive`` with it."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads)}
    if method == "ref":
        for key in WAIT_ENV:
            env.pop(key, None)
    elif method == "ref-passive":
        env.update(WAIT_ENV)
    return env


def run_child(args: list[str], threads: int, method: str = "") -> dict:
    proc = subprocess.run([sys.executable, __file__, *args, "--threads", str(threads)], capture_output=True,
                          text=True, env=_child_env(threads, method))
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_case(case: str, methods: list[str], folder: Path, threads: int, repeat: int,
                 compile_repeat: int = 1) -> dict[str, dict]:
    """``repeat`` fresh-process runs of every method (``compile_repeat`` of ``compile``), interleaved (reference
    first: the others compare with its output); per method the median time, the largest peak and every run's time."""
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    skipped: dict[str, str] = {}
    for k in range(max(1, repeat, compile_repeat)):
        for method in methods:
            if method in skipped or k >= (compile_repeat if method == "compile" else max(1, repeat)):
                continue
            res = run_child(["--worker", case, method, str(folder)], threads, method)
            if "skipped" in res:
                skipped[method] = res["skipped"]
            else:
                runs[method].append(res)
            print(f"  {case} {method}: " + (f"skipped ({res['skipped'][:80]}...)" if "skipped" in res else
                                            f"{res['time']:.2f} s"), flush=True)
    out = {}
    for method in methods:
        if method in skipped:
            out[method] = {"skipped": skipped[method]}
            continue
        rs = sorted(runs[method], key=lambda r: r["time"])
        peaks = [r["peak"] for r in rs if r["peak"] is not None]
        firsts = [r["first"] for r in rs if r["first"] is not None]
        out[method] = {**rs[len(rs) // 2], "time": statistics.median(r["time"] for r in rs),
                       "times": [round(r["time"], 3) for r in rs], "peak": max(peaks) if peaks else None,
                       "first": statistics.median(firsts) if firsts else None}
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None or value != value else format(value, spec)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


COLUMNS = ["load", "model", "method", "wall s", "real-time ×", "peak RSS MB", "first call s", "max \\|Δ\\| vs ref",
           "ratio vs ref", "ratio vs ref (passive)"]


def format_table(results: dict, seconds: float) -> str:
    """One markdown table: a row per (load, case, method); ratios are reference wall / wall."""
    lines = [_row(COLUMNS), "|" + "---|" * len(COLUMNS)]
    for load, cases in results.items():
        for case, methods in cases.items():
            refs = [methods.get(k) for k in ("ref", "ref-passive")]
            for method, r in methods.items():
                label = METHOD_LABELS.get((case, method), METHOD_LABELS.get(method, method))
                if "skipped" in r:
                    lines.append(_row([str(load), LABELS[case], label, f"skipped: {r['skipped']}"]
                                      + [""] * (len(COLUMNS) - 4)))
                    continue
                if method == "ref":
                    delta = "(reference)"
                elif "delta" in r:
                    delta = f"{r['delta']:.1e}"
                    if "delta_same" in r:
                        delta = f"{r['delta_same']:.1e} same chunks (first {r['same_end'] / SR:.1f} s), {delta} all"
                else:
                    delta = "no reference"
                ratios = [f"{ref['time'] / r['time']:.2f}×" if ref and "time" in ref else "–" for ref in refs]
                lines.append(_row([str(load), LABELS[case], label, f"{r['time']:.2f}", f"{seconds / r['time']:.1f}",
                                   _fmt(r["peak"], ".0f"), _fmt(r["first"], ".1f"), delta, *ratios]))
    return "\n".join(lines)


def format_degradation(results: dict) -> str:
    loads = list(results)
    base = loads[0]
    head = "| model | method | " + " | ".join(f"wall s at load {n}" for n in loads) + " | " + " | ".join(
        f"load {n} / load {base}" for n in loads[1:]) + " |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]  # no escaped pipes in this head
    for case, methods in results[base].items():
        for method, r in methods.items():
            if "skipped" in r:
                continue
            times = [results[n][case][method]["time"] for n in loads]
            label = METHOD_LABELS.get((case, method), METHOD_LABELS.get(method, method))
            lines.append(f"| {LABELS[case]} | {label} | " + " | ".join(f"{t:.2f}" for t in times) + " | "
                         + " | ".join(f"{t / times[0]:.2f}×" for t in times[1:]) + " |")
    return "\n".join(lines)


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="track length (default 60; 4 with --quick)")
    parser.add_argument("--repeat", type=int, default=None, help="fresh-process runs per method (default 3; 1 with "
                        "--quick); the median time is reported")
    parser.add_argument("--compile-repeat", type=int, default=1, help="fresh-process runs of compile=true (each "
                        "compiles again: minutes for HT Demucs on 2 cores)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--skip", default="", help=f"comma-separated methods to leave out: {','.join(SKIPPABLE)}, "
                        "for every model or one (CASE:METHOD, e.g. htdemucs:bf16)")
    parser.add_argument("--load", type=int, nargs="+", default=[0], metavar="N",
                        help="busy processes (one core each) during the measurements; several values: one pass each")
    parser.add_argument("--load-seconds", type=float, default=3600.0,
                        help="the busy processes end by themselves after this long")
    parser.add_argument("--quick", action="store_true", help="4 s of audio and 1 repeat (unless given)")
    parser.add_argument("--tiny", action="store_true", help="small models (for the test), not the released sizes")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--keep", type=Path, default=None, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--worker", nargs=3, metavar=("CASE", "METHOD", "DIR"), help=argparse.SUPPRESS)
    parser.add_argument("--prepare", nargs=3, metavar=("DIR", "SECONDS", "CASES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], args.worker[1], Path(args.worker[2]), args.threads)
        return {}
    if args.prepare:
        prepare(Path(args.prepare[0]), float(args.prepare[1]), args.prepare[2].split(","), args.tiny)
        return {}
    seconds = args.seconds if args.seconds is not None else (4.0 if args.quick else 60.0)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    cases = [c for c in args.cases.split(",") if c]
    skip = {s for s in args.skip.split(",") if s}
    bad = [s for s in skip if s.rpartition(":")[2] not in SKIPPABLE or s.rpartition(":")[0] not in ("", *CASES)]
    if unknown := [c for c in cases if c not in CASES] + sorted(bad):
        parser.error(f"unknown case/method {unknown}: cases are {', '.join(CASES)}; --skip takes "
                     f"{', '.join(SKIPPABLE)}")
    with tempfile.TemporaryDirectory(prefix="bench_separate_") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        prep = subprocess.run([sys.executable, __file__, "--prepare", str(folder), str(seconds), ",".join(cases),
                               *(["--tiny"] if args.tiny else [])], capture_output=True, text=True)
        if prep.returncode != 0:
            raise RuntimeError(f"preparing the models failed:\n{prep.stderr[-3000:]}")
        meta = json.loads((folder / "meta.json").read_text())
        print(f"prepared {seconds:g} s track and {', '.join(cases)} in {time.perf_counter() - start:.0f} s "
              f"(parameters: " + ", ".join(f"{c} {meta[c]['params']:,}" for c in cases) + ")", flush=True)
        results: dict = {}
        load_info = {}
        for load in args.load:
            load_info[load] = _loadavg()
            print(f"load average before: {load_info[load]} ({os.cpu_count()} cores); {load} busy process(es) "
                  "started", flush=True)
            with busy_processes(load, args.load_seconds):
                results[load] = {case: measure_case(case, [m for m in METHODS[case]
                                                           if m not in skip and f"{case}:{m}" not in skip],
                                                    folder, args.threads, repeat, args.compile_repeat)
                                 for case in cases}
    title = (f"Separating a {seconds:g} s stereo 44.1 kHz track{' (tiny models)' if args.tiny else ''}, "
             f"{args.threads} threads, median of {repeat}; load average before: "
             + "; ".join(f"{v} ({n} busy process(es) added)" for n, v in load_info.items()))
    table = format_table(results, seconds)
    print(f"\n{title}\n\n{table}")
    if len(args.load) > 1:
        print(f"\nwall time by load:\n\n{format_degradation(results)}")
    report = {"title": title, "seconds": seconds, "threads": args.threads, "repeat": repeat, "load_average": load_info,
              "meta": meta, "results": {str(k): v for k, v in results.items()}, "table": table}
    if args.json:
        from mss.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
