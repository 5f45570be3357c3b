"""`cage export`: annotations -> a training-ready face dataset (crops + labels CSVs + manifest).

Layout of DATASET_DIR (docs/prelabel.md)::

    images/<stem>_f<frame>_<face>.jpg   square face crops (--size, --margin), from the source
    train.csv, val.csv, ...             one labels CSV per split (labels.csv without --split),
                                        in the layout `cage train` / `cage evaluate` read
                                        (cage_cli/train/datasets.py): image path relative to
                                        the CSV, expression (index in AffectNet-8 order),
                                        valence, arousal
    manifest.csv | manifest.parquet     every crop: source, frame, face, box, crop region,
                                        split, machine label and probabilities, review state
                                        (and person_id / person where known)
    export.json                         options, counts, sources that failed, reviews applied

The labels CSVs are always rebuilt from the manifest, so ``apply_review`` (review.py) only
edits the manifest's label columns and writes the CSVs again. This module also holds what the
review path shares: the manifest and labels CSV readers and writers, ``canonical_class``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..schema import EXPRESSIONS, PROB_COLUMNS

if TYPE_CHECKING:  # pragma: no cover
    from ..annotation.io.store import UriPath

IMAGE_FORMATS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}
MANIFEST_FORMATS = ("csv", "parquet")
MARKER = "export.json"
IMAGES_DIR = "images"
NO_SPLIT = "labels"  # the labels CSV's name without --split

#: Columns of each labels CSV. ``image`` and ``expression`` (index) / ``valence`` / ``arousal``
#: are what cage_cli/train/datasets.py reads; no ``x1..y2`` / ``label`` / ``path`` columns, which it
#: would take for a face box, the class or the image.
LABEL_COLUMNS: tuple[str, ...] = (
    "image", "expression", "valence", "arousal", "expression_name", "label_source", "model",
    "confidence", *PROB_COLUMNS, "source", "frame_index", "face_index", "track_id",
)
#: Columns of the manifest, one row per crop (rejected ones included).
MANIFEST_COLUMNS: tuple[str, ...] = (
    "image", "split", "annotation_row", "source", "media", "frame_index", "timestamp_s",
    "frame_width", "frame_height", "face_index", "track_id", "face_source", "x1", "y1", "x2", "y2",
    "crop_x1", "crop_y1", "crop_x2", "crop_y2", "det_score", "model", "machine_label",
    "confidence", *PROB_COLUMNS, "valence", "arousal", "va_method",
    "label", "expression", "label_source", "rejected",
)
REVIEW_COLUMNS: tuple[str, ...] = (
    "image", "crop", "split", "source", "frame_index", "timestamp_s", "face_index", "track_id",
    "machine_label", "confidence", "runner_up", "runner_up_p", "reviewed_label",
)
#: Manifest columns written only where some row has a value: ``person_id`` (the annotations'
#: person within a source, ``--persons``) and ``person`` (run-wide, `cage export --persons`).
PERSON_COLUMNS: tuple[str, ...] = ("person_id", "person")
_INT_COLS = {"annotation_row", "frame_index", "frame_width", "frame_height", "face_index",
             "track_id", "person_id", "person", "crop_x1", "crop_y1", "crop_x2", "crop_y2",
             "expression"}
_FLOAT_COLS = {"timestamp_s", "x1", "y1", "x2", "y2", "det_score", "confidence", "valence",
               "arousal", *PROB_COLUMNS}

ALIASES = {
    "neutrality": "neutral", "happiness": "happy", "joy": "happy", "sadness": "sad",
    "surprised": "surprise", "fearful": "fear", "afraid": "fear", "disgusted": "disgust",
    "angry": "anger", "contemptuous": "contempt",
}


class ExportError(Exception):
    """Bad options or output; the message is one user-facing line."""


@dataclass
class ExportOptions:
    size: int = 224
    margin: float = 0.2
    image_format: str = "jpeg"  # jpeg | png
    jpeg_quality: int = 95
    manifest_format: str = "csv"  # csv | parquet
    min_det_score: float | None = None
    min_face: float | None = None  # shorter box side, pixels
    min_confidence: float | None = None  # top class probability >= this
    max_confidence: float | None = None  # top class probability <= this
    classes: tuple[str, ...] | None = None
    per_class: int | None = None
    per_track: int | None = None
    per_person: int | None = None
    persons: str | None = None  # a `cage persons` table: run-wide persons, splits by person
    every_k_frames: int | None = None
    min_gap_s: float | None = None
    split: dict[str, float] | None = None  # name -> fraction, in order
    seed: int = 0
    review_csv: str | None = None
    root: str | None = None  # folder relative sources are resolved against
    overwrite: bool = False


@dataclass
class ExportSummary:
    output: str
    annotations: int = 0  # face rows read
    selected: int = 0  # rows left after the filters
    exported: int = 0  # crops written
    dropped: dict[str, int] = field(default_factory=dict)  # filter -> rows it removed
    splits: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=dict)
    sources_ok: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)  # source, reason
    empty_splits: list[str] = field(default_factory=list)
    review_csv: str | None = None
    seconds: float = 0.0
    split_by: str = "source"  # or "person" (--persons)

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0


# --------------------------------------------------------------------------- option parsing

def parse_split(text: str) -> dict[str, float]:
    """``train=0.8,val=0.1,test=0.1`` -> {"train": 0.8, ...}, normalised to sum 1."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ExportError(f"--split: expected NAME=FRACTION,... (e.g. "
                              f"train=0.8,val=0.1,test=0.1), got {text!r}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name) or name.lower() in (
                "manifest", "export", "review", IMAGES_DIR):
            raise ExportError(f"--split: {name!r} is not a usable split name")
        if name in out:
            raise ExportError(f"--split: {name!r} given twice")
        try:
            f = float(value)
        except ValueError:
            raise ExportError(f"--split: {value.strip()!r} is not a number") from None
        if not (f >= 0 and math.isfinite(f)):
            raise ExportError(f"--split: fraction of {name} must be 0 or more")
        out[name] = f
    total = sum(out.values())
    if total <= 0:
        raise ExportError("--split: the fractions must not all be 0")
    return {k: v / total for k, v in out.items()}


