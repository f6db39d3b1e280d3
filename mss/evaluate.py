"""Evaluate a checkpoint or an oracle on a test split.

``python -m mss.evaluate ckpt=PATH [data=... data.root=...]`` or ``python -m mss.evaluate model=oracle_irm2 data=...``.

Every track is separated (overlap-add inference; oracles get the true stems) and scored with BSS Eval v4 (1 s frames;
``evaluation.backend=mss``: the exact fast re-implementation, ``museval``: museval itself) and nSDR (MDX whole-track
SDR). Written under the run directory:

* ``museval/<subset>/<track>.json``: museval's per-track format (``museval.MethodStore().add_eval_dir`` reads it);
* ``track_info/<subset>/<track>.json``: per-track nSDR, backend and conditioning flag (resume reads it);
* ``results.{md,csv,tex}``: median over frames per track, then median (SiSEC18) and mean over tracks, both labelled,
  plus nSDR (mean over tracks); ``per_track.csv``; ``boxplot_SDR-v4.png`` and ``per-track_SDR-v4.png``;
* ``report.md``: the failure report (worst tracks and 1 s frames per source, frames where a target is silent, the
  saved estimates to listen to);
* optionally ``estimates/<track>/<source>.wav``.

Tracks whose JSON and track_info already exist (same sources, backend, frames) are skipped (``evaluation.resume``), so
an interrupted evaluation continues where it stopped when re-run with the same ``hydra.run.dir``. Scoring runs in
``evaluation.workers`` processes with a bounded queue (at most ``workers`` separated tracks wait in memory), or, with
``evaluation.devices=[cuda:0,cuda:1]``, one process per device separates and scores its shard of the tracks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from mss import __version__
from mss.audio.io import save_audio
from mss.checkpoint import build_model, model_from_checkpoint, read_checkpoint
from mss.inference.cache import EstimateCache, estimate_key
from mss.inference.overlap_add import apply_model
from mss.inference.tta import check_tta
from mss.metrics import evaluate_track, nsdr, read_track_json, save_track_json
from mss.metrics.whole_track import ALWAYS, check_metrics, whole_track_scores
from mss.platform.threads import thread_budget
from mss.report import write_evaluation
from mss.run import CONF_DIR, compose, save_run_info
from mss.utils import atomic_write_text

log = logging.getLogger("mss.evaluate")


# ----------------------------------------------------------------------------------------------- per track


def _paths(out: Path, subset: str, name: str) -> tuple[Path, Path]:
    return out / "museval" / subset / f"{name}.json", out / "track_info" / subset / f"{name}.json"


def _signature(sources, cfg) -> dict:
    """What a finished track's record must match to be reused by resume."""
    return {"sources": list(sources), "backend": cfg.backend, "sdr_only": bool(cfg.sdr_only), "win": cfg.win,
            "hop": cfg.hop, "metrics": check_metrics(cfg.get("metrics") or ALWAYS)}


def _done(out: Path, subset: str, name: str, signature: dict) -> bool:
    scores, info = _paths(out, subset, name)
    if not (scores.is_file() and info.is_file()):
        return False
    try:
        return {k: json.loads(info.read_text()).get(k) for k in signature} == signature
    except ValueError:
        return False


def _score(refs, est, name, sources, sample_rate, cfg: dict, out: Path, nsdrs: dict, device,
           whole: dict | None = None, absent: list[str] | None = None) -> str:
    """Score one track and write its museval JSON and track_info record (runs in a worker process or inline)."""
    scores = evaluate_track(refs.transpose(1, 2).numpy(), est.transpose(1, 2).numpy(), sources, name,
                            sample_rate=sample_rate, win=cfg["win"], hop=cfg["hop"], backend=cfg["backend"],
                            sdr_only=cfg["sdr_only"], device=device, absent=absent or ())
    json_path, info_path = _paths(out, cfg["subset"], name)
    save_track_json(scores, json_path)
    info = {**_signature(sources, OmegaConf.create(cfg)), "track": name, "nSDR": nsdrs, "whole_track": whole or {},
            "reliable": scores.reliable, "cond": None if math.isnan(scores.cond) else scores.cond,
            "unreliable_sources": scores.unreliable,
            "error_db": {k: (None if not math.isfinite(v) else v) for k, v in scores.error_db.items()}}
    atomic_write_text(info_path, json.dumps(info, indent=2))  # written last: marks the track as done
    return name


