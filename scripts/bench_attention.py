"""Benchmark sparse attention (mss.models.attention) against dense SDPA: time and peak memory, forward and
forward+backward, printed as one table with ratios to dense SDPA.

    python scripts/bench_attention.py                      # 1k..16k tokens + the htdemucs_sparse model rows
    python scripts/bench_attention.py --quick              # 1k..4k tokens, model rows on a 3.4 s segment
    python scripts/bench_attention.py --lengths 8192 --no-model --device cuda --dtype bf16
    python scripts/bench_attention.py --no-attention --segment 3.4 --runs 3   # model rows, medians of 3 runs

Attention: batch 1, 8 heads, model dim 512 (head dim 64), self-attention of N tokens. Methods:
``dense`` = ``F.scaled_dot_product_attention`` without mask (on CPU torch's flash kernel, O(N) memory);
``materialised`` = softmax(QK^T)V with the N x N score matrix (what the reference's nn.MultiheadAttention does;
only up to ``--materialised-max`` tokens); ``lsh90`` = LSH-sparse attention at 90 % sparsity (32 rounds x 4
buckets); ``window`` = static local window keeping 10 % of the pairs (half-width 0.05 N). Sparse methods use the
``chunked`` kernel on CPU and ``flex`` on CUDA (``--backend`` overrides).

Model rows: ``sparse`` = ``model=htdemucs_sparse``; ``dense`` = the same model with ``t_sparse_*=false`` (its
attention-probability dropout ``t_dropout`` = 0.02 is active in training, and SDPA with dropout leaves the fused
flash kernel on CPU, so its forward+backward materialises the N x N probabilities); ``dense-nodrop`` = dense with
attention-probability dropout 0 (the other dropouts as configured), which is what the sparse layers do (they apply
no attention-probability dropout): the fair memory comparison.

Memory method: every measurement runs in a fresh child process. On CPU the peak is the growth of the resident set
(VmHWM after resetting it through /proc/self/clear_refs, minus VmRSS before the call), i.e. every byte the call
allocated and touched, inputs excluded; on CUDA ``torch.cuda.max_memory_allocated`` growth. Times are wall-clock
seconds of one call after a small warm-up (best of ``--repeats``), threads fixed with ``torch.set_num_threads``.
``--runs R`` repeats every measurement in R fresh processes and prints the medians; the machine's load average is
printed before and after (other jobs on a shared machine inflate the times).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADS, DIM = 8, 512


def _measure(fn, device, repeats: int) -> tuple[float, int]:
    """(best time of ``repeats`` calls, peak memory growth of the first call)."""
    from scripts._memory import PeakMemory

    with PeakMemory(device) as mem:
        best = _timed(fn, device, 1)
    return min(best, _timed(fn, device, repeats - 1)), mem.peak


def _timed(fn, device, repeats: int) -> float:
    import torch

    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def _attention_fn(method: str, n: int, backend: str):
    import torch
    import torch.nn.functional as F

    from mss.models.attention import SparseAttention

    if method == "dense":
        return F.scaled_dot_product_attention, None
    if method == "materialised":
        def materialised(q, k, v):
            return torch.softmax((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5, -1) @ v
        return materialised, None
    if method == "lsh90":
        module = SparseAttention(sparsity=0.9, rounds=32, n_buckets=4, backend=backend).eval()
    elif method == "window":
        module = SparseAttention(lsh=False, window=max(1, round(0.05 * n)), backend=backend).eval()
    else:
        raise ValueError(f"unknown method {method}")
    return module, module


def child_attention(args) -> dict:
    import torch

    device, dtype = torch.device(args.device), {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    n = args.length
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, HEADS, n, DIM // HEADS, generator=gen).to(device, dtype).requires_grad_()
               for _ in range(3))
    grad = torch.randn(q.shape, generator=gen).to(device, dtype)
    fn, module = _attention_fn(args.child, n, args.backend)
    with torch.no_grad():  # warm-up on a short sequence (kernel selection, lazy init)
        fn(*(t[:, :, :128].detach() for t in (q, k, v)))

    def forward():
        with torch.no_grad():
            return fn(q, k, v)

    def forward_backward():
        out = fn(q, k, v)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    result = {}
    result["fwd_s"], result["fwd_mem"] = _measure(forward, device, args.repeats)
    if not args.forward_only:
        result["fb_s"], result["fb_mem"] = _measure(forward_backward, device, args.repeats)
    if module is not None and module.last_sparsity is not None:
        result["sparsity"] = float(module.last_sparsity)
    return result


def child_model(args) -> dict:
    import torch

    from mss.checkpoint import build_model
    from mss.run import compose

    device = torch.device(args.device)
    overrides = ["model=htdemucs_sparse", "paths.output_dir=unused", f"model.t_attn_backend={args.backend}"]
    if args.child.startswith("model_dense"):
        overrides += ["model.t_sparse_self_attn=false", "model.t_sparse_cross_attn=false"]
    if args.segment:
        overrides += [f"model.segment={args.segment}"]
    cfg = compose("train", overrides)
    torch.manual_seed(0)
    net = build_model(cfg.model).to(device)
    if args.child == "model_dense-nodrop":
        from mss.models.transformer import MultiheadAttention

        for module in net.modules():
            if isinstance(module, MultiheadAttention):
                module.dropout = 0.0  # attention-probability dropout only, as in the sparse layers
    length = net.segment_length
    mix = torch.randn(1, net.audio_channels, length, device=device)
    result = {"params": sum(p.numel() for p in net.parameters()), "seconds": length / net.sample_rate}

    def forward():
        net.eval()
        with torch.no_grad():
            net(mix)

    def forward_backward():
        net.train()
        net(mix).abs().mean().backward()
        net.zero_grad(set_to_none=True)

    result["fwd_s"], result["fwd_mem"] = _measure(forward, device, args.repeats)
    if not args.forward_only:
        result["fb_s"], result["fb_mem"] = _measure(forward_backward, device, args.repeats)
    return result


def run_child(args, method: str, length: int) -> dict | None:
    """Median over ``args.runs`` fresh child processes of every measured number."""
    runs = [r for r in (_run_child_once(args, method, length) for _ in range(args.runs)) if r is not None]
    if not runs:
        return None
    out = dict(runs[0])
    for key in ("fwd_s", "fwd_mem", "fb_s", "fb_mem", "sparsity"):
        if all(key in r for r in runs):
            out[key] = statistics.median(r[key] for r in runs)
    return out


def _run_child_once(args, method: str, length: int) -> dict | None:
    cmd = [sys.executable, __file__, "--child", method, "--length", str(length), "--threads", str(args.threads),
           "--device", args.device, "--dtype", args.dtype, "--backend", args.backend, "--repeats", str(args.repeats)]
    if args.segment:
        cmd += ["--segment", str(args.segment)]
    if args.forward_only:
        cmd += ["--forward-only"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        print(f"  [{method} N={length} failed: {proc.stderr.strip().splitlines()[-1:]}]", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_mem(b):
    return f"{b / 2**20:8.1f}" if b is not None else "       -"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--quick", action="store_true", help="lengths 1k-4k, model rows on a 3.4 s segment")
    parser.add_argument("--methods", nargs="+", default=["dense", "materialised", "lsh90", "window"])
    parser.add_argument("--materialised-max", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="calls per process; time = best of them")
    parser.add_argument("--runs", type=int, default=1, help="fresh processes per measurement; medians printed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--backend", default="auto", help="sparse kernel: auto (chunked on CPU, flex on CUDA) or any")
    parser.add_argument("--no-model", action="store_true", help="skip the htdemucs_sparse vs dense model rows")
    parser.add_argument("--no-attention", action="store_true", help="only the model rows")
    parser.add_argument("--segment", type=float, default=None, help="model rows: segment seconds (default 12.2)")
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.child:
        sys.path.insert(0, str(ROOT))
        result = child_model(args) if args.child.startswith("model") else child_attention(args)
        print(json.dumps(result))
        return

    if args.quick:
        args.lengths = [n for n in args.lengths if n <= 4096]
        args.segment = args.segment or 3.4
    print(f"# load average before: {_load()}; medians of {args.runs} run(s)")
    print(f"# attention: batch 1, {HEADS} heads, dim {DIM}, {args.dtype}, device {args.device}, "
          f"{args.threads} threads, sparse backend {args.backend}; time s, peak memory MiB; ratio = x / dense")
    header = (f"{'N':>6} {'method':>12} {'fwd s':>8} {'fwd MiB':>8} {'f+b s':>8} {'f+b MiB':>8} "
              f"{'sparsity':>8} {'fwd t/d':>7} {'f+b t/d':>7} {'f+b m/d':>7}")
    print(header)
    for n in [] if args.no_attention else args.lengths:
        dense = None
        for method in args.methods:
            if method == "materialised" and n > args.materialised_max:
                continue
            r = run_child(args, method, n)
            if r is None:
                continue
            dense = r if method == "dense" else dense

            def ratio(key, r=r, dense=dense):
                if dense is None or r.get(key) is None or not dense.get(key):
                    return "      -"
                return f"{r[key] / dense[key]:7.2f}"

            sparsity = f"{r['sparsity']:8.3f}" if "sparsity" in r else "       -"
            print(f"{n:>6} {method:>12} {r['fwd_s']:8.3f} {_fmt_mem(r['fwd_mem'])} {r.get('fb_s', math.nan):8.3f} "
                  f"{_fmt_mem(r.get('fb_mem'))} {sparsity} {ratio('fwd_s')} {ratio('fb_s')} {ratio('fb_mem')}",
                  flush=True)
    if not args.no_model:
        model_rows(args)
    print(f"# load average after: {_load()}")


def _load() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # platforms without a load average
        return "unavailable"


def model_rows(args) -> None:
    print(f"# model rows: batch 1, stereo, segment {args.segment or 12.2} s; sparse = the config, dense = the same "
          "model with t_sparse_*=false (attention dropout as configured), dense-nodrop = dense, attention dropout 0")
    names = ("model_dense", "model_sparse") if args.forward_only else ("model_dense", "model_dense-nodrop",
                                                                        "model_sparse")
    rows = {m: run_child(args, m, 0) for m in names}  # eval forward applies no dropout: dense-nodrop = dense
    for name, r in rows.items():
        if r is None:
            continue
        line = (f"htdemucs_sparse {name[6:]:>12} ({r['params']:,} params, {r['seconds']:.1f} s): "
                f"fwd {r['fwd_s']:.2f} s {_fmt_mem(r['fwd_mem']).strip()} MiB")
        if "fb_s" in r:
            line += f", fwd+bwd {r['fb_s']:.2f} s {_fmt_mem(r['fb_mem']).strip()} MiB"
        for ref_name in ("model_dense", "model_dense-nodrop"):
            ref = rows.get(ref_name)
            if ref is None or ref_name == name:
                continue
            line += f" | ratio to {ref_name[6:]}: fwd time {r['fwd_s'] / ref['fwd_s']:.2f}"
            if "fb_s" in r:
                line += f", f+b time {r['fb_s'] / ref['fb_s']:.2f}"
            if r.get("fb_mem") and ref.get("fb_mem"):
                line += f", f+b mem {r['fb_mem'] / ref['fb_mem']:.2f}"
        print(line)


if __name__ == "__main__":
    main()