def parse_classes(text: str) -> tuple[str, ...]:
    names = [c for c in (t.strip() for t in text.split(",")) if c]
    out = []
    for n in names:
        c = canonical_class(n)
        if c is None:
            raise ExportError(f"--classes: unknown expression {n!r} (use {', '.join(EXPRESSIONS)})")
        out.append(EXPRESSIONS[c])
    if not out:
        raise ExportError("--classes: give at least one expression")
    return tuple(dict.fromkeys(out))


def canonical_class(name: str) -> int | None:
    """Index in AffectNet-8 order of an expression name, alias or index 0-7; None if unknown."""
    n = name.strip().lower()
    if n.isdigit():
        i = int(n)
        return i if 0 <= i < len(EXPRESSIONS) else None
    n = ALIASES.get(n, n)
    return EXPRESSIONS.index(n) if n in EXPRESSIONS else None


def check_options(o: ExportOptions) -> None:
    if o.size < 1:
        raise ExportError("--size must be at least 1")
    if not (o.margin >= 0 and math.isfinite(o.margin)):
        raise ExportError("--margin must be 0 or more")
    if o.image_format.lower() not in IMAGE_FORMATS:
        raise ExportError(f"--image-format must be jpeg or png, got {o.image_format!r}")
    if o.manifest_format.lower() not in MANIFEST_FORMATS:
        raise ExportError(f"--manifest-format must be csv or parquet, got {o.manifest_format!r}")
    if not 1 <= o.jpeg_quality <= 100:
        raise ExportError("--jpeg-quality must be 1 to 100")
    for name, v in (("--min-confidence", o.min_confidence), ("--max-confidence", o.max_confidence),
                    ("--min-det-score", o.min_det_score)):
        if v is not None and not 0 <= v <= 1:
            raise ExportError(f"{name} must be between 0 and 1")
    if (o.min_confidence is not None and o.max_confidence is not None
            and o.min_confidence > o.max_confidence):
        raise ExportError("--min-confidence is above --max-confidence: nothing would be left")
    if o.min_face is not None and o.min_face < 0:
        raise ExportError("--min-face must be 0 or more")
    if o.per_class is not None and o.per_class < 1:
        raise ExportError("--per-class must be at least 1")
    if o.per_track is not None and o.per_track < 1:
        raise ExportError("--per-track must be at least 1")
    if o.per_person is not None and o.per_person < 1:
        raise ExportError("--per-person must be at least 1")
    if o.every_k_frames is not None and o.every_k_frames < 1:
        raise ExportError("--every-k-frames must be at least 1")
    if o.min_gap_s is not None and o.min_gap_s < 0:
        raise ExportError("--min-gap-s must be 0 or more")
    if o.every_k_frames is not None and o.min_gap_s is not None:
        raise ExportError("use --every-k-frames or --min-gap-s, not both")


# --------------------------------------------------------------------------- selection

def confidence(row: dict) -> float | None:
    probs = [row[c] for c in PROB_COLUMNS if row.get(c) is not None]
    return max(probs) if probs else None


