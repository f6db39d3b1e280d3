"""Unlabeled-data remixing (Demucs 2019, sections 4 and 5.2): silent-source detectors and their training
(:mod:`~mss.unlabeled.detectors`, :mod:`~mss.unlabeled.presence`), extraction of excerpts where a source is silent
and the dataset serving them (:mod:`~mss.unlabeled.excerpts`), and the command line
(``python -m mss.unlabeled.extract_silent``). The extra training step itself is
:class:`mss.lightning.module.SeparationModule`'s (``module/unlabeled=remix``)."""

from mss.unlabeled.detectors import (
                                     ClassifierDetector,
                                     EnergyDetector,
                                     make_detector,
                                     relative_volume,
                                     runs,
                                     save_classifier,
                                     train_classifier,
)
from mss.unlabeled.excerpts import INDEX, UnlabeledExcerpts, evaluate_index, extract, read_index

__all__ = ["INDEX", "ClassifierDetector", "EnergyDetector", "UnlabeledExcerpts", "evaluate_index", "extract",
           "make_detector", "read_index", "relative_volume", "runs", "save_classifier", "train_classifier"]
