"""Evaluate a checkpoint on a test split: ``python -m mss.evaluate ckpt=PATH [data=... data.root=...]``.

Every track is separated with overlap-add inference and scored with museval BSS Eval v4 (1 s frames) and nSDR
(MDX whole-track SDR). Written under the run directory: ``museval/<subset>/<track>.json`` (museval's per-track
format), ``results.md`` / ``results.csv`` (median over frames per track, then median — the SiSEC18 convention — and
mean over tracks, both labelled; nSDR is the mean over tracks), and optionally ``estimates/<track>/<source>.wav``.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mss.audio.io import save_audio
from mss.metrics import aggregate, evaluate_track, nsdr, save_track_json
from mss.pretrained import load_model, read_checkpoint
from mss.report import print_table, results_table, write_results
from mss.run import save_run_info
from mss.separation.apply import apply_model

log = logging.getLogger("mss.evaluate")


def _score(references, estimates, sources, name, sample_rate, win, hop, json_path):
    store = evaluate_track(references, estimates, sources, name, sample_rate=sample_rate, win=win, hop=hop)
    save_track_json(store, json_path)
    return store.df


def evaluate(ckpt: str | Path, data_cfg: DictConfig, eval_cfg: DictConfig, out_dir: str | Path) -> pd.DataFrame:
    """Separate and score every track of the ``eval_cfg.subset`` split (test, valid or train) of ``data_cfg``;
    returns the results table (rows: sources + mean)."""
    out = Path(out_dir)
    stored = read_checkpoint(ckpt)["mss"]
    data_cfg = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))
    if data_cfg.pop("from_checkpoint", False):  # data=checkpoint: the stored data config, updated by keys set here
        data_cfg = OmegaConf.merge(stored["data"], {k: v for k, v in data_cfg.items() if v is not None})
    with open_dict(data_cfg):  # the audio constants are the model's, whatever the data config says
        for key in ("sources", "sample_rate", "channels"):
            data_cfg[key] = stored["data"][key]
    sources, sr = list(data_cfg.sources), int(data_cfg.sample_rate)
    device = torch.device(eval_cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    net = load_model(ckpt, map_location=device)
    datamodule = instantiate(data_cfg, _convert_="all")
    if eval_cfg.subset not in ("test", "valid", "train"):
        raise ValueError(f"evaluation.subset={eval_cfg.subset!r}: expected test, valid or train")
    datamodule.prepare_data()
    datamodule.setup("test" if eval_cfg.subset == "test" else "fit")
    tracks = datamodule.track_dataset(eval_cfg.subset)
    if len(tracks) == 0:
        raise ValueError(f"{datamodule.wav_root}: no {eval_cfg.subset} tracks to evaluate")
    segment = None if eval_cfg.segment is None else round(eval_cfg.segment * sr)
    nsdrs: dict[str, list[float]] = {s: [] for s in sources}
    with ProcessPoolExecutor(eval_cfg.workers) if eval_cfg.workers > 1 else nullcontext() as pool:
        frames = _separate_and_score(net, tracks, sources, sr, segment, eval_cfg, device, out, nsdrs, pool)
    table = results_table(aggregate(frames), sources,
                          extra={"nSDR (mean)": {s: sum(v) / len(v) for s, v in nsdrs.items()}})
    write_results(table, out, title=f"{Path(ckpt).name} on {datamodule.wav_root.name}/{eval_cfg.subset} "
                                    f"({len(tracks)} tracks)")
    print_table(table, title=f"{len(tracks)} {eval_cfg.subset} tracks — museval v4 + nSDR")
    return table


def _separate_and_score(net, tracks, sources, sr, segment, eval_cfg, device, out, nsdrs, pool) -> list:
    """Separate every track (in this process) and score it with museval (in ``pool`` when given); returns the
    per-track frame DataFrames and appends each track's nSDR to ``nsdrs``."""
    jobs = []
    for i in range(len(tracks)):
        item = tracks[i]
        mix, refs = item["mixture"], item["stems"]
        est = apply_model(net, mix, segment=segment, overlap=eval_cfg.overlap, batch_size=eval_cfg.batch_size,
                          shifts=eval_cfg.shifts, device=device, progress=True).cpu()
        for s, value in zip(sources, nsdr(refs, est).tolist()):
            nsdrs[s].append(value)
        if eval_cfg.save_estimates:
            for s, wav in zip(sources, est):
                save_audio(out / "estimates" / item["name"] / f"{s}.wav", wav, sr, subtype="FLOAT")
        args = (refs.transpose(1, 2).numpy(), est.transpose(1, 2).numpy(), sources, item["name"], sr,
                eval_cfg.win, eval_cfg.hop, out / "museval" / eval_cfg.subset / f"{item['name']}.json")
        jobs.append(pool.submit(_score, *args) if pool else _score(*args))
        log.info("separated %s (%d/%d)", item["name"], i + 1, len(tracks))
    return [job.result() if pool else job for job in jobs]


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.paths.output_dir)
    save_run_info(cfg, out, print_tree=False)
    evaluate(cfg.ckpt, cfg.data, cfg.evaluation, out)
    log.info("results written to %s", out)


if __name__ == "__main__":
    main()