def select(rows: list[dict], o: ExportOptions) -> tuple[list[dict], dict[str, int]]:
    """The rows to export, in input order, and how many rows each filter removed."""
    dropped: Counter = Counter()

    def keep(why: str, ok: Callable[[dict], bool], items: list[dict]) -> list[dict]:
        out = [r for r in items if ok(r)]
        if len(out) < len(items):
            dropped[why] += len(items) - len(out)
        return out

    rows = keep("no face (--keep-empty row)",
                lambda r: r["face_index"] is not None and r["x1"] is not None, rows)
    rows = keep("no label", lambda r: bool(r["label"]) and r["_conf"] is not None, rows)
    if o.min_det_score is not None:  # whole_image rows have no detector score: they pass
        rows = keep("--min-det-score", lambda r: r["det_score"] is None
                    or r["det_score"] >= o.min_det_score, rows)
    if o.min_face is not None:
        rows = keep("--min-face", lambda r: min(r["x2"] - r["x1"], r["y2"] - r["y1"])
                    >= o.min_face, rows)
    if o.min_confidence is not None:
        rows = keep("--min-confidence", lambda r: r["_conf"] >= o.min_confidence, rows)
    if o.max_confidence is not None:
        rows = keep("--max-confidence", lambda r: r["_conf"] <= o.max_confidence, rows)
    if o.classes is not None:
        wanted = set(o.classes)
        rows = keep("--classes", lambda r: r["label"] in wanted, rows)
    if o.every_k_frames is not None or o.min_gap_s is not None:
        n = len(rows)
        rows = space_frames(rows, o.every_k_frames, o.min_gap_s)
        if len(rows) < n:
            dropped["--every-k-frames" if o.every_k_frames else "--min-gap-s"] += n - len(rows)
    if o.per_track is not None:
        n = len(rows)
        rows = per_track(rows, o.per_track)
        if len(rows) < n:
            dropped["--per-track"] += n - len(rows)
    if o.per_person is not None:
        n = len(rows)
        rows = per_person(rows, o.per_person, run_wide=o.persons is not None)
        if len(rows) < n:
            dropped["--per-person"] += n - len(rows)
    if o.per_class is not None:
        n = len(rows)
        rows = per_class(rows, o.per_class, o.seed)
        if len(rows) < n:
            dropped["--per-class"] += n - len(rows)
    return rows, dict(dropped)


def space_frames(rows: list[dict], every_k: int | None, min_gap_s: float | None) -> list[dict]:
    """Videos: keep a frame (all its faces) only if it is at least ``every_k`` frames or
    ``min_gap_s`` seconds after the last frame kept from the same video. Photos pass."""
    frames: dict[str, list[tuple[int, float | None]]] = {}
    for r in rows:
        if r["media"] == "video":
            frames.setdefault(r["source"], []).append((r["frame_index"], r["timestamp_s"]))
    kept: set[tuple[str, int]] = set()
    for src, fr in frames.items():
        last: tuple[int, float | None] | None = None
        for idx, ts in sorted(set(fr)):
            if last is None:
                ok = True
            elif every_k is not None:
                ok = idx - last[0] >= every_k
            elif ts is None or last[1] is None:
                ok = True
            else:
                ok = ts - last[1] >= min_gap_s - 1e-6
            if ok:
                kept.add((src, idx))
                last = (idx, ts)
    return [r for r in rows if r["media"] != "video" or (r["source"], r["frame_index"]) in kept]


def per_track(rows: list[dict], n: int) -> list[dict]:
    """Videos: at most ``n`` rows per track (source, ``track_id``), the best and most
    different ones; photos pass. Input order kept.

    Per track, each face gets a quality q = detector score (1 without one) x its shorter box
    side / the track's largest shorter box side. The first pick is the face with the highest
    q; each next pick is the face with the highest q x d, where d is its distance to the
    nearest face already picked: d = (total variation between the two faces' class
    probabilities + their time apart / the track's duration) / 2, in [0, 1]. So the picks are
    large, clear faces that differ in expression or lie far apart in time. Ties go to the
    earlier frame. Raises :class:`ExportError` for video rows without a track id (an output
    of a cage without tracking).
    """
    tracks: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(rows):
        if r["media"] != "video":
            continue
        if r.get("track_id") is None:
            raise ExportError(f"--per-track: {r['source']} has no track ids (annotated by a "
                              "cage without tracking); annotate it again, or thin out its "
                              "frames with --every-k-frames / --min-gap-s instead")
        tracks.setdefault((r["source"], r["track_id"]), []).append(i)
    keep = {i for i, r in enumerate(rows) if r["media"] != "video"}
    for idx in tracks.values():
        idx.sort(key=lambda i: rows[i]["frame_index"])
        keep.update(idx[j] for j in pick_diverse([rows[i] for i in idx], n))
    return [r for i, r in enumerate(rows) if i in keep]