def _separate(net, item: dict, cfg, device) -> torch.Tensor:
    """``(S, C, T)`` estimates of one track."""
    mix = item["mixture"]
    if getattr(net, "needs_references", False):  # oracles
        with torch.inference_mode():
            return net(mix[None].to(device), item["stems"][None].to(device))[0].cpu()
    segment = None if cfg.segment is None else round(cfg.segment * net.sample_rate)
    return apply_model(net, mix, segment=segment, overlap=cfg.overlap, batch_size=cfg.batch_size,
                       shifts=cfg.shifts, tta=_tta(cfg), device=device, progress=False,
                       **_speed(cfg)).cpu()


def _tta(cfg) -> list[str]:
    """``evaluation.tta`` as a checked list of transform names (empty: none)."""
    return check_tta(OmegaConf.to_container(cfg.tta) if OmegaConf.is_config(cfg.get("tta")) else cfg.get("tta"))


def _speed(cfg) -> dict:
    """``evaluation.compile`` / ``evaluation.precision`` where not the defaults (false / fp32): the estimate-cache
    key and protocol.json name them only then, so the keys of earlier runs stay valid."""
    out = {}
    if cfg.get("compile", False):
        out["compile"] = True
    precision = str(cfg.get("precision") or "fp32").lower()
    if precision != "fp32":
        out["precision"] = precision
    return out


def _estimate_store(spec: dict, cfg, root: Path) -> tuple[EstimateCache, dict, str]:
    """The estimate cache of this evaluation (``evaluation.cache``), the model's identity in its keys (checkpoint
    sha256, or the model config) and the dataset root."""
    folder = cfg.get("cache_dir") if cfg.get("cache", True) else None
    cache = EstimateCache(folder, int(float(cfg.get("cache_max_gb", 20)) * 2**30))
    model = {"checkpoint_sha256": spec["sha256"]} if "ckpt" in spec else spec["model"]
    return cache, model, str(root)


def _cached_separate(net, item: dict, cfg, device, store) -> torch.Tensor:
    """:func:`_separate`, or the estimates of an earlier run with the same model, settings and track."""
    cache, model, root = store
    settings = {"segment": cfg.segment, "overlap": float(cfg.overlap), "shifts": int(cfg.shifts)}
    if _tta(cfg):  # only when set: the keys of earlier runs without TTA stay valid
        settings["tta"] = _tta(cfg)
    settings.update(_speed(cfg))
    track = {"name": item["name"], "length": int(item["mixture"].shape[-1]), "root": root,
             "sources": list(net.sources), "sample_rate": int(net.sample_rate)}
    key = estimate_key(model, settings, track)
    est = cache.get(key)
    if est is None:
        est = _separate(net, item, cfg, device)
        cache.put(key, est)
    return est


def _process(net, item, sources, sample_rate, cfg, out, device, metrics_device, store, pool=None):
    with thread_budget():  # threads from the cores free now (the scoring workers' included; mss.platform.threads)
        est = _cached_separate(net, item, cfg, device, store)
    if cfg.save_estimates:
        for s, wav in zip(sources, est):
            save_audio(out / "estimates" / item["name"] / f"{s}.wav", wav, sample_rate, subtype="FLOAT")
    # a source the track lacks (missing stems) is scored by nothing: None here, NaN frames in its BSS Eval JSON
    absent = [s for s, here in zip(sources, item.get("present", [True] * len(sources))) if not here]
    keep = [j for j, s in enumerate(sources) if s not in absent]
    kept = [sources[j] for j in keep]
    refs, ests = item["stems"][keep], est[keep]
    nsdrs = dict.fromkeys(sources) | dict(zip(kept, nsdr(refs, ests).tolist()))
    whole = {label: dict.fromkeys(sources) | scores for label, scores in whole_track_scores(
        check_metrics(cfg.get("metrics") or ALWAYS), refs, ests, kept, sample_rate, float(cfg.win),
        float(cfg.hop)).items()}
    args = (item["stems"], est, item["name"], sources, sample_rate, OmegaConf.to_container(cfg), out, nsdrs,
            metrics_device, whole, absent)
    return pool.submit(_score, *args) if pool is not None else _score(*args)


# ----------------------------------------------------------------------------------------------- protocol


