"""Peak memory of separating one file, streamed (``mss.separate``) against the whole track at once, by track length.

    python scripts/bench_separate_memory.py [--seconds 60 600] [--model unet_2stems] [--methods stream,whole]
                                            [--threads 2] [--json OUT]

Track: ``--seconds`` of stereo 44.1 kHz 16-bit WAV (the band-limited noise sources of ``scripts/bench_eval.py``).
Model: ``conf/model/<--model>.yaml`` at random weights (seed 0), saved as an mss checkpoint. Methods, each in a
fresh process with ``--threads`` threads:

* ``stream``: :func:`mss.separate.separate_file` (what ``python -m mss.separate`` runs: blocks of 10 s decoded,
  separated by the streaming overlap-add, stems spooled and encoded to 16-bit WAV);
* ``whole``: the whole track decoded, :func:`mss.inference.overlap_add.apply_model` on it, each stem written by
  :func:`mss.audio.io.save_audio` (how mss separated before streaming, and how the reference packages do: the track
  and all its estimates in memory).

``peak MB``: growth of the worker's resident set during the call (``PeakMemory``, ``scripts/_memory.py``);
``wall s``: the call's duration. The ratio column is whole / stream. Both methods write the same stems (the
maximum absolute difference of the written samples is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SR = 44100


def prepare(folder: Path, seconds: list[float], model: str) -> None:
    import soundfile as sf
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mss.checkpoint import save_checkpoint
    from mss.run import CONF_DIR
    from scripts.bench_eval import make_signals

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    torch.manual_seed(0)
    net = instantiate(cfg.model).eval()
    save_checkpoint(folder / "model.ckpt", net, OmegaConf.to_container(cfg.model, resolve=True))
    for length in seconds:
        refs, _ = make_signals(length)  # (S, T, C) sources
        sf.write(folder / f"track{length:g}.wav", np.clip(refs.sum(0), -1, 1).astype(np.float32), SR,
                 subtype="PCM_16")


def worker(method: str, folder: Path, seconds: float, threads: int) -> None:
    import torch

    import mss  # noqa: F401 -- mss's thread settings, as python -m mss.separate
    from mss.audio.io import decode_audio, prevent_clip, save_audio
    from mss.checkpoint import load_model
    from mss.inference.overlap_add import apply_model
    from mss.separate import separate_file
    from scripts._memory import PeakMemory, trim

    torch.set_num_threads(threads)
    net = load_model(folder / "model.ckpt")
    track, out = folder / f"track{seconds:g}.wav", folder / method
    trim()
    start = time.perf_counter()
    with PeakMemory("cpu") as mem:
        if method == "stream":
            separate_file(net, track, out)
        else:
            wav, rate = decode_audio(track)
            est = apply_model(net, wav)
            for source, stem in zip(net.sources, est):
                save_audio(out / track.stem / f"{source}.wav", prevent_clip(stem), rate)
    wall = time.perf_counter() - start
    print(json.dumps({"peak_mb": None if mem.peak is None else mem.peak / 2**20, "wall_s": wall}))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[60.0, 600.0])
    parser.add_argument("--model", default="unet_2stems", help="a conf/model config name")
    parser.add_argument("--methods", default="stream,whole", help="comma-separated subset of stream,whole")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "DIR", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), float(args.worker[2]), args.threads)
        return []
    import soundfile as sf

    rows = []
    with tempfile.TemporaryDirectory(prefix="mss-bench-mem-") as tmp:
        folder = Path(tmp)
        prepare(folder, args.seconds, args.model)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores); model {args.model}")
        for seconds in args.seconds:
            row = {"seconds": seconds}
            for method in args.methods.split(","):
                proc = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--worker", method,
                                       str(folder), str(seconds)], capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise SystemExit(f"{method} at {seconds:g} s failed:\n{proc.stderr[-3000:]}")
                row[method] = json.loads(proc.stdout.strip().splitlines()[-1])
                print(f"  {seconds:g} s {method}: {row[method]}", flush=True)
            track = f"track{seconds:g}"
            if len(row) == 3:
                row["max_abs_diff"] = max(
                    float(np.abs(sf.read(p, dtype="float32")[0] - sf.read(folder / "whole" / track / p.name,
                                                                           dtype="float32")[0]).max())
                    for p in sorted((folder / "stream" / track).iterdir()))
            rows.append(row)
    print("\n| track s | streamed peak MB | whole-track peak MB | whole / streamed | streamed wall s | whole wall s "
          "| max abs Δ |")
    print("|---|---|---|---|---|---|---|")
    cell = lambda r, m, k, f: format(r[m][k], f) if m in r and r[m][k] is not None else "–"  # noqa: E731
    for r in rows:
        ratio = (f"{r['whole']['peak_mb'] / r['stream']['peak_mb']:.1f}×" if len(r) > 2 and r["stream"]["peak_mb"]
                 and r["whole"]["peak_mb"] else "–")
        diff = f"{r['max_abs_diff']:.2g}" if "max_abs_diff" in r else "–"
        print(f"| {r['seconds']:g} | {cell(r, 'stream', 'peak_mb', '.0f')} | {cell(r, 'whole', 'peak_mb', '.0f')} | "
              f"{ratio} | {cell(r, 'stream', 'wall_s', '.1f')} | {cell(r, 'whole', 'wall_s', '.1f')} | {diff} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
