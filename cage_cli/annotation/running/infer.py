"""Stage 4: classify faces. Crops from many frames -> batched model calls -> output rows."""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch

from ...models import EmbeddingModel, ExpressionModel
from ...models.registry import CPU_CHUNK
from ...preprocess import crop_faces
from ...schema import EMBEDDING_TYPE, EXPRESSIONS, LANDMARK_COLUMNS, PROB_COLUMNS, SCHEMA, f32
from ..detection.detect import Faces
from ..identity.persons import embed_faces_of
from ..io.decode import Frame
from .workers import Results, Workers


def predict_faces(model: ExpressionModel, frames: list[Frame], faces: list[Faces],
                  batch_size: int) -> dict[str, np.ndarray]:
    """Predictions for every face of every frame, concatenated in frame order."""
    return concat(submit_predictions(model, frames, faces, batch_size).get())


def submit_predictions(model: ExpressionModel, frames: list[Frame], faces: list[Faces],
                       batch_size: int, pool: Workers | None = None,
                       embedder: EmbeddingModel | None = None) -> Results:
    """Start cropping and classifying the faces; ``.get()`` gives the predictions, one dict
    per batch. With a CPU ``pool``, the faces are split evenly over its threads, and each
    thread cuts its own crops, in whole chunks of :data:`CPU_CHUNK` faces where it can.
    With an ``embedder`` (--persons), the faces full detection found (not those followed
    between keyframes) also get a descriptor (``embedding``; NaN for the others)."""
    faces_of = [(f.image, d) for f, d in zip(frames, faces, strict=True) if len(d)]
    n = sum(len(d) for _, d in faces_of)
    if not n:
        return Results([model.predict(torch.zeros((0, 1, 1, 1), dtype=torch.uint8))])
    pool = pool if model.device.type == "cpu" else None
    if pool is not None:  # whole CPU chunks per thread: the model pads a partial one
        share = -(-n // pool.n)
        batch_size = min(batch_size, -(-share // CPU_CHUNK) * CPU_CHUNK)
    # Faces [lo, hi) of the run in frame order, as (image, its boxes there, whole) pieces.
    starts = np.cumsum([0] + [len(d) for _, d in faces_of])
    batches = [[(image, d, slice(max(lo - s, 0), lo + batch_size - s))
                for (image, d), s in zip(faces_of, starts, strict=False)
                if s < lo + batch_size and s + len(d) > lo]
               for lo in range(0, n, batch_size)]
    return Results.map(pool, functools.partial(_crop_predict, model, embedder), batches)


def _crop_predict(model: ExpressionModel, embedder: EmbeddingModel | None,
                  pieces: list[tuple]) -> dict[str, np.ndarray]:
    """Crop one batch of faces (each piece: a frame, its faces, the slice of them in this
    batch) and classify it; with an ``embedder``, embed the keyframe faces too."""
    x = torch.cat([crop_faces(image, d.boxes[part], model.config,
                              whole=d.source == "whole_image") for image, d, part in pieces])
    if model.device.type == "cuda":
        x = x.pin_memory()
    out = model.predict(x)
    if embedder is not None:
        out["embedding"] = embed_faces_of(embedder, [
            (image, d.boxes[part], d.landmarks[part],
             np.full(len(d.boxes[part]), d.links is None)) for image, d, part in pieces])
    return out


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One dict of arrays from the per-chunk predictions."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def to_rows(model: ExpressionModel, frames: list[Frame], faces: list[Faces],
            preds: dict[str, np.ndarray], keep_empty: bool = False) -> pa.RecordBatch:
    """One row per face (and, with keep_empty, one null-face row per frame without faces).
    Float values that are NaN (no detector score, a class the model lacks) are null."""
    counts = np.array([len(d) for d in faces], np.int64)
    per_frame = np.maximum(counts, 1) if keep_empty else counts
    of_row = np.repeat(np.arange(len(frames)), per_frame)  # each row's frame
    has_face = np.repeat(counts > 0, per_frame)  # False on --keep-empty rows
    with_faces = [d for d in faces if len(d)]
    m = int(has_face.sum())

    def per_face(values: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """Face values spread over the rows; NaN on --keep-empty rows."""
        out = np.full((len(of_row), *values.shape[1:]), np.nan, dtype)
        out[has_face] = values
        return out

    def cat(get: Callable[[Faces], np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate([get(d) for d in with_faces]) if with_faces else np.zeros(shape)

    def text(values: list[str | None]) -> pa.Array:
        return _strings([values[i] for i in of_row])

    sizes = np.array([f.image.shape[:2] for f in frames], np.int32).reshape(-1, 2)
    times = np.array([np.nan if f.timestamp is None else f.timestamp for f in frames])
    face_index = per_face(cat(lambda d: np.arange(len(d)), (0,)), np.float64)
    track_ids = per_face(cat(lambda d: np.full(len(d), np.nan) if d.track_ids is None
                             else d.track_ids, (0,)), np.float64)
    shots = np.array([np.nan if d.shot is None else d.shot for d in faces], np.float64)
    boxes = per_face(cat(lambda d: d.boxes, (0, 4)))
    scores = per_face(cat(lambda d: d.scores, (0,)))
    landmarks = per_face(cat(lambda d: d.landmarks.reshape(-1, 10), (0, 10)))
    probs = per_face(preds["probs"][:m])
    valence, arousal = per_face(preds["valence"][:m]), per_face(preds["arousal"][:m])
    labels = np.full(len(of_row), None, object)
    labels[has_face] = _labels(preds["probs"][:m])
    face_source = np.full(len(of_row), None, object)
    face_source[has_face] = [d.source for d in with_faces for _ in range(len(d))]

    cols = {
        "source": text([f.source for f in frames]),
        "media": text([f.media for f in frames]),
        "frame_index": _numbers(np.array([f.index for f in frames])[of_row], pa.int32()),
        "timestamp_s": _numbers(times[of_row], pa.float64()),
        "frame_width": _numbers(sizes[of_row, 1], pa.int32()),
        "frame_height": _numbers(sizes[of_row, 0], pa.int32()),
        "face_index": _numbers(face_index, pa.int32()),
        "track_id": _numbers(track_ids, pa.int32()),
        "shot": _numbers(shots[of_row], pa.int32()),
        "face_source": _strings(face_source.tolist()),
        **{name: _numbers(boxes[:, c], f32) for c, name in enumerate(("x1", "y1", "x2", "y2"))},
        "det_score": _numbers(scores, f32),
        **{name: _numbers(landmarks[:, c], f32) for c, name in enumerate(LANDMARK_COLUMNS)},
        "model": _strings([model.name] * len(of_row)),
        "label": _strings(labels.tolist()),
        **{name: _numbers(probs[:, c], f32) for c, name in enumerate(PROB_COLUMNS)},
        "valence": _numbers(valence, f32),
        "arousal": _numbers(arousal, f32),
        "va_method": _strings(np.where(has_face, model.config.va_method, None).tolist()),
        "person_id": pa.nulls(len(of_row), pa.int32()),  # cage_cli.annotation.identity.persons
        "embedding": _embeddings(per_face(preds["embedding"][:m]) if "embedding" in preds
                                 else np.full((len(of_row), 0), np.nan, np.float32)),
    }
    return pa.RecordBatch.from_arrays([cols[c] for c in SCHEMA.names], schema=SCHEMA)


def _embeddings(values: np.ndarray) -> pa.Array:
    """The ``embedding`` column from (rows, D) descriptors; null where a row is NaN."""
    valid = ~np.isnan(values).any(1) if values.shape[1] else np.zeros(len(values), bool)
    offsets = np.zeros(len(values) + 1, np.int32)
    np.cumsum(valid * values.shape[1], out=offsets[1:])
    return pa.Array.from_buffers(EMBEDDING_TYPE, len(values), [
        _validity(valid), pa.py_buffer(offsets)],
        children=[_numbers(values[valid].reshape(-1), f32)])


def _labels(probs: np.ndarray) -> list[str | None]:
    """The most probable class of each row; None for rows without probabilities (models
    without classes, e.g. cage-maxvit-t-va)."""
    best = np.argmax(np.nan_to_num(probs, nan=-1.0), axis=1).tolist()
    known = (~np.isnan(probs).all(axis=1)).tolist()
    return [EXPRESSIONS[b] if ok else None for b, ok in zip(best, known, strict=True)]


# Arrow arrays are built from their buffers here, not with pa.array(): pa.array() imports
# pandas when it is installed, to check whether its input is a pandas object, and that import
# took 0.2 s of a 2.6 s run of `cage annotate` on a short clip (docs/performance.md).

def _validity(valid: np.ndarray) -> pa.Buffer | None:
    """Arrow's validity bitmap (None: no nulls)."""
    return None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))


def _numbers(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """A numeric column from float values; NaN becomes null."""
    valid = ~np.isnan(values)
    data = np.where(valid, values, 0).astype(type_.to_pandas_dtype())
    return pa.Array.from_buffers(type_, len(data), [_validity(valid), pa.py_buffer(data)])


def _strings(values: list[str | None]) -> pa.Array:
    """A string column; None becomes null."""
    data = [b"" if v is None else v.encode() for v in values]
    offsets = np.zeros(len(data) + 1, np.int32)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    valid = np.array([v is not None for v in values], bool)
    return pa.Array.from_buffers(pa.string(), len(data), [
        _validity(valid), pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])
