"""Benchmark mss separators against their reference implementations, in one process, on the same input and weights.

    python scripts/bench_models.py                              # every case in CASES, 4 s of audio, 2 threads
    python scripts/bench_models.py --cases htdemucs,hdemucs --seconds 7.8 --threads 2 --repeats 3
    python scripts/bench_models.py --device cuda --bf16         # GPU, bf16 autocast (no parity column in bf16)

Per case: the mss network is built from ``conf/model/<model>.yaml`` (plus the case's overrides; data constants:
4 stereo sources at 44.1 kHz); the reference network (e.g. the ``demucs`` package's class with the same constructor
keywords) gets the same weights. For both: forward (eval, ``inference_mode``) and forward+backward (train mode,
L1 loss) wall time per second of audio, best of ``--repeats`` after one warm-up, and the peak memory of the call;
then the max-abs difference of their eval outputs. ``speedup`` = reference time / mss time (> 1: mss is faster).

``--clock cpu`` times with the process's CPU time (user + system) instead of wall time: on a shared machine with
``--threads 1`` it does not count the time the process waits for a core, so ratios stay comparable under load.

``--profile`` adds a second table from ``--repeats`` interleaved profiled calls per side (``torch.profiler``, self
CPU time per operator, its minimum over the calls): the share of time spent in the heavy kernels both
implementations call with the same shapes (convolutions and their gradients, matrix products, LSTM layers, fused
attention, FFTs) and the resulting ceiling of the speedup, reference time / mss heavy-kernel time, which no change
outside those kernels can exceed.

Memory: on CPU the growth of the process's resident set during the call (``VmHWM`` after resetting it through
``/proc/self/clear_refs``, minus ``VmRSS`` before; freed heap is returned to the OS first with ``malloc_trim``); on
CUDA the growth of ``torch.cuda.max_memory_allocated``.

Extend :data:`CASES` with :class:`Case` entries (other helpers add RoFormer / Open-Unmix rows): ``reference`` builds
the reference network from the mss network and its resolved config, or is ``None`` when there is no reference.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SAMPLE_RATE = 44100
SOURCES = ["drums", "bass", "other", "vocals"]


@dataclass
class Case:
    """One benchmark row: ``model`` is a ``conf/model`` name, ``overrides`` Hydra overrides of it (``{seconds}`` is
    replaced by the audio duration), ``reference(net, config) -> nn.Module | None`` the reference network with
    ``net``'s weights."""

    name: str
    model: str
    overrides: list[str] = field(default_factory=list)
    reference: Callable[[nn.Module, dict], nn.Module] | None = None


def demucs_reference(class_path: str, drop: tuple[str, ...] = ()) -> Callable[[nn.Module, dict], nn.Module]:
    """Reference builder for the Demucs family: the ``demucs`` package class at ``class_path`` called with the mss
    config's keywords (same names), loaded with the mss weights."""

    def build(net: nn.Module, config: dict) -> nn.Module:
        from tests._reference import import_reference

        module, name = class_path.rsplit(".", 1)
        klass = getattr(import_reference(module), name)
        known = inspect.signature(klass).parameters  # mss-only keywords (e.g. sparse-attention options) are dropped
        kwargs = {k: v for k, v in config.items() if k in known and k not in drop}
        ref = klass(**kwargs)
        ref.load_state_dict(net.state_dict())
        return ref

    return build


CASES: list[Case] = [
    Case("unet", "unet"),
    Case("demucs", "demucs"),
    Case("demucs_v3", "demucs_v3", reference=demucs_reference("demucs.demucs.Demucs")),
    Case("hdemucs", "hdemucs", reference=demucs_reference("demucs.hdemucs.HDemucs")),
    Case("htdemucs", "htdemucs", ["model.segment={seconds}"], demucs_reference("demucs.htdemucs.HTDemucs")),
    Case("htdemucs_released", "htdemucs_released", ["model.segment={seconds}", "model.t_dropout=0.0"],
         demucs_reference("demucs.htdemucs.HTDemucs")),
]

# band-split RoFormers (reference: bs-roformer 0.4.1 where the config is lucidrains-compatible) and Open-Unmix
from scripts._bench_roformer import lucidrains_roformer, openunmix_separator  # noqa: E402
from scripts._memory import PeakMemory, trim  # noqa: E402

CASES += [
    Case("bs_roformer", "bs_roformer"),
    Case("bs_roformer_msst_small", "bs_roformer_msst_small", ["model.zero_dc=false"], lucidrains_roformer("bs")),
    Case("mel_roformer", "mel_roformer", reference=lucidrains_roformer("mel")),
    Case("mel_roformer_msst", "mel_roformer_msst", reference=lucidrains_roformer("mel")),
    Case("umx", "umx", reference=openunmix_separator),
    Case("bsrnn", "bsrnn"),  # reference (magronp/bsrnn) is not installable here: parity in tests/test_bsrnn.py
]