def _sha256(path: str | Path, digits: int = 16) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:digits]


def protocol(spec: dict, data_cfg, cfg, names: list[str], root: Path) -> dict:
    """What a number of this evaluation means and what it was measured on (``protocol.json``, the results'
    note, and what ``mss.results`` compares across runs): metric definition, frames, dataset and track list,
    audio, inference settings, the model (checkpoint hash) and the mss version."""
    from mss.data.synth import read_manifest

    model = spec["checkpoint"]["mss"]["model"] if "checkpoint" in spec else spec["model"]
    manifest = read_manifest(root) or {}
    keys = ("wiener_iterations", "wiener_iters", "weights", "combine", "domain")
    return {
        "metric": "BSS Eval v4 (museval images variant): median over frames per track"
                  + (", SDR only" if cfg.sdr_only else "") + "; nSDR: MDX whole-track SDR",
        "frames": {"win": float(cfg.win), "hop": float(cfg.hop)},
        "backend": cfg.backend,
        "dataset": {"datamodule": data_cfg.get("_target_"), "format": data_cfg.get("format"),
                    "synthetic": manifest.get("params"), "root": str(root)},
        "subset": cfg.subset,
        "tracks": len(names),
        "track_list_sha1": hashlib.sha1("\n".join(sorted(names)).encode()).hexdigest()[:12],
        "audio": {"excerpt": "full tracks", "sample_rate": int(data_cfg.sample_rate),
                  "channels": int(data_cfg.channels), "sources": list(data_cfg.sources)},
        "inference": {"segment": cfg.segment, "overlap": float(cfg.overlap), "shifts": int(cfg.shifts),
                      **({"tta": _tta(cfg)} if _tta(cfg) else {}), **_speed(cfg),
                      **{k: model[k] for k in keys if k in model}},
        "model": {"target": model.get("_target_"),
                  "checkpoint_sha256": spec.get("sha256")},
        "mss_version": __version__,
    }


def protocol_note(p: dict) -> str:
    """One line of :func:`protocol` for a table's note."""
    inference = ", ".join(f"{k} {v}" for k, v in p["inference"].items())
    data = "synthetic" if p["dataset"]["synthetic"] else (p["dataset"]["format"] or "folder")
    sha = p["model"]["checkpoint_sha256"]
    return (f"Protocol: {p['metric']}; {p['frames']['win']:g} s frames, hop {p['frames']['hop']:g} s; "
            f"{data} {p['subset']} split, {p['tracks']} tracks (list {p['track_list_sha1']}), "
            f"{p['audio']['excerpt']}, {p['audio']['sample_rate']} Hz; {inference}; "
            + (f"checkpoint sha256 {sha}; " if sha else "") + f"mss {p['mss_version']}.")


# ----------------------------------------------------------------------------------------------- setup


def _musdbhq_config() -> dict:
    """The ``data=musdbhq`` node (root unset): the dataset layout of checkpoints that store no data config."""
    cfg = compose("evaluate", ["data=musdbhq", "data.root=null", "paths.output_dir=unused"])
    return OmegaConf.to_container(cfg.data, resolve=True)


def _resolve(ckpt, model_cfg, data_cfg):
    """``(net_builder_spec, data_cfg, label)``: the network comes from ``ckpt`` or from a model config."""
    if ckpt is not None:
        checkpoint = read_checkpoint(ckpt)  # read once: the network is built from this dict (in each shard too)
        stored = checkpoint["mss"]
        data_cfg = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))
        if data_cfg.pop("from_checkpoint", False):  # data=checkpoint: the stored data config, updated by keys here
            trained_on = dict(stored["data"])
            if "_target_" not in trained_on:  # imports and minimal checkpoints store the audio constants only
                trained_on = {**_musdbhq_config(), **trained_on}
            if trained_on.get("synth"):  # evaluation reads the dataset that is there; generation flags were training's
                trained_on["synth"] = {**trained_on["synth"], "generate": False, "overwrite": False}
            data_cfg = OmegaConf.merge(trained_on, {k: v for k, v in data_cfg.items() if v is not None})
        with open_dict(data_cfg):  # the audio constants are the model's, whatever the data config says
            for key in ("sources", "sample_rate", "channels"):
                data_cfg[key] = stored["data"][key]
        return {"ckpt": str(ckpt), "checkpoint": checkpoint}, data_cfg, Path(ckpt).name
    if model_cfg is None:
        raise ValueError("nothing to evaluate: set ckpt=PATH (a trained checkpoint) or model=oracle_irm2 (an oracle)")
    if data_cfg.get("from_checkpoint", False):
        raise ValueError("data=checkpoint needs ckpt=PATH; with model=... choose a dataset, e.g. data=musdbhq "
                         "data.root=DIR or data=synth")
    model = OmegaConf.to_container(model_cfg, resolve=True)
    data = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))
    label = model["_target_"].rsplit(".", 1)[-1]
    if model.get("kind"):  # oracles: oracle_irm2, oracle_ibm1, oracle_mwf, oracle_mix
        alpha = f"{float(model['alpha']):g}" if model["kind"] in ("irm", "ibm") else ""
        label = f"oracle_{model['kind']}{alpha}"
    return {"model": model}, data, label


