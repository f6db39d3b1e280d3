"""Collect training runs and sweeps into one comparison: ``python -m mss.results DIR [DIR ...] [--out OUT]``.

Each ``DIR`` is a run directory (it holds ``config.yaml``) or any folder above run directories (a multirun / Optuna
sweep, a ``logs/`` tree); runs are found recursively. Per run it reads the resolved config, ``git_sha.txt``, the
Lightning CSV log (``csv/metrics.csv``), the test evaluation table (``eval/results.csv``) and museval's per-track
JSON files (``eval/museval/<subset>/*.json``). Written to ``OUT`` (default: ``<DIR>/results`` for one ``DIR``):

- ``results.{md,csv,tex}``: one row per run; the config keys whose values differ between runs, then per source the
  test SDR (BSS Eval v4: median over 1 s frames per track, then the median over tracks, SiSEC18, or the mean with
  ``--stat mean``; column names say which), their mean over sources, and the best validation nSDR (MDX
  whole-track SDR, mean over validation tracks) with per-source values at that epoch;
- ``sdr_bars.png``: test (or, without evaluation, validation) SDR per source, one bar per run;
- ``sdr_boxes.png``: SiSEC-style box plots of the per-track SDR over test tracks, per source and run;
- ``learning_curves.png``: training loss and validation nSDR per epoch, one line per run;
- ``results_ci.*``, ``paired.*`` + ``paired.png``, ``results_by_config.*``: bootstrap CIs, paired comparisons and
  seeds folded (:func:`write_statistics`, :mod:`mss.report.statistics`).

``--with-sisec18 DIR`` adds the published SiSEC 2018 submissions (a local copy of sigsep-mus-2018) as rows, boxes
and compared methods; runs evaluated under different protocols (``eval/protocol.json``) need ``--allow-mixed``.

The same functions back ``notebooks/ablations.ipynb``: :func:`find_runs`, :func:`load_runs`, :func:`results_table`,
:func:`track_scores`; tables, figures (``mss.report.plot_sdr_bars``, ``plot_learning_curves``, ``plot_boxes``) and
SDR definitions come from :mod:`mss.report` (this module only finds and reads runs).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from mss.report import (
    comparison_table,
    definition,
    load_method,
    plot_boxes,
    plot_learning_curves,
    plot_paired,
    plot_sdr_bars,
    save_figure,
    sources_of,
    write_table,
)
from mss.report.statistics import paired, paired_cells, seed_rows, summary, summary_cells
from mss.utils import atomic_write_text

log = logging.getLogger("mss.results")

STATS = ("median", "mean")  # over test tracks, of the per-track medians over frames
VAL_NOTE = "val nSDR: MDX whole-track SDR, mean over validation tracks, at the epoch with the best mean."
# config keys that name a run's own folders (always different, never a factor of the comparison)
_PATH_KEYS = ("dirpath", "save_dir", "default_root_dir", "output_dir", "cache_dir", "log_dir", "ckpt_path")
_IGNORED_PREFIXES = ("paths.", "hydra.")


@dataclass
class Run:
    """One training run directory, loaded."""

    path: Path
    name: str
    config: dict = field(default_factory=dict)  # flattened resolved config ({"model.filters": "[16, 32]", ...})
    git_sha: str = "unknown"
    metrics: pd.DataFrame | None = None  # Lightning CSV log (rows: logging events)
    results: pd.DataFrame | None = None  # eval/results.csv (index: sources + "mean")
    protocol: dict | None = None  # eval/protocol.json (mss.evaluate.protocol)

    @property
    def epochs(self) -> pd.DataFrame:
        """Per-epoch values of the CSV log (one row per epoch; step-level columns dropped)."""
        if self.metrics is None or "epoch" not in self.metrics:
            return pd.DataFrame()
        return self.metrics.groupby("epoch").last(skipna=True)

    def best_validation(self, metric: str = "val/nsdr") -> pd.Series | None:
        """The epoch row with the best ``metric`` (max), or ``None`` without validation."""
        epochs = self.epochs
        if metric not in epochs or epochs[metric].isna().all():
            return None
        return epochs.loc[epochs[metric].idxmax()]


def _flatten(node, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        out: dict[str, str] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node if isinstance(node, (int, float, str, bool)) or node is None else json.dumps(node)}


def find_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run directories (holding ``config.yaml``) at or below each path, sorted, without duplicates."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run or sweep directory")
        candidates = [p] if (p / "config.yaml").is_file() else sorted(c.parent for c in p.rglob("config.yaml"))
        for c in candidates:
            if ".hydra" not in c.parts and "results" != c.name:
                found[c.resolve()] = None
    if not found:
        raise FileNotFoundError(f"no run directories (with config.yaml) under {', '.join(map(str, paths))}")
    return list(found)


def load_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """Read what a run directory holds (missing pieces stay ``None``)."""
    path = Path(path)
    config_file = path / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a run directory (no config.yaml)")
    run = Run(path=path, name=name or path.name, config=_flatten(yaml.safe_load(config_file.read_text()) or {}))
    if (path / "git_sha.txt").is_file():
        run.git_sha = (path / "git_sha.txt").read_text().strip()
    csvs = sorted(path.glob("csv/**/metrics.csv")) or sorted(path.glob("**/metrics.csv"))
    if csvs:
        run.metrics = pd.read_csv(csvs[-1])
    if (path / "eval" / "results.csv").is_file():
        run.results = pd.read_csv(path / "eval" / "results.csv", index_col=0)
    if (path / "eval" / "protocol.json").is_file():
        run.protocol = json.loads((path / "eval" / "protocol.json").read_text())
    return run


# what must agree for test numbers to share a table (the model's own settings, the backend, paths and the mss
# version are recorded in protocol.json but may differ)
COMPARED = ("metric", "frames", "dataset.format", "dataset.synthetic", "subset", "tracks", "track_list_sha1",
            "audio", "inference.segment", "inference.overlap", "inference.shifts")


class MixedProtocolError(ValueError):
    """Runs evaluated under different protocols were put in one table without ``allow_mixed``."""


def _protocol_value(protocol: dict, key: str):
    node = protocol
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def protocol_differences(runs: Sequence[Run]) -> dict[str, dict[str, object]]:
    """``{key: {run: value}}`` for every :data:`COMPARED` protocol key on which evaluated runs disagree."""
    stamped = [r for r in runs if r.protocol is not None]
    out = {}
    for key in COMPARED:
        values = {r.name: _protocol_value(r.protocol, key) for r in stamped}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            out[key] = values
    return out


def check_protocols(runs: Sequence[Run], allow_mixed: bool = False) -> str:
    """The protocol line of a table of ``runs``: the common protocol's summary, or, with ``allow_mixed``, a
    footnote listing the differences. Different protocols without ``allow_mixed``: :class:`MixedProtocolError`."""
    differences = protocol_differences(runs)
    if differences and not allow_mixed:
        listed = "; ".join(f"{key}: " + ", ".join(f"{run}={value}" for run, value in values.items())
                           for key, values in differences.items())
        raise MixedProtocolError(f"the runs were evaluated under different protocols ({listed}); pass "
                                 "--allow-mixed (allow_mixed=True) to put them in one table with the differences "
                                 "footnoted")
    if differences:
        return "Protocols differ: " + "; ".join(
            f"{key}: " + ", ".join(f"{run}={value}" for run, value in values.items())
            for key, values in differences.items()) + "."
    first = next((r.protocol for r in runs if r.protocol is not None), None)
    if first is None:
        return ""
    return (f"Protocol: {first['metric']}; {first['frames']['win']:g} s frames; {first['subset']} split, "
            f"{first['tracks']} tracks (list {first['track_list_sha1']}); {first['audio']['sample_rate']} Hz.")


def load_runs(paths: Sequence[str | os.PathLike]) -> list[Run]:
    """All runs under ``paths``, named by their path relative to the deepest common folder."""
    dirs = find_runs(paths)
    root = Path(os.path.commonpath(dirs)) if len(dirs) > 1 else dirs[0].parent
    return [load_run(d, name=str(d.relative_to(root))) for d in dirs]


def differing_config(runs: Sequence[Run]) -> pd.DataFrame:
    """Config keys whose values differ between runs (run folders and Hydra internals excluded)."""
    keys = sorted({k for r in runs for k in r.config})
    keys = [k for k in keys if not k.startswith(_IGNORED_PREFIXES) and not k.endswith(_PATH_KEYS)]
    table = pd.DataFrame([{k: str(r.config.get(k)) for k in keys} for r in runs], index=[r.name for r in runs])
    return table[[k for k in keys if table[k].nunique() > 1]]  # values as written in config.yaml (strings)


def track_scores(runs: Sequence[Run], subset: str = "test") -> pd.DataFrame:
    """Per-track medians over frames of every run that was evaluated (``eval/museval/<subset>/*.json``): the long
    ``method, track, target, metric, score`` DataFrame of :func:`mss.report.load_method`, ``method`` = run name."""
    frames = [load_method(r.path / "eval", method=r.name, subset=subset) for r in runs
              if any((r.path / "eval" / "museval" / subset).glob("*.json"))]
    if not frames:
        return pd.DataFrame(columns=["method", "track", "target", "metric", "score"])
    return pd.concat(frames, ignore_index=True)


SISEC18_URL = "https://github.com/sigsep/sigsep-mus-2018"


def sisec18_scores(folder: str | os.PathLike, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-track medians of the published SiSEC 2018 submissions in a local copy of sigsep-mus-2018
    (``<folder>/submissions/<METHOD>/test/<track>.json``, museval's per-track JSON; ``folder`` may also be the
    ``submissions`` folder itself), as :func:`track_scores` rows with ``method = "SiSEC18 <METHOD>"``."""
    root = Path(folder)
    submissions = root / "submissions" if (root / "submissions").is_dir() else root
    found = {p.name: p for p in sorted(submissions.iterdir()) if any((p / "test").glob("*.json"))} \
        if submissions.is_dir() else {}
    if not found:
        raise FileNotFoundError(f"{folder}: no SiSEC18 submissions (expected <DIR>/submissions/<METHOD>/test/"
                                f"<track>.json, museval's per-track JSON); get them once with `git clone "
                                f"{SISEC18_URL}` and pass that folder")
    unknown = sorted(set(methods or ()) - set(found))
    if unknown:
        raise ValueError(f"{folder}: no SiSEC18 submission {unknown}; available: {sorted(found)}")
    return pd.concat([load_method(found[m], method=f"SiSEC18 {m}") for m in (methods or found)], ignore_index=True)


def results_table(runs: Sequence[Run], stat: str = "median", metric: str = "SDR",
                  scores: pd.DataFrame | None = None, allow_mixed: bool = False) -> pd.DataFrame:
    """One row per run: differing config, test ``metric`` per source (``stat`` over tracks of the per-track
    medians, :func:`mss.report.comparison_table`) and their mean, the number of test tracks, the best validation
    nSDR and its per-source values. Column names carry the convention; ``table.attrs["note"]`` defines them and
    states the runs' evaluation protocol (:func:`check_protocols`: different protocols need ``allow_mixed``)."""
    if stat not in STATS:
        raise ValueError(f"stat={stat!r}: expected one of {STATS}")
    protocol_line = check_protocols(runs, allow_mixed)
    scores = track_scores(runs) if scores is None else scores
    names = [r.name for r in runs]  # then the methods of `scores` that are not runs (e.g. SiSEC18 submissions)
    test = pd.DataFrame(index=names + [m for m in dict.fromkeys(scores.get("method", [])) if m not in names])
    if not scores.empty:
        comparison = comparison_table(scores, metric=metric, stat=stat)
        label = f"test {metric} ({stat})"
        test = comparison.rename(columns=lambda c: "test tracks" if c == "tracks" else f"{label} {c}").reindex(
            test.index)
    rows = []
    for run in runs:
        row: dict[str, float] = {}
        best = run.best_validation()
        if best is not None:
            row["val nSDR best"] = float(best["val/nsdr"])
            row["best val epoch"] = int(best.name)
            row.update({f"val nSDR {k.split('/')[-1]}": float(v) for k, v in best.items()
                        if k.startswith("val/nsdr/") and not (isinstance(v, float) and math.isnan(v))})
        rows.append(row)
    val = pd.DataFrame(rows, index=[r.name for r in runs])
    if "best val epoch" in val:
        val["best val epoch"] = val["best val epoch"].astype("Int64")
    if "test tracks" in test:
        test["test tracks"] = test["test tracks"].astype("Int64")
    table = pd.concat([differing_config(runs), test, val], axis=1).reindex(test.index)
    table.index.name = "run"
    table.attrs["note"] = f"test {metric} ({stat}): {definition(metric, stat)}. {VAL_NOTE}" + (
        f" {protocol_line}" if protocol_line else "")
    return table


# -- outputs ---------------------------------------------------------------------------------------------------------
def write_statistics(scores: pd.DataFrame, out: Path, stat: str = "median", level: float = 0.95,
                     resamples: int = 10_000, seed: int = 0) -> dict[str, Path]:
    """``results_ci.{md,csv,tex}`` (per run and source: ``stat`` over test tracks with its bootstrap CI) and, for two
    runs or more, ``paired.{md,csv,tex}`` + ``paired.png`` (every pair's per-track difference with its CI, Wilcoxon
    signed-rank, Holm-corrected; see :mod:`mss.report.statistics`). The CSVs hold the full numbers."""
    kw = dict(metric="SDR", stat=stat, level=level, resamples=resamples, seed=seed)
    table = summary(scores, **kw)
    written = {"ci": write_table(summary_cells(table), out, "results_ci", title=f"test SDR ({stat}) with CIs",
                                 note=table.attrs["note"], formats=("md", "tex"))[0]}
    atomic_write_text(out / "results_ci.csv", table.to_csv())
    if scores["method"].nunique() > 1:
        pairs = paired(scores, **kw)
        written["paired"] = write_table(paired_cells(pairs), out, "paired", title="paired differences (test SDR)",
                                        note=pairs.attrs["note"], formats=("md", "tex"))[0]
        atomic_write_text(out / "paired.csv", pairs.to_csv())
        written["paired_plot"] = plot_paired(pairs, out / "paired.png")
    return written


def write_all(runs: Sequence[Run], out: str | os.PathLike, stat: str = "median", level: float = 0.95,
              resamples: int = 10_000, seed: int = 0, allow_mixed: bool = False,
              extra_scores: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write the tables (Markdown, CSV, LaTeX), the statistics (:func:`write_statistics`), the seed aggregation
    (``results_by_config``: runs that differ only in ``seed`` as one row, mean ± std across seeds) and the plots that
    the runs' data allow; returns the paths. ``extra_scores``: per-track scores of other methods (e.g.
    :func:`sisec18_scores`), added as rows, to the box plots and to the statistics."""
    out = Path(out)
    scores = track_scores(runs)
    if extra_scores is not None:
        scores = pd.concat([scores, extra_scores], ignore_index=True)
    table = results_table(runs, stat=stat, scores=scores, allow_mixed=allow_mixed)
    md, csv, tex = write_table(table, out, "results", title=f"{len(runs)} runs", note=table.attrs["note"])
    written = {"md": md, "csv": csv, "tex": tex}
    by_config = seed_rows(table)
    if by_config is not None:
        written["by_config"] = write_table(by_config, out, "results_by_config", title="mean ± std across seeds",
                                           note=table.attrs["note"])[0]
    if not scores.empty:
        written.update(write_statistics(scores, out, stat, level, resamples, seed))
    if sources_of(table, f"test SDR ({stat})") or sources_of(table, "val nSDR"):
        written["bars"] = save_figure(plot_sdr_bars(table), out / "sdr_bars.png")
    if not scores.empty:
        written["boxes"] = plot_boxes(scores, out / "sdr_boxes.png")
    if any(not r.epochs.empty for r in runs):
        written["curves"] = save_figure(plot_learning_curves(runs), out / "learning_curves.png")
    return written


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(prog="python -m mss.results", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dirs", nargs="+", help="run directories or folders above them (sweeps, logs/)")
    parser.add_argument("--out", help="output folder (default: <DIR>/results for one DIR, else ./results)")
    parser.add_argument("--stat", choices=STATS, default="median",
                        help="statistic over test tracks of the per-track SDR medians (default: median, SiSEC18)")
    parser.add_argument("--level", type=float, default=0.95, help="confidence level of the bootstrap CIs")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (BCa)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--with-sisec18", metavar="DIR",
                        help=f"add the SiSEC18 submissions of a local copy of {SISEC18_URL} (MUSDB18 test set)")
    parser.add_argument("--sisec18-methods", help="comma-separated SiSEC18 submissions to add (default: all found)")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="put runs evaluated under different protocols in one table (differences footnoted)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = load_runs(args.dirs)
    out = Path(args.out) if args.out else (Path(args.dirs[0]) / "results" if len(args.dirs) == 1 else Path("results"))
    sisec = None if args.with_sisec18 is None else sisec18_scores(
        args.with_sisec18, args.sisec18_methods.split(",") if args.sisec18_methods else None)
    written = write_all(runs, out, stat=args.stat, level=args.level, resamples=args.resamples, seed=args.seed,
                        allow_mixed=args.allow_mixed, extra_scores=sisec)
    print(written["md"].read_text())
    log.info("%d runs; written: %s", len(runs), ", ".join(str(p) for p in written.values()))
    return written


def cli() -> None:
    """The ``mss-results`` console script: :func:`main` with its return value (the files written) dropped, which the
    script wrapper would otherwise pass to ``sys.exit``."""
    main()


if __name__ == "__main__":
    cli()