def per_person(rows: list[dict], n: int, run_wide: bool = False) -> list[dict]:
    """At most ``n`` rows per person, picked as :func:`per_track` picks them; input order
    kept. A person is (source, ``person_id``), or with ``run_wide`` the run-wide ``person``
    (from `cage export --persons`), whose faces may come from several sources: faces of
    other sources count as far apart in time. Photos without ``run_wide``: each face is a
    person of its own (``person_id`` = ``face_index``), so all pass. Raises
    :class:`ExportError` for rows without a person id."""
    persons: dict[object, list[int]] = {}
    for i, r in enumerate(rows):
        key = r.get("person") if run_wide else (
            None if r.get("person_id") is None else (r["source"], r["person_id"]))
        if key is None:
            raise ExportError(f"--per-person: {r['source']} has no person ids (annotated "
                              "without --persons); annotate it again with --persons, or use "
                              "--per-track")
        persons.setdefault(key, []).append(i)
    keep: set[int] = set()
    for idx in persons.values():
        idx.sort(key=lambda i: (rows[i]["source"], rows[i]["frame_index"]))
        keep.update(idx[j] for j in pick_diverse([rows[i] for i in idx], n))
    return [r for i, r in enumerate(rows) if i in keep]


def pick_diverse(track: list[dict], n: int) -> list[int]:
    """Indices into ``track`` (one track's rows, in time order) of the :func:`per_track`
    picks, in the order they were picked. Rows of several sources (a run-wide person,
    :func:`per_person`): time apart is measured within a source, over that source's span, and
    rows of two sources are as far apart as can be (1)."""
    if len(track) <= n:
        return list(range(len(track)))
    probs = np.array([[r[c] or 0.0 for c in PROB_COLUMNS] for r in track])
    t = np.array([r["timestamp_s"] or 0.0 for r in track])
    side = np.array([min(r["x2"] - r["x1"], r["y2"] - r["y1"]) for r in track])
    score = np.array([1.0 if r["det_score"] is None else r["det_score"] for r in track])
    quality = score * side / max(side.max(), 1e-9)
    _, src = np.unique([r["source"] for r in track], return_inverse=True)
    span = np.zeros(len(t))
    for k in np.unique(src):
        span[src == k] = t[src == k].max() - t[src == k].min()

    def distance(j: int) -> np.ndarray:
        tv = 0.5 * np.abs(probs - probs[j]).sum(axis=1)
        within = np.abs(t - t[j]) / span[j] if span[j] > 0 else np.zeros(len(t))
        apart = np.where(src == src[j], within, 1.0)
        return (tv + apart) / 2

    picked = [int(np.argmax(quality))]
    nearest = distance(picked[0])
    while len(picked) < n:
        gain = quality * nearest
        gain[picked] = -1.0
        j = int(np.argmax(gain))
        picked.append(j)
        nearest = np.minimum(nearest, distance(j))
    return picked


def per_class(rows: list[dict], n: int, seed: int) -> list[dict]:
    """At most ``n`` rows per machine label, a seeded random sample; input order kept."""
    rng = random.Random(seed)
    by_label: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_label.setdefault(r["label"], []).append(i)
    keep: set[int] = set()
    for label in sorted(by_label):
        idx = by_label[label]
        keep.update(idx if len(idx) <= n else rng.sample(idx, n))
    return [r for i, r in enumerate(rows) if i in keep]


def assign_splits(rows: list[dict], split: dict[str, float] | None, seed: int,
                  by_person: bool = False) -> None:
    """Set ``row["split"]``: whole sources go to one split (frames of a video never land in two),
    in a seeded random order, each to the split furthest below its share of the faces.

    ``by_person``: whole run-wide persons (``row["person"]``, from `cage export --persons`)
    instead, so no person is in two splits; a source with several persons is divided between
    splits by person (each face goes with its person, none is dropped)."""
    if not split:
        for r in rows:
            r["split"] = NO_SPLIT
        return
    unit = (lambda r: r["person"]) if by_person else (lambda r: r["source"])
    sizes = Counter(unit(r) for r in rows)
    sources = sorted(sizes)
    random.Random(seed).shuffle(sources)
    total = sum(sizes.values())
    count = dict.fromkeys(split, 0)
    where: dict[str, str] = {}
    for s in sources:
        best = max(split, key=lambda k: split[k] * total - count[k])  # first wins ties
        where[s] = best
        count[best] += sizes[s]
    for r in rows:
        r["split"] = where[unit(r)]