# SCNet (the official starrytong/SCNet code is not installed here: mss only)
CASES += [Case("scnet", "scnet"), Case("scnet_large", "scnet_large")]
# Sony DenseNet families, one target network (per-target models; the reference code does not run here: tky823's
# ports need its repository, D3Net's official code nnabla)
CASES += [
    Case("mmdenselstm", "mmdenselstm", ["model.sources=[vocals]"]),
    Case("mmdensenet", "mmdensenet", ["model.sources=[vocals]"]),
    Case("d3net", "d3net", ["model.sources=[vocals]"]),
]
# TFC-TDF U-Nets (the references, MSST mdx23c and kuielab/mdx-net, are not installable here: mss only)
CASES += [
    Case("mdx23c", "mdx23c"),
    Case("tfc_tdf_v2", "tfc_tdf_v2"),
]
# BandIt (MSST models/bandit needs torchaudio, not installable here: mss only; parity in tests/test_bandit.py)
CASES += [Case("bandit", "bandit", ["model.sources=[vocals,other]"])]
# Conv-TasNet (Demucs v2's demucs/tasnet.py is not in the installed demucs 4: parity in tests/test_conv_tasnet.py)
CASES += [Case("conv_tasnet", "conv_tasnet")]
# Wave-U-Net, paper M6 (TF, not runnable here) and the PyTorch version's defaults (f90/Wave-U-Net-Pytorch is not
# installable: parity in tests/test_wave_u_net.py)
CASES += [Case("wave_u_net", "wave_u_net"), Case("wave_u_net_pytorch", "wave_u_net_pytorch")]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}

# operators whose work is the same in both implementations when called with the same shapes (``--profile``)
HEAVY_KERNELS = ("conv", "addmm", "aten::mm", "bmm", "rnn", "scaled_dot_product", "_fft_")


def _measure_once(fn: Callable[[], object], device: torch.device, clock: str = "wall") -> tuple[float, float]:
    """(time in s on ``clock``, peak memory growth in bytes) of one ``fn()`` call."""
    timer = CLOCKS[clock]
    trim()
    with PeakMemory(device) as mem:
        start = timer()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = timer() - start
    return seconds, mem.peak


