"""--persons: who is who within one source, from face embeddings (opt-in: biometric data).

Three small steps, each a plain function:

* :func:`embed_faces_of` (in the worker threads, beside classification): a descriptor for each
  face that full detection found (photos; keyframes of videos), NaN for faces followed between
  keyframes. Not every frame: at full frame rate one face in ``detect_every``.
* :func:`representatives`: per track, the mean descriptor of its best faces (at most
  :data:`PER_TRACK`, by cage_cli.annotation.identity.embed.face_quality: large and frontal first).
* :func:`assign` (when a video's last frame is in): its tracks linked into persons
  (cage_cli.annotation.identity.linkage: two tracks seen at the same time are never one person),
  ``person_id`` on every face row, and each track's representative descriptor on the track's
  first row (``embedding``; null on the other rows) for run-wide linking (``cage persons``).

Photos get one person per face (``person_id = face_index``) and the face's own descriptor.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ...schema import LANDMARK_COLUMNS, SCHEMA
from .embed import embed_crops, face_crops, face_quality
from .linkage import DEFAULT_THRESHOLD, link_persons, overlap_constraints

EMBEDDING_SIZE = 128  # faceapi-recognition's
#: faces averaged into a track's descriptor (a track with none is a person of its own)
PER_TRACK = 8


def embed_faces_of(model, pieces: list[tuple]) -> np.ndarray:  # noqa: ANN001 - EmbeddingModel
    """Descriptors (N, D) float32 of the faces in ``pieces`` [(image, boxes (K, 4), landmarks
    (K, 5, 2), embed (K,) bool)], in order; rows of faces not to embed are NaN."""
    crops, where = [], []
    n = 0
    for image, boxes, landmarks, wanted in pieces:
        idx = np.flatnonzero(wanted)
        if len(idx):
            crops.append(face_crops(image, landmarks[idx], boxes[idx], model))
            where.append(n + idx)
        n += len(boxes)
    out = np.full((n, model.config.embedding_size), np.nan, np.float32)
    if crops:
        out[np.concatenate(where)] = embed_crops(np.concatenate(crops), model)
    return out


def representatives(track_ids: np.ndarray, embeddings: np.ndarray, landmarks: np.ndarray
                    ) -> dict[int, np.ndarray]:
    """Per track id: the mean descriptor of its (at most PER_TRACK) best embedded faces."""
    has = ~np.isnan(embeddings).any(1) & (track_ids >= 0)
    quality = face_quality(landmarks)
    out: dict[int, np.ndarray] = {}
    for tid in np.unique(track_ids[has]):
        idx = np.flatnonzero(has & (track_ids == tid))
        best = idx[np.argsort(-quality[idx], kind="stable")[:PER_TRACK]]
        out[int(tid)] = embeddings[best].mean(0).astype(np.float32)
    return out


def link_tracks(track_ids: np.ndarray, times: np.ndarray, reps: dict[int, np.ndarray],
                threshold: float = DEFAULT_THRESHOLD) -> dict[int, int]:
    """Track id -> person id for one video: tracks linked by their descriptors, never two
    that are seen at the same time; persons numbered in order of first appearance. A track
    without a descriptor is a person of its own."""
    order = list(dict.fromkeys(track_ids[track_ids >= 0].tolist()))  # by first appearance
    if not order:
        return {}
    first = {t: times[track_ids == t].min() for t in order}
    last = {t: times[track_ids == t].max() for t in order}
    linked = [t for t in order if t in reps]
    ids = {}
    if linked:
        cannot = overlap_constraints(["v"] * len(linked), [first[t] for t in linked],
                                     [last[t] for t in linked])
        people = link_persons(np.stack([reps[t] for t in linked]), threshold, cannot)
        ids = dict(zip(linked, people.tolist(), strict=True))
    # number persons by first appearance, tracks without a descriptor as persons of their own
    out: dict[int, int] = {}
    seen: dict[object, int] = {}
    for t in order:
        key = ("p", ids[t]) if t in ids else ("t", t)
        out[t] = seen.setdefault(key, len(seen))
    return out


# Columns are read from their Arrow buffers: pyarrow's conversions to numpy (and
# fill_null, pa.array) import pandas when it is installed, 0.2 s of CPU (infer.py).

def _valid(arr: pa.Array) -> np.ndarray:
    """The validity of an array's rows (n,) bool."""
    bitmap = arr.buffers()[0]
    if bitmap is None:
        return np.ones(len(arr), bool)
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
    return bits[arr.offset : arr.offset + len(arr)].astype(bool)


def _numeric(rows: pa.Table, name: str, fill: float) -> np.ndarray:
    """A numeric column as float64, ``fill`` where it is null."""
    arr = rows.column(name).combine_chunks()
    data = arr.buffers()[1]
    if data is None or not len(arr):
        return np.full(len(arr), fill, np.float64)
    dtype = np.dtype(arr.type.to_pandas_dtype())
    values = np.frombuffer(data, dtype, len(arr), arr.offset * dtype.itemsize)
    return np.where(_valid(arr), values, fill).astype(np.float64)