def _build(spec: dict, device) -> torch.nn.Module:
    if "ckpt" in spec:
        return model_from_checkpoint(spec["checkpoint"], spec["ckpt"], map_location=device)
    return build_model(spec["model"]).to(device).eval()


def _tracks(data_cfg, subset: str):
    if subset not in ("test", "valid", "train"):
        raise ValueError(f"evaluation.subset={subset!r}: expected test, valid or train")
    datamodule = instantiate(data_cfg, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("test" if subset == "test" else "fit")
    tracks = datamodule.track_dataset(subset)
    if len(tracks) == 0:
        raise ValueError(f"{datamodule.wav_root}: no {subset} tracks to evaluate")
    return datamodule, tracks


def _shard_worker(spec, data_cfg, cfg, indices, out, device) -> list[str]:
    """One process of ``evaluation.devices``: separate and score the tracks ``indices`` on ``device``."""
    net = _build(spec, device)
    datamodule, tracks = _tracks(data_cfg, cfg.subset)
    store = _estimate_store(spec, cfg, datamodule.wav_root)
    sources, sr = list(data_cfg.sources), int(data_cfg.sample_rate)
    done = [_process(net, tracks[i], sources, sr, cfg, out, device, device if cfg.backend == "mss" else None, store)
            for i in indices]
    _log_reuse(store[0])
    return done


def _log_reuse(cache: EstimateCache) -> None:
    if cache.folder is not None and cache.hits + cache.misses:
        log.info("estimate cache %s: %d of %d tracks' estimates reused (no separation)", cache.folder, cache.hits,
                 cache.hits + cache.misses)


# ----------------------------------------------------------------------------------------------- entry point


def evaluate(ckpt: str | Path | None, data_cfg: DictConfig, eval_cfg: DictConfig, out_dir: str | Path,
             model_cfg: DictConfig | None = None) -> pd.DataFrame:
    """Separate and score every track of the ``eval_cfg.subset`` split (test, valid or train) of ``data_cfg`` with the
    network of ``ckpt`` (or the model config ``model_cfg``, e.g. an oracle); returns the results table (rows: sources
    + mean)."""
    out = Path(out_dir)
    cfg = eval_cfg
    spec, data_cfg, label = _resolve(ckpt, model_cfg, data_cfg)
    if "ckpt" in spec:
        spec["sha256"] = _sha256(spec["ckpt"])  # the model's identity: estimate cache keys and protocol
    sources, sr = list(data_cfg.sources), int(data_cfg.sample_rate)
    datamodule, tracks = _tracks(data_cfg, cfg.subset)
    names = [t.name for t in tracks.tracks]
    signature = _signature(sources, cfg)
    todo = [i for i, n in enumerate(names) if not (cfg.resume and _done(out, cfg.subset, n, signature))]
    if len(todo) < len(names):
        log.info("resume: %d of %d tracks already evaluated in %s", len(names) - len(todo), len(names), out)
    metrics_device = cfg.get("metrics_device") or "cpu"
    if todo and cfg.get("devices"):
        devices = list(cfg.devices)
        shards = [todo[k::len(devices)] for k in range(len(devices))]
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(len(devices), mp_context=ctx) as pool:
            jobs = [pool.submit(_shard_worker, spec, data_cfg, cfg, shard, out, dev)
                    for shard, dev in zip(shards, devices) if shard]
            for job in jobs:
                for name in job.result():
                    log.info("evaluated %s", name)
    elif todo:
        device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        net = _build(spec, device)
        store = _estimate_store(spec, cfg, datamodule.wav_root)
        bar = tqdm(total=len(todo), desc=f"evaluate {label}", unit="track")
        if cfg.workers > 1:
            # spawn, not fork: a forked child of a process that already ran torch's thread pool can hang in its first
            # parallel op; each worker gets its share of the cores at most (bss_eval_v4 then takes, per track, the
            # cores free at the time; the workers inherit OMP_WAIT_POLICY=PASSIVE from import mss)
            threads = max(1, torch.get_num_threads() // cfg.workers)
            with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"),
                                     initializer=torch.set_num_threads, initargs=(threads,)) as pool:
                pending: deque = deque()
                for i in todo:
                    while len(pending) >= cfg.workers:  # bounded queue: peak memory independent of the track count
                        pending.popleft().result()
                        bar.update()
                    pending.append(_process(net, tracks[i], sources, sr, cfg, out, device, metrics_device, store,
                                            pool))
                for job in pending:
                    job.result()
                    bar.update()
        else:
            for i in todo:
                _process(net, tracks[i], sources, sr, cfg, out, device, metrics_device, store)
                bar.update()
        bar.close()
        _log_reuse(store[0])
    stamp = protocol(spec, data_cfg, cfg, names, datamodule.wav_root)
    atomic_write_text(out / "protocol.json", json.dumps(stamp, indent=2) + "\n")
    return report(out, names, sources, cfg, title=f"{label} on {datamodule.wav_root.name}/{cfg.subset} "
                                                  f"({len(names)} tracks)", note=protocol_note(stamp))


def report(out: Path, names: list[str], sources: list[str], cfg, title: str, note: str | None = None) -> pd.DataFrame:
    """Read the per-track files of an evaluation directory and write its report (:func:`mss.report.write_evaluation`)
    and the list of tracks whose ISR/SIR/SAR are unreliable."""
    stores, nsdrs, flagged, whole = [], {s: [] for s in sources}, [], {}
    for name in names:
        json_path, info_path = _paths(out, cfg.subset, name)
        stores.append(read_track_json(json_path).df)
        info = json.loads(info_path.read_text())
        for s in sources:
            nsdrs[s].append(info["nSDR"][s])
        for label, values in info.get("whole_track", {}).items():
            for s in sources:
                whole.setdefault(label, {k: [] for k in sources})[s].append(values[s])
        if not info.get("reliable", True):
            errors = info.get("error_db") or {}
            flagged.append(f"{name}: " + ", ".join(
                f"{s} (ISR/SIR/SAR error up to {errors[s]:.2g} dB)" if errors.get(s) is not None else s
                for s in info.get("unreliable_sources") or sources))
    (out / "ill_conditioned_tracks.txt").unlink(missing_ok=True)
    if flagged:
        log.warning("ISR/SIR/SAR may be off by more than 0.01 dB (ill-conditioned references) for %d track(s): %s",
                    len(flagged), "; ".join(flagged))
        atomic_write_text(out / "ill_conditioned_tracks.txt", "\n".join(flagged) + "\n")
    metric_note = "BSS Eval v4" + (" (SDR only)" if cfg.get("sdr_only") else "") + f", backend {cfg.backend}"
    return write_evaluation(out, pd.concat(stores, ignore_index=True), nsdrs, sources, title=title,
                            console_title=f"{len(names)} {cfg.subset} tracks — {metric_note} + nSDR",
                            plots=cfg.get("plots", True), win=float(cfg.win), note=note, whole_track=whole)


@hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.get("ckpt") is None and cfg.get("model") is not None and cfg.data.get("from_checkpoint", False):
        raise ValueError("data=checkpoint needs ckpt=PATH; with model=... choose a dataset, e.g. data=musdbhq "
                         "data.root=DIR or data=synth")
    out = Path(cfg.paths.output_dir)
    save_run_info(cfg, out, print_tree=False)
    from mss.pretrained.registry import resolve_checkpoint

    evaluate(resolve_checkpoint(cfg.get("ckpt")), cfg.data, cfg.evaluation, out, model_cfg=cfg.get("model"))
    log.info("results written to %s", out)


if __name__ == "__main__":
    main()