def measure(fns: dict[str, Callable[[], object]], device: torch.device, repeats: int,
            clock: str = "wall") -> dict[str, tuple]:
    """Best time and peak memory of every ``fns`` entry after one warm-up call each; the calls of the entries
    are interleaved (a, b, a, b, ...) so that load changes on a shared machine hit them alike."""
    for fn in fns.values():
        fn()
    best = {name: (float("inf"), 0.0) for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            elapsed, grown = _measure_once(fn, device, clock)
            peak = None if grown is None or best[name][1] is None else max(best[name][1], grown)  # None: unknown
            best[name] = (min(best[name][0], elapsed), peak)
    return best


def _calls(net: nn.Module, mix: torch.Tensor, device: torch.device, bf16: bool):
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def forward():
        net.eval()
        with torch.inference_mode(), autocast():
            return net(mix).float().cpu()

    def forward_backward():
        net.train()
        with autocast():
            out = net(mix)
        out.float().abs().mean().backward()
        net.zero_grad(set_to_none=True)

    return forward, forward_backward


def heavy_shares(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(total, heavy-kernel) self CPU time in s per ``fns`` entry (see :data:`HEAVY_KERNELS`): ``repeats``
    interleaved profiled calls each, every operator's time being its minimum over the calls (filters load spikes)."""
    from torch.profiler import ProfilerActivity, profile

    per_op: dict[str, dict[str, float]] = {name: {} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            for e in prof.key_averages():
                ops = per_op[name]
                ops[e.key] = min(ops.get(e.key, float("inf")), e.self_cpu_time_total / 1e6)
    return {name: (sum(ops.values()), sum(t for k, t in ops.items() if any(h in k for h in HEAVY_KERNELS)))
            for name, ops in per_op.items()}


def bench_case(case: Case, seconds: float, device: torch.device, repeats: int, backward: bool, bf16: bool,
               clock: str = "wall", profile: bool = False) -> dict:
    from omegaconf import OmegaConf

    from mss.checkpoint import build_model
    from mss.run import compose

    overrides = [o.format(seconds=seconds) for o in case.overrides]
    cfg = compose("train", [f"model={case.model}", "paths.output_dir=unused", f"data.sources=[{','.join(SOURCES)}]",
                            "data.channels=2", f"data.sample_rate={SAMPLE_RATE}", *overrides])
    config = OmegaConf.to_container(cfg.model, resolve=True)
    torch.manual_seed(0)
    net = build_model(config).to(device)
    ref = case.reference(net, config).to(device) if case.reference is not None else None
    torch.manual_seed(1)
    length = round(seconds * SAMPLE_RATE)
    mix = torch.randn(1, 2, length, device=device)
    row = {"case": case.name, "params": sum(p.numel() for p in net.parameters()), "seconds": seconds}
    nets = {"ours": net} if ref is None else {"ours": net, "ref": ref}
    calls = {name: _calls(m, mix, device, bf16) for name, m in nets.items()}
    for key, index in [("fwd", 0)] + ([("fb", 1)] if backward else []):
        for name, (elapsed, grown) in measure({n: c[index] for n, c in calls.items()}, device, repeats,
                                              clock).items():
            row[f"{name}_{key}"], row[f"{name}_{key}_mem"] = elapsed, grown
        if profile and ref is not None:
            for name, (total, heavy) in heavy_shares({n: c[index] for n, c in calls.items()}, repeats).items():
                row[f"{name}_{key}_prof"], row[f"{name}_{key}_heavy"] = total, heavy
    if ref is not None:
        row["max_abs"] = (calls["ours"][0]() - calls["ref"][0]()).abs().max().item()
    return row


def format_table(rows: list[dict], backward: bool) -> str:
    def per_s(row, key):
        return f"{row[key] / row['seconds']:.3f}" if key in row else "-"

    def ratio(row, key):
        return f"{row['ref_' + key] / row['ours_' + key]:.2f}x" if "ref_" + key in row else "n/a"

    def mem(row, key):
        return f"{row[key] / 2**20:.0f}" if row.get(key) is not None else "-"

    head = ["case", "params", "fwd s/s ours", "fwd s/s ref", "fwd speedup", "fwd MB ours", "fwd MB ref"]
    if backward:
        head += ["f+b s/s ours", "f+b s/s ref", "f+b speedup", "f+b MB ours", "f+b MB ref"]
    head += ["max-abs diff"]
    lines = [head]
    for r in rows:
        line = [r["case"], f"{r['params']:,}", per_s(r, "ours_fwd"), per_s(r, "ref_fwd"), ratio(r, "fwd"),
                mem(r, "ours_fwd_mem"), mem(r, "ref_fwd_mem")]
        if backward:
            line += [per_s(r, "ours_fb"), per_s(r, "ref_fb"), ratio(r, "fb"), mem(r, "ours_fb_mem"),
                     mem(r, "ref_fb_mem")]
        line += [f"{r['max_abs']:.1e}" if "max_abs" in r else "n/a"]
        lines.append(line)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def format_profile(rows: list[dict], backward: bool) -> str:
    """Heavy-kernel table of ``--profile``: per pass, the profiled self CPU time of both sides, the heavy-kernel
    share of each and the speedup ceiling (reference time / mss heavy-kernel time, both from the profiled calls)."""
    lines = [["case", "pass", "ours ms", "ref ms", "ours heavy", "ref heavy", "speedup (profiled)", "ceiling"]]
    for r in rows:
        for key in ["fwd"] + (["fb"] if backward else []):
            if f"ref_{key}_prof" not in r:
                continue
            ours, ref = r[f"ours_{key}_prof"], r[f"ref_{key}_prof"]
            h_ours, h_ref = r[f"ours_{key}_heavy"], r[f"ref_{key}_heavy"]
            lines.append([r["case"], key, f"{1e3 * ours:.0f}", f"{1e3 * ref:.0f}", f"{h_ours / ours:.0%}",
                          f"{h_ref / ref:.0%}", f"{ref / ours:.2f}x", f"{ref / h_ours:.2f}x"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(c.name for c in CASES),
                        help=f"comma-separated case names (default: all of {[c.name for c in CASES]})")
    parser.add_argument("--seconds", type=float, default=4.0, help="audio duration (default 4 s)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per measurement (best is kept)")
    parser.add_argument("--no-backward", action="store_true", help="skip forward+backward")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or the process's CPU time (robust to other load with --threads 1)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile --repeats calls per side: heavy-kernel shares and the speedup ceiling")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    by_name = {c.name: c for c in CASES}
    unknown = [n for n in args.cases.split(",") if n not in by_name]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {list(by_name)}")
    rows = []
    for name in args.cases.split(","):
        rows.append(bench_case(by_name[name], args.seconds, device, args.repeats, not args.no_backward, args.bf16,
                               args.clock, args.profile))
        print(format_table(rows[-1:], not args.no_backward).splitlines()[-1], file=sys.stderr, flush=True)
    print(f"device {device}, threads {args.threads}, {args.seconds:g} s of stereo audio, 4 sources, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, best of {args.repeats}, {args.clock} clock; "
          "s/s = seconds per second of audio, speedup = reference time / mss time")
    print(format_table(rows, not args.no_backward))
    if args.profile:
        print(f"\nheavy kernels ({', '.join(HEAVY_KERNELS)}): share of the profiled self CPU time (per-operator "
              f"minimum of {args.repeats} calls); "
              "ceiling = reference time / mss heavy-kernel time")
        print(format_profile(rows, not args.no_backward))
    return rows


if __name__ == "__main__":
    main()
