"""Stage 4: classify faces. Crops from many frames -> batched model calls -> output rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from .decode import Frame
from .detect import Faces
from .models import ExpressionModel
from .preprocess import crop_faces
from .schema import EXPRESSIONS, LANDMARK_COLUMNS, PROB_COLUMNS, SCHEMA
from .workers import Results, Workers


def predict_faces(model: ExpressionModel, frames: list[Frame], faces: list[Faces],
                  batch_size: int) -> dict[str, np.ndarray]:
    """Predictions for every face of every frame, concatenated in frame order."""
    return concat(submit_predictions(model, frames, faces, batch_size).get())


def submit_predictions(model: ExpressionModel, frames: list[Frame], faces: list[Faces],
                       batch_size: int, pool: Workers | None = None
                       ) -> Results:
    """Crop the faces and start classifying them; ``.get()`` gives the predictions. With a
    CPU ``pool``, the faces are split evenly over its threads."""
    crops = [crop_faces(f.image, d.boxes, model.config,
                        whole=d.source == "whole_image")
             for f, d in zip(frames, faces, strict=True) if len(d)]
    if not crops:
        return Results([model.predict(torch.zeros((0, 1, 1, 1), dtype=torch.uint8))])
    x = torch.cat(crops)
    if model.device.type == "cuda":
        x = x.pin_memory()
    pool = pool if model.device.type == "cpu" else None
    if pool is not None:
        batch_size = min(batch_size, -(-len(x) // pool.n))
    chunks = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    return Results.map(pool, model.predict, chunks)


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One dict of arrays from the per-chunk predictions."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def to_rows(model: ExpressionModel, frames: list[Frame], faces: list[Faces],
            preds: dict[str, np.ndarray], keep_empty: bool = False) -> pa.RecordBatch:
    """One row per face (and, with keep_empty, one null-face row per frame without faces)."""
    cols: dict[str, list] = {name: [] for name in SCHEMA.names}
    probs, valence, arousal = preds["probs"], preds["valence"], preds["arousal"]
    j = 0  # position in the concatenated predictions
    for frame, det in zip(frames, faces, strict=True):
        h, w = frame.image.shape[:2]
        n = len(det)
        if n == 0 and not keep_empty:
            continue
        k = max(n, 1)
        cols["source"] += [frame.source] * k
        cols["media"] += [frame.media] * k
        cols["frame_index"] += [frame.index] * k
        cols["timestamp_s"] += [frame.timestamp] * k
        cols["frame_width"] += [w] * k
        cols["frame_height"] += [h] * k
        cols["model"] += [model.name] * k
        if n == 0:
            for name in SCHEMA.names:
                if len(cols[name]) < len(cols["source"]):
                    cols[name].append(None)
            continue
        p = probs[j : j + n]
        cols["face_index"] += list(range(n))
        cols["track_id"] += det.track_ids.tolist() if det.track_ids is not None else [None] * n
        cols["face_source"] += [det.source] * n
        for c, name in enumerate(("x1", "y1", "x2", "y2")):
            cols[name] += _floats(det.boxes[:, c])
        cols["det_score"] += _floats(det.scores)
        lm = det.landmarks.reshape(n, 10)
        for c, name in enumerate(LANDMARK_COLUMNS):
            cols[name] += _floats(lm[:, c])
        for c, name in enumerate(PROB_COLUMNS):
            cols[name] += _floats(p[:, c])
        cols["label"] += _labels(p)
        cols["valence"] += _floats(valence[j : j + n])
        cols["arousal"] += _floats(arousal[j : j + n])
        cols["va_method"] += [model.config.va_method] * n
        j += n
    return pa.RecordBatch.from_pydict(cols, schema=SCHEMA)


def _labels(probs: np.ndarray) -> list[str | None]:
    """The most probable class of each row; None for rows without probabilities (models
    without classes, e.g. cage-maxvit-t-va)."""
    best = np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1).tolist()
    known = (~np.isnan(probs).all(axis=1)).tolist()
    return [EXPRESSIONS[b] if ok else None for b, ok in zip(best, known, strict=True)]


def _floats(a: np.ndarray) -> list[float | None]:
    """float32 values as a list, NaN -> None (null in the output)."""
    return [None if v != v else v for v in a.astype(np.float32).tolist()]