def descriptors(rows: pa.Table) -> np.ndarray:
    """The ``embedding`` column as (rows, D) float32, NaN where it is null."""
    col = rows.column("embedding").combine_chunks()
    valid, n = _valid(col), len(col)
    starts = np.frombuffer(col.buffers()[1], np.int32, n + 1, col.offset * 4) if n else \
        np.zeros(1, np.int32)
    lengths = np.diff(starts)[valid]
    dim = int(lengths[0]) if len(lengths) else EMBEDDING_SIZE
    out = np.full((n, dim), np.nan, np.float32)
    if len(lengths):
        child = col.values
        data = np.frombuffer(child.buffers()[1], np.float32, len(child), child.offset * 4)
        out[valid] = data[starts[:-1][valid][:, None] + np.arange(dim)]
    return out


def assign(rows: pa.Table, media: str, threshold: float = DEFAULT_THRESHOLD) -> pa.Table:
    """``rows`` of one whole source, whose ``embedding`` holds each embedded face's descriptor,
    with ``person_id`` filled in and ``embedding`` kept where the schema keeps it."""
    embeddings = descriptors(rows)
    face = _valid(rows.column("face_index").combine_chunks())
    if media == "image":
        person = _numeric(rows, "face_index", -1).astype(np.int64)
        keep = face & ~np.isnan(embeddings).any(1)
    else:
        tracks = _numeric(rows, "track_id", -1).astype(np.int64)
        times = _numeric(rows, "timestamp_s", 0.0)
        marks = np.column_stack([_numeric(rows, c, np.nan)
                                 for c in LANDMARK_COLUMNS]).reshape(-1, 5, 2)
        reps = representatives(tracks, embeddings, marks)
        person_of = link_tracks(tracks, times, reps, threshold)
        person = np.array([person_of.get(t, -1) for t in tracks.tolist()], np.int64)
        first_row = {}
        for i, t in enumerate(tracks.tolist()):
            if t >= 0 and t in reps:
                first_row.setdefault(t, i)
        embeddings = np.full_like(embeddings, np.nan)
        for t, i in first_row.items():
            embeddings[i] = reps[t]
        keep = np.zeros(len(tracks), bool)
        keep[list(first_row.values())] = True
    from ..running.infer import _embeddings, _numbers  # here: infer imports this module

    # Arrays from buffers, not pa.array(): that imports pandas (0.2 s CPU; infer.py)
    person_col = _numbers(np.where(face & (person >= 0), person, np.nan), pa.int32())
    emb_col = _embeddings(np.where(keep[:, None], np.nan_to_num(embeddings), np.nan))
    rows = rows.set_column(rows.schema.get_field_index("person_id"), "person_id", person_col)
    rows = rows.set_column(rows.schema.get_field_index("embedding"), "embedding", emb_col)
    return rows.cast(SCHEMA)


def link_sources(rows: pa.Table, threshold: float = DEFAULT_THRESHOLD) -> pa.Table:
    """``cage persons``: run-wide persons over annotation rows of any number of sources (made
    with --persons). Each source's persons (``person_id``) are linked by their descriptors
    (the mean of their tracks' or faces' ``embedding``), never two of one source (the source's
    own linking kept them apart); persons are numbered in order of first appearance (sources
    in the order given). Returns ``source, frame_index, face_index, person`` per face row."""
    if "person_id" not in rows.schema.names or rows.column("person_id").null_count == len(rows):
        raise ValueError("no person_id: annotate with --persons first")
    rows = rows.filter(rows.column("person_id").is_valid())
    sources = rows.column("source").to_pylist()
    pids = np.asarray(rows.column("person_id"), np.int64)
    emb = descriptors(rows)
    keys = list(dict.fromkeys(zip(sources, pids.tolist(), strict=True)))  # first appearance
    index = {k: i for i, k in enumerate(keys)}
    of_row = np.array([index[k] for k in zip(sources, pids.tolist(), strict=True)], np.int64)
    has = ~np.isnan(emb).any(1)
    reps = np.full((len(keys), emb.shape[1]), np.nan, np.float32)
    for i in np.unique(of_row[has]):
        reps[i] = emb[has & (of_row == i)].mean(0)
    linked = np.flatnonzero(~np.isnan(reps).any(1))
    item_source = [keys[i][0] for i in linked]
    # one source's persons all "overlap": they are never linked to each other
    cannot = overlap_constraints(item_source, np.zeros(len(linked)), np.zeros(len(linked)))
    people = link_persons(reps[linked], threshold, cannot) if len(linked) else np.zeros(0)
    cluster = dict(zip(linked.tolist(), people.tolist(), strict=True))
    seen: dict[object, int] = {}
    person_of = [seen.setdefault(("p", cluster[i]) if i in cluster else ("k", i), len(seen))
                 for i in range(len(keys))]
    return pa.table({
        "source": rows.column("source"),
        "frame_index": rows.column("frame_index"),
        "face_index": rows.column("face_index"),
        "person": pa.array(np.asarray(person_of, np.int32)[of_row], pa.int32()),
    })
