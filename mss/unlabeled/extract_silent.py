"""Excerpts of unlabeled mixtures where one source is silent (Demucs 2019 unlabeled remixing), see
:mod:`mss.unlabeled`.

Commands (``key=value`` arguments)::

    # oracle detector on supervised stems (MUSDB layout): relative volume <= threshold_db
    python -m mss.unlabeled.extract_silent input=DIR out=INDEX_DIR detector=energy [threshold_db=-30 min_duration=5]
    # train the per-frame presence classifier on a supervised set, then extract from unlabeled mixtures
    python -m mss.unlabeled.extract_silent train root=MUSDB_DIR out=detector.pt [steps=300 valid_tracks=musdb]
    python -m mss.unlabeled.extract_silent input=MIXES_DIR out=INDEX_DIR detector=classifier detector_path=detector.pt
    # precision / recall of an index against the stems of the same tracks
    python -m mss.unlabeled.extract_silent score input=DIR index=INDEX_DIR

Extraction is resumable: inputs already processed with the same detector and settings are skipped. The index
(``INDEX_DIR/index.json``) feeds training with ``module/unlabeled=remix module.unlabeled.dataset.index=INDEX_DIR``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from mss import unlabeled as U


@dataclass
class ExtractConfig:
    input: str = MISSING
    out: str = MISSING
    detector: str = "energy"
    detector_path: str | None = None
    threshold_db: float = -30.0
    min_duration: float = 5.0
    sources: list[str] = field(default_factory=lambda: ["drums", "bass", "other", "vocals"])


@dataclass
class TrainConfig:
    root: str = MISSING
    out: str = MISSING
    sources: list[str] = field(default_factory=lambda: ["drums", "bass", "other", "vocals"])
    subset: str = "train"
    valid_tracks: Any = "musdb"
    steps: int = 300
    batch_size: int = 8
    segment: float = 6.0
    lr: float = 5.0e-4
    seed: int = 0
    channels: int = 16  # PresenceNet width
    hidden: int = 64    # PresenceNet BiGRU size


@dataclass
class ScoreConfig:
    input: str = MISSING
    index: str = MISSING
    silent_db: float = -30.0  # ground truth "silent"; -100 = digital silence (synthetic data)
    sources: list[str] = field(default_factory=lambda: ["drums", "bass", "other", "vocals"])


def _parse(schema, args: list[str]) -> dict:
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_cli(args))
    missing = [k for k in schema.__dataclass_fields__ if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ValueError(f"missing required argument(s): {', '.join(f'{k}=...' for k in missing)}")
    return OmegaConf.to_container(cfg)


def train(opts: dict) -> dict:
    from mss.data.tracks import read_track_list

    root = Path(opts["root"]).expanduser()
    tracks = _tracks(root / opts["subset"], opts["sources"])
    valid = set(read_track_list(opts["valid_tracks"], root, [t.name for t in tracks]))
    net, thresholds, stats = U.train_classifier(
        [t for t in tracks if t.name not in valid], opts["sources"],
        valid_tracks=[t for t in tracks if t.name in valid],
        steps=opts["steps"], batch_size=opts["batch_size"], segment=opts["segment"], lr=opts["lr"], seed=opts["seed"],
        net_kw={"channels": opts["channels"], "hidden": opts["hidden"]})
    U.save_classifier(opts["out"], net, thresholds, stats)
    return stats


def _tracks(folder: Path, sources: list[str]):
    from mss.audio.io import audio_info
    from mss.data.tracks import find_tracks

    first = next((p for p in sorted(folder.rglob("*.wav"))), None)
    if first is None:
        raise FileNotFoundError(f"{folder}: no tracks (expected <track>/<source>.wav)")
    info = audio_info(first)
    return find_tracks(folder, sources, sample_rate=info.sample_rate, channels=info.channels, convert=True)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip())
        return 0
    command = args.pop(0) if args and "=" not in args[0] else "extract"
    try:
        if command == "train":
            stats = train(_parse(TrainConfig, args))
            print(json.dumps(stats, indent=1))
        elif command == "extract":
            opts = _parse(ExtractConfig, args)
            detector = U.make_detector(opts["detector"], opts["detector_path"], opts["threshold_db"])
            index = U.extract(opts["input"], opts["out"], opts["sources"], detector,
                              min_duration=opts["min_duration"])
            print(json.dumps({"seconds": index["seconds"],
                              "excerpts": {s: len(v) for s, v in index["excerpts"].items()}}, indent=1))
        elif command == "score":
            opts = _parse(ScoreConfig, args)
            scores = U.evaluate_index(U.read_index(opts["index"]), opts["input"], opts["sources"],
                                      silent_db=opts["silent_db"])
            for s, v in scores.items():
                print(f"{s:>8}: precision {v['precision']:.3f} recall {v['recall']:.3f} "
                      f"({v['excerpt_frames']} excerpt frames, {v['silent_frames']} silent frames)")
        else:
            raise ValueError(f"unknown command {command!r}: expected extract (default), train or score")
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