def read_persons(path: str | Path) -> dict[tuple[str, int, int], int]:
    """A `cage persons` table (.parquet or .csv): (source, frame_index, face_index) ->
    run-wide person. Raises :class:`ExportError` with one line."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise ExportError(f"--persons {path}: no such file")
    try:
        t = pacsv.read_csv(p) if p.suffix.lower() == ".csv" else pq.read_table(p)
    except (OSError, pa.ArrowException) as e:
        raise ExportError(f"--persons {path}: cannot read it ({str(e).splitlines()[0]})") \
            from None
    need = ("source", "frame_index", "face_index", "person")
    missing = [c for c in need if c not in t.column_names]
    if missing:
        raise ExportError(f"--persons {path}: not a `cage persons` table (no "
                          f"{', '.join(missing)} column)")
    cols = [t.column(c).to_pylist() for c in need]
    return {(s, int(f), int(i)): int(q) for s, f, i, q in zip(*cols, strict=True)
            if None not in (s, f, i, q)}


def add_persons(rows: list[dict], path: str | Path, annotations: str) -> None:
    """``row["person"]`` from the `cage persons` table at ``path`` for every face row; raises
    :class:`ExportError` when a face is not in it (a table of other annotations)."""
    persons = read_persons(path)
    missing = []
    for r in rows:
        if r["face_index"] is None:
            continue
        r["person"] = persons.get((r["source"], r["frame_index"], r["face_index"]))
        if r["person"] is None:
            missing.append(r)
    if missing:
        raise ExportError(f"--persons {path}: {len(missing)} faces of {annotations} are not in "
                          f"it (e.g. {missing[0]['source']} frame {missing[0]['frame_index']}); "
                          "run `cage persons` on these annotations")


# --------------------------------------------------------------------------- cropping

def crop_region(box: Iterable[float], margin: float) -> tuple[int, int, int, int]:
    """The square frame region (x1, y1, x2, y2), integer pixels, cut for a face box: a square
    around the box's centre with side max(width, height) * (1 + 2 * margin)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    s = max(1, int(round(side)))
    left = int(round((x1 + x2) / 2 - s / 2))
    top = int(round((y1 + y2) / 2 - s / 2))
    return left, top, left + s, top + s


