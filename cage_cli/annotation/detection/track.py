"""Faces in a video as tracks: one ``track_id`` per person, numbered 0, 1, ... per video in
order of first appearance. A pure function of (state, one frame's faces); no video needed.

Two kinds of frames arrive (cage_cli.annotation.detection.detect). On a keyframe, faces come from
full detection and are associated with the live tracks by box overlap (IoU) with each track's
predicted box (constant velocity from its last two sightings), the distance of the landmarks
breaking near ties, greedily, best pair first; a face that matches no track starts a new one.
Between keyframes, each face carries a *link* to the keyframe face it was followed from, and takes
that face's id. A track unseen for more than ``gap`` seconds of video time is dead: a face after
that gets a new id. Without ``--persons`` faces are not matched by appearance, so a person who
leaves for longer than the gap comes back under a new id (``--persons`` links such tracks into
one ``person_id`` afterwards, and its descriptors gate every keyframe match: APPEARANCE_GATE).
A cut (a shot change, cage_cli.annotation.detection.shots) ends every track (``new_shot``): no
id carries over onto the next shot.

``smooth`` is the optional per-track smoothing of the predictions (--smooth): a causal
exponential moving average, so every value depends only on this and earlier frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: a keyframe face and a predicted track box must overlap at least this much (IoU) to match
MIN_IOU = 0.3
#: weight of the landmark distance (in box heights) against IoU when ranking pairs
LANDMARK_WEIGHT = 0.1
#: --persons: a keyframe face whose descriptor is further than this (Euclidean,
#: cage_cli.annotation.identity.embed) from the mean of its track's is someone else, whatever the
#: boxes say. Measured on ../shared/identity (docs/persons.md): a face is at most 0.38 from its own
#: person's mean, two people's faces at least 0.54 apart.
APPEARANCE_GATE = 0.5


@dataclass
class Track:
    """A live track: where and when it was last seen, and how it moves (per second)."""

    id: int
    time: float
    box: list[float]  # x1, y1, x2, y2
    velocity: list[float]  # of x1, y1, x2, y2, pixels per second
    landmarks: list[float]  # 10 values (x, y per point), or NaN
    smoothed: list[float] | None = None  # --smooth: the running averages
    embedding: np.ndarray | None = None  # --persons: mean descriptor of its keyframe faces
    embedded: int = 0  # faces in that mean


@dataclass
class TrackState:
    """Everything the tracker carries from one frame to the next (plain values)."""

    gap: float = 1.0  # seconds of video time a track may go unseen
    next_id: int = 0
    tracks: list[Track] = field(default_factory=list)
    keyframe: list[int] = field(default_factory=list)  # ids of the last keyframe's faces
    shot: int = 0  # cuts so far in this video


def new_shot(state: TrackState) -> None:
    """A cut: every track ends (the next faces get new ids) and the shot number goes up."""
    state.tracks, state.keyframe = [], []
    state.shot += 1


def update(state: TrackState, timestamp: float, boxes: np.ndarray, landmarks: np.ndarray,
           links: np.ndarray | None = None, embeddings: np.ndarray | None = None
           ) -> tuple[TrackState, np.ndarray]:
    """Ids (K,) int32 for one frame's faces: ``boxes`` (K, 4), ``landmarks`` (K, 5, 2) and
    ``links``: None on a keyframe; between keyframes (K,), the index of the keyframe face
    each face was followed from. ``embeddings`` (K, D; --persons, keyframes): a face is not
    matched to a track whose last descriptor is further than APPEARANCE_GATE from its own.
    ``state`` is updated in place."""
    state.tracks = [t for t in state.tracks if timestamp - t.time <= state.gap]
    live = {t.id: t for t in state.tracks}
    n = len(boxes)
    ids = np.full(n, -1, np.int32)
    if links is not None:  # a followed face is the person it was followed from
        for i, link in enumerate(links):
            tid = state.keyframe[link] if 0 <= link < len(state.keyframe) else -1
            if tid in live and tid not in ids:
                ids[i] = tid
    free = [t for t in state.tracks if t.id not in ids]
    pairs = []
    for i in np.flatnonzero(ids < 0) if links is None else []:
        for t in free:
            box = _predict(t, timestamp)
            overlap = float(box_iou(boxes[i], box)[0, 0])
            if overlap >= MIN_IOU and not _looks_different(embeddings, i, t):
                pairs.append((overlap - LANDMARK_WEIGHT * _distance(landmarks[i], t, box),
                              int(i), t.id))
    taken: set[int] = set()
    for _, i, tid in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if ids[i] < 0 and tid not in taken:
            ids[i] = tid
            taken.add(tid)
    for i in np.flatnonzero(ids < 0):
        ids[i] = state.next_id
        state.next_id += 1
        if links is not None and 0 <= links[i] < len(state.keyframe):
            state.keyframe[links[i]] = int(ids[i])  # its next frames continue the new id
    for i, tid in enumerate(ids.tolist()):
        box = [float(v) for v in boxes[i]]
        marks = [float(v) for v in np.asarray(landmarks[i], np.float64).reshape(-1)]
        t = live.get(tid)
        if t is None:
            t = Track(tid, timestamp, box, [0.0] * 4, marks)
            state.tracks.append(t)
            _remember(embeddings, i, t)
            continue
        _remember(embeddings, i, t)
        dt = timestamp - t.time
        if dt > 0:
            t.velocity = [(a - b) / dt for a, b in zip(box, t.box, strict=True)]
        t.time, t.box, t.landmarks = timestamp, box, marks
    if links is None:
        state.keyframe = ids.tolist()
    return state, ids


def smooth(state: TrackState, timestamp: float, ids: np.ndarray, values: np.ndarray,
           seconds: float) -> np.ndarray:
    """--smooth: each track's values (K, C) (class probabilities, valence, arousal) averaged
    over time: a causal exponential moving average with time constant ``seconds``, weighted
    by the real time since the track's last value. Call after ``update`` for the same frame.
    NaN values (a class a model does not have) stay NaN."""
    live = {t.id: t for t in state.tracks}
    out = np.array(values, np.float64)
    for i, tid in enumerate(ids.tolist()):
        t = live[tid]
        if t.smoothed is not None and seconds > 0:
            keep = math.exp(-max(0.0, timestamp - t.smoothed[0]) / seconds)
            old = np.array(t.smoothed[1:])
            mixed = keep * old + (1 - keep) * out[i]
            out[i] = np.where(np.isnan(old), out[i], mixed)
        t.smoothed = [timestamp, *out[i].tolist()]
    return out.astype(np.asarray(values).dtype)


def _looks_different(embeddings: np.ndarray | None, i: int, t: Track) -> bool:
    if embeddings is None or t.embedding is None or np.isnan(embeddings[i]).any():
        return False
    return float(np.linalg.norm(embeddings[i] - t.embedding)) > APPEARANCE_GATE


def _remember(embeddings: np.ndarray | None, i: int, t: Track) -> None:
    if embeddings is not None and not np.isnan(embeddings[i]).any():
        e = np.asarray(embeddings[i], np.float64)
        t.embedded += 1
        t.embedding = e if t.embedding is None else t.embedding + (e - t.embedding) / t.embedded


def _predict(t: Track, timestamp: float) -> list[float]:
    dt = timestamp - t.time
    return [b + v * dt for b, v in zip(t.box, t.velocity, strict=True)]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4): (N, M)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def _distance(landmarks: np.ndarray, t: Track, predicted: list[float]) -> float:
    """Mean distance of a face's landmarks from the track's, moved with its predicted box,
    in box heights; 0 where either has no landmarks (tie-breaker only)."""
    old = np.array(t.landmarks).reshape(5, 2)
    shift = np.array([(predicted[0] + predicted[2] - t.box[0] - t.box[2]) / 2,
                      (predicted[1] + predicted[3] - t.box[1] - t.box[3]) / 2])
    d = np.linalg.norm(np.asarray(landmarks, np.float64).reshape(5, 2) - old - shift, axis=1)
    height = max(predicted[3] - predicted[1], 1.0)
    value = float(np.mean(d)) / height
    return 0.0 if math.isnan(value) else value
