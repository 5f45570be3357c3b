"""Valence/arousal for models without a regression head: the expected AffectNet class centroid."""

from __future__ import annotations

import csv
from functools import lru_cache
from importlib.resources import files

import numpy as np

from ..schema import EXPRESSIONS


@lru_cache(maxsize=1)
def centroids() -> np.ndarray:
    """(8, 2) per-class mean (valence, arousal) in canonical order, from the bundled CSV."""
    text = files("cage_cli.data").joinpath("affectnet_va_centroids.csv").read_text()
    rows = list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))
    by_name = {r["expression"]: (float(r["valence_mean"]), float(r["arousal_mean"])) for r in rows}
    return np.array([by_name[e] for e in EXPRESSIONS], dtype=np.float32)


def centroid_va(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expected (valence, arousal) under ``probs`` (N, 8; NaN = class absent from the model).

    Absent classes contribute nothing; the probabilities of the present ones sum to 1.
    Summed class by class, not with a matrix product, whose rounding depends on N (a face's
    values must not depend on the faces computed with it).
    """
    p = np.nan_to_num(probs, nan=0.0)
    va = np.zeros((len(p), 2), np.float32)
    for k, centroid in enumerate(centroids()):
        va += p[:, k, None] * centroid
    return va[:, 0], va[:, 1]