def crop_square(image: np.ndarray, region: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Cut ``region`` from an (H, W, 3) uint8 frame (black outside it), resize to size x size
    (Pillow bicubic, anti-aliased)."""
    from PIL import Image

    x1, y1, x2, y2 = region
    h, w = image.shape[:2]
    out = np.zeros((y2 - y1, x2 - x1, 3), np.uint8)
    ix1, iy1, ix2, iy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
    if ix2 > ix1 and iy2 > iy1:
        out[iy1 - y1:iy2 - y1, ix1 - x1:ix2 - x1] = image[iy1:iy2, ix1:ix2]
    if out.shape[0] == size:
        return out
    return np.asarray(Image.fromarray(out).resize((size, size), Image.Resampling.BICUBIC))


def _resolve(source: str, roots: list[Path]) -> Path:
    p = Path(source)
    if p.is_absolute():
        return p
    for r in roots:
        if (r / p).exists():
            return r / p
    return roots[0] / p


def _frames_of(path: Path, media: str, indices: list[int],
               size: tuple[int, int]) -> Iterable[tuple[int, np.ndarray]]:
    """(frame_index, RGB frame) for the wanted frames; raises DecodeError with the reason.

    Photos go through decode.load_image (EXIF rotation applied, as annotate saw them); videos
    are decoded again as annotate decoded them, keeping the recorded frame indices."""
    from ..annotation.io.decode import DecodeError, _check_readable, load_image, video_frames_at

    _check_readable(str(path))
    w, h = size
    if media == "image":
        img = load_image(str(path))
        if img.shape[1] != w or img.shape[0] != h:
            raise DecodeError(f"image is {img.shape[1]}x{img.shape[0]}, the annotations say "
                              f"{w}x{h} (a different file?)")
        yield 0, img
        return
    for frame in video_frames_at(str(path), indices):
        vh, vw = frame.image.shape[:2]
        if (vw, vh) != (w, h):
            raise DecodeError(f"video is {vw}x{vh}, the annotations say {w}x{h} "
                              "(a different file?)")
        yield frame.index, frame.image


def _crop_names(rows: list[dict], ext: str) -> None:
    """``row["image"]``: images/<stem>_f<frame>_<face><ext>, unique (a short hash of the source
    path is added where two sources share a stem)."""
    stems: dict[str, set[str]] = {}
    for r in rows:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(r["source"]).stem).strip("._") or "face"
        stems.setdefault(stem, set()).add(r["source"])
        r["_stem"] = stem
    for r in rows:
        stem = r.pop("_stem")
        if len(stems[stem]) > 1:
            stem += "_" + hashlib.sha1(r["source"].encode()).hexdigest()[:8]
        r["image"] = f"{IMAGES_DIR}/{stem}_f{r['frame_index']:06d}_{r['face_index']:02d}{ext}"


# --------------------------------------------------------------------------- output safety

def _is_within(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents


def _check_outputs(out: Path, annotations: Path | None, review: Path | None,
                   source_paths: list[Path], overwrite: bool) -> None:
    folders = {s.parent for s in source_paths} | {s.resolve().parent for s in source_paths}
    for f in sorted(folders):
        if _is_within(out, f):
            raise ExportError(f"{out} lies inside {f}, which holds source media; cage export "
                              "never writes into the sources' folders (choose another -o)")
        if review is not None and _is_within(review, f):
            raise ExportError(f"--review-csv {review} lies inside {f}, which holds source media; "
                              "choose another place")
    if any(_is_within(s, out) for s in source_paths):
        raise ExportError(f"{out} holds source media; choose another -o")
    if annotations is not None and _is_within(annotations, out):
        raise ExportError(f"the annotations {annotations} lie inside {out}; choose another -o")
    if out.exists() or out.is_symlink():
        if not overwrite:
            raise ExportError(f"{out} already exists; pass --overwrite to replace it")
        if not out.is_dir() or out.is_symlink():
            raise ExportError(f"{out} exists and is not a folder; not replacing it")
        if any(out.iterdir()) and not (out / MARKER).is_file():
            raise ExportError(f"{out} is not empty and not a `cage export` dataset (no {MARKER}); "
                              "not replacing it")
    if review is not None and review.exists() and not overwrite:
        raise ExportError(f"--review-csv {review} already exists; pass --overwrite to replace it")


# --------------------------------------------------------------------------- writing

def _fmt(v: Any, column: str = "") -> str:
    """CSV text of a value. float32 columns (boxes, probabilities, ...) are written in the
    shortest form that reads back to the same float32; timestamps in full."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        if column == "timestamp_s":
            return repr(v)
        return str(np.float32(v))
    return str(v)


def _write_csv(path: Path, columns: Iterable[str], rows: Iterable[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        cols = list(columns)
        w.writerow(cols)
        for r in rows:
            w.writerow([_fmt(r.get(c), c) for c in cols])
    os.replace(tmp, path)


def manifest_columns(rows: list[dict]) -> list[str]:
    """MANIFEST_COLUMNS, then those of PERSON_COLUMNS that some row has a value in."""
    return [*MANIFEST_COLUMNS, *(c for c in PERSON_COLUMNS
                                 if any(r.get(c) is not None for r in rows))]


def _manifest_schema(columns: Iterable[str] = MANIFEST_COLUMNS):
    import pyarrow as pa

    def typ(c: str):
        if c in _INT_COLS:
            return pa.int32() if c != "annotation_row" else pa.int64()
        if c == "timestamp_s":
            return pa.float64()
        if c in _FLOAT_COLS:
            return pa.float32()
        if c == "rejected":
            return pa.bool_()
        return pa.string()

    return pa.schema([pa.field(c, typ(c)) for c in columns])


def write_manifest(path: Path, rows: list[dict]) -> None:
    columns = manifest_columns(rows)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows],
                                     schema=_manifest_schema(columns))
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    else:
        _write_csv(path, columns, rows)


def read_manifest(dataset: str | Path) -> tuple[Path, list[dict]]:
    """The manifest of an exported dataset, as typed rows (ints, floats, bools, None)."""
    d = Path(dataset)
    for name in ("manifest.csv", "manifest.parquet"):
        p = d / name
        if p.is_file():
            break
    else:
        raise ExportError(f"{d}: no manifest.csv or manifest.parquet (not a `cage export` "
                          "dataset?)")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return p, pq.read_table(p).to_pylist()
        except Exception as e:  # noqa: BLE001
            raise ExportError(f"cannot read {p}: {e}") from None
    try:
        with open(p, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ExportError(f"cannot read {p}: {e.strerror or e}") from None
    return p, [_typed(r) for r in rows]


def _typed(r: dict[str, str]) -> dict:
    out: dict[str, Any] = {}
    for k, v in r.items():
        if k in _INT_COLS:
            out[k] = int(v) if v not in ("", None) else None
        elif k == "timestamp_s":
            out[k] = float(v) if v not in ("", None) else None
        elif k in _FLOAT_COLS:  # float32 values, as in the annotations
            out[k] = float(np.float32(v)) if v not in ("", None) else None
        elif k == "rejected":
            out[k] = (v or "").strip().lower() in ("true", "1", "yes")
        else:
            out[k] = v if v != "" else None
    return out


def write_labels(dataset: Path, rows: list[dict], splits: Iterable[str]) -> dict[str, int]:
    """(Re)write one labels CSV per split from manifest rows; rejected rows are left out."""
    counts = {}
    for s in splits:
        part = [_label_row(r) for r in rows if r["split"] == s and not r["rejected"]]
        _write_csv(dataset / f"{s}.csv", LABEL_COLUMNS, part)
        counts[s] = len(part)
    return counts


def _label_row(r: dict) -> dict:
    out = {c: r.get(c) for c in LABEL_COLUMNS}
    out["expression_name"] = r["label"]
    return out


def _review_rows(rows: list[dict], dataset: Path) -> list[dict]:
    out = []
    for r in rows:
        probs = sorted(((r[c], c[2:]) for c in PROB_COLUMNS if r.get(c) is not None),
                       reverse=True)
        second = probs[1] if len(probs) > 1 else (None, None)
        out.append({
            "image": r["image"], "crop": str(dataset / r["image"]), "split": r["split"],
            "source": r["source"], "frame_index": r["frame_index"],
            "timestamp_s": r["timestamp_s"], "face_index": r["face_index"],
            "track_id": r.get("track_id"),
            "machine_label": r["machine_label"], "confidence": r["confidence"],
            "runner_up": second[1], "runner_up_p": second[0], "reviewed_label": "",
        })
    return out


# --------------------------------------------------------------------------- export

def export(annotations: str | Path, out_dir: str | Path, o: ExportOptions,
           on_start: Callable[[int], None] | None = None,
           on_advance: Callable[[int], None] | None = None,
           log: Callable[[str], None] | None = None) -> ExportSummary:
    """Cut the selected faces of ``annotations`` into a dataset at ``out_dir``.

    Sources that are missing or unreadable are reported (``summary.errors``) and skipped.
    Everything is written to a temporary folder beside ``out_dir`` and renamed at the end.
    """
    from PIL import Image

    from ..annotation.io.decode import DecodeError
    from ..annotation.io.read import location, read_annotations
    from ..annotation.io.write import OutputError

    t0 = time.monotonic()
    check_options(o)
    out = Path(os.path.abspath(out_dir))
    try:
        ann_path = location(annotations)  # a local path, or a URI (s3://...)
        table = read_annotations(ann_path)
    except OutputError as e:
        raise ExportError(str(e)) from None
    local = isinstance(ann_path, Path)
    roots = [Path(o.root).resolve()] if o.root else \
        [Path.cwd()] + ([ann_path.resolve().parent] if local else [])
    rows = table.drop_columns(["embedding"]).to_pylist()  # descriptors are never exported
    for i, r in enumerate(rows):
        r["annotation_row"] = i
        r["_conf"] = confidence(r)
    if o.persons is not None:
        add_persons(rows, o.persons, str(ann_path))
    resolved = {s: _resolve(s, roots) for s in {r["source"] for r in rows}}
    review = Path(os.path.abspath(o.review_csv)) if o.review_csv else None
    _check_outputs(out, Path(os.path.abspath(ann_path)) if local else None, review,
                   [Path(os.path.abspath(p)) for p in resolved.values()], o.overwrite)

    summary = ExportSummary(output=str(out), annotations=sum(
        1 for r in rows if r["face_index"] is not None))
    chosen, summary.dropped = select(rows, o)
    summary.selected = len(chosen)
    if not chosen:
        why = ", ".join(f"{n} by {k}" for k, n in summary.dropped.items())
        raise ExportError(f"no faces to export: {summary.annotations} faces in {ann_path}"
                          + (f", left out {why}" if why else ""))
    ext = IMAGE_FORMATS[o.image_format.lower()]
    _crop_names(chosen, ext)

    tmp = out.parent / f".{out.name}.cage-export-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / IMAGES_DIR).mkdir(parents=True)
    if on_start:
        on_start(len(chosen))
    done: list[dict] = []
    try:
        by_source: dict[str, list[dict]] = {}
        for r in chosen:
            by_source.setdefault(r["source"], []).append(r)
        for source, items in by_source.items():
            path = resolved[source]
            by_frame: dict[int, list[dict]] = {}
            for r in items:
                by_frame.setdefault(r["frame_index"], []).append(r)
            first = items[0]
            written: list[dict] = []
            try:
                for idx, frame in _frames_of(path, first["media"], sorted(by_frame),
                                             (first["frame_width"], first["frame_height"])):
                    for r in by_frame[idx]:
                        region = crop_region((r["x1"], r["y1"], r["x2"], r["y2"]), o.margin)
                        face = crop_square(frame, region, o.size)
                        target = tmp / r["image"]
                        try:
                            if ext == ".jpg":
                                Image.fromarray(face).save(target, quality=o.jpeg_quality)
                            else:
                                Image.fromarray(face).save(target)
                        except OSError as e:
                            raise ExportError(f"cannot write {target}: {e.strerror or e}") \
                                from None
                        r["crop_x1"], r["crop_y1"], r["crop_x2"], r["crop_y2"] = region
                        written.append(r)
                    if on_advance:
                        on_advance(len(by_frame[idx]))
            except (DecodeError, OSError) as e:
                reason = str(e) if isinstance(e, DecodeError) else (e.strerror or str(e))
                summary.errors.append({"source": source, "reason": reason})
                if log:
                    log(f"skipped {source}: {reason}")
                for r in written:
                    (tmp / r["image"]).unlink(missing_ok=True)
                if on_advance:
                    on_advance(len(items) - len(written))
                continue
            done.extend(written)
            summary.sources_ok += 1

        assign_splits(done, o.split, o.seed, by_person=o.persons is not None)
        summary.split_by = "person" if o.persons is not None else "source"
        for r in done:
            r["machine_label"] = r["label"]
            r["confidence"] = r.pop("_conf")
            r["expression"] = EXPRESSIONS.index(r["label"])
            r["label_source"] = "machine"
            r["rejected"] = False
        splits = list(o.split) if o.split else [NO_SPLIT]
        summary.splits = write_labels(tmp, done, splits)
        summary.empty_splits = [s for s, n in summary.splits.items() if n == 0]
        summary.classes = dict(sorted(Counter(r["label"] for r in done).items(),
                                      key=lambda kv: EXPRESSIONS.index(kv[0])))
        summary.exported = len(done)
        manifest = tmp / f"manifest.{o.manifest_format.lower()}"
        write_manifest(manifest, done)
        summary.seconds = time.monotonic() - t0
        _write_marker(tmp, ann_path, o, summary, splits, manifest.name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if review is not None:
        review.parent.mkdir(parents=True, exist_ok=True)
        _write_csv(review, REVIEW_COLUMNS, _review_rows(done, out))
        summary.review_csv = str(review)
    summary.seconds = time.monotonic() - t0
    return summary


def _write_marker(d: Path, ann: Path | UriPath, o: ExportOptions, s: ExportSummary,
                  splits: list[str], manifest: str) -> None:
    from .. import __version__

    info = {
        "tool": "cage export", "tool_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "annotations": str(ann.resolve()), "options": asdict(o), "manifest": manifest,
        "labels": {k: f"{k}.csv" for k in splits},
        "counts": {"annotations": s.annotations, "selected": s.selected, "exported": s.exported,
                   "dropped": s.dropped, "splits": s.splits, "classes": s.classes},
        "errors": s.errors, "reviews": [],
    }
    (d / MARKER).write_text(json.dumps(info, indent=2) + "\n")


# --------------------------------------------------------------------------- console output

class ExportProgress:
    """Faces cropped / total on stderr (rich). Silent when disabled."""

    def __init__(self, console, enabled: bool = True):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self._progress = Progress(
            TextColumn("[bold]exporting"), BarColumn(), MofNCompleteColumn(), TextColumn("faces"),
            TimeElapsedColumn(), console=console, disable=not enabled)
        self._task = self._progress.add_task("faces", total=None)

    def __enter__(self) -> ExportProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def start(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def advance(self, n: int) -> None:
        self._progress.update(self._task, advance=n)

    def log(self, line: str) -> None:
        self.console.print(f"cage: {line}", markup=False, highlight=False, soft_wrap=True)


def print_summary(console, s: ExportSummary) -> None:
    from rich.table import Table

    table = Table(title="cage export", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    rows: list[tuple[str, Any]] = [("faces in annotations", s.annotations)]
    rows += [(f"  left out by {k}", v) for k, v in s.dropped.items()]
    rows += [("faces selected", s.selected), ("crops written", s.exported)]
    rows += [(f"  in {k}.csv", v) for k, v in s.splits.items()]
    if s.split_by == "person":
        rows.append(("  split by", "person (--persons)"))
    rows += [(f"  labelled {k}", v) for k, v in s.classes.items()]
    rows += [("sources ok", s.sources_ok), ("sources failed", len(s.errors)),
             ("wall time", f"{s.seconds:.1f} s"), ("output", s.output)]
    if s.review_csv:
        rows.append(("review sheet", s.review_csv))
    for k, v in rows:
        table.add_row(k, str(v))
    console.print(table)


def empty_split_warning(s: ExportSummary) -> str | None:
    """The warning for splits that got no faces (None if every split has some)."""
    if not s.empty_splits:
        return None
    files = ", ".join(f"{k}.csv" for k in s.empty_splits)
    if s.split_by == "person":
        return (f"cage: warning: {files} got no faces: the {s.exported} faces are of too few "
                "persons, and each person goes whole into one split; export more persons, "
                "try another --seed, or use fewer splits")
    return (f"cage: warning: {files} got no faces: the {s.exported} faces come from "
            f"{s.sources_ok} sources, and each source goes whole into one split; export more "
            "sources, try another --seed, or use fewer splits")

