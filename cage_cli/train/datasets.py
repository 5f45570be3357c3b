"""Labelled face data for `cage train` and `cage evaluate` (layouts: docs/training.md).

Three layouts are read:

* a CSV file (the CAGE authors' layout): one row per image with an image path, an expression
  class (index in AffectNet-8 order, or a canonical name) and valence, arousal in [-1, 1];
  paths are relative to the CSV's folder (or ``--images DIR``). The authors' own files
  (``number,exp,val,aro``, image ``<number>.jpg``) and AffectNet's ``training.csv`` /
  ``validation.csv`` (``subDirectory_filePath``, face box, ``expression``, ``valence``,
  ``arousal``) are read as they are;
* a folder of class folders named after the canonical expressions (``happy/``, ``sad/``, ...):
  no valence/arousal labels;
* an AffectNet folder as commonly distributed (``images/N.jpg`` + ``annotations/N_exp.npy``,
  ``N_val.npy``, ``N_aro.npy``), from which the authors built their CSVs.

Images are face crops unless a row gives a face box or ``--crop`` asks for MTCNN.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..models.registry import ModelConfig
from ..schema import EXPRESSIONS

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})

#: Folder / CSV names accepted besides the canonical ones (case-insensitive).
ALIASES = {
    "neutrality": "neutral", "happiness": "happy", "joy": "happy", "sadness": "sad",
    "surprised": "surprise", "fearful": "fear", "afraid": "fear", "disgusted": "disgust",
    "angry": "anger", "contemptuous": "contempt",
}

_PATH_COLS = ("path", "image", "image_path", "file", "filename", "subdirectory_filepath", "number")
_CLASS_COLS = ("exp", "expression", "label", "class", "emotion")
_VAL_COLS = ("val", "valence")
_ARO_COLS = ("aro", "arousal")
_AFFECTNET_BOX = ("face_x", "face_y", "face_width", "face_height")
_XYXY_BOX = ("x1", "y1", "x2", "y2")
#: Columns that mark a `cage export` manifest (cage_cli/export/prelabel.py): its x1..y2 are
#: boxes in the source frames, and its image column names the crop, which is the face.
_MANIFEST_COLS = ("split", "crop_x1", "crop_y1", "crop_x2", "crop_y2", "rejected")
#: Rows whose face box does not fit their image are each named in a note, up to this many.
MAX_ROW_NOTES = 10


class DataError(Exception):
    """Bad training/evaluation data; the message is one user-facing line."""


@dataclass(frozen=True)
class Sample:
    path: str
    label: int = -1  # index into schema.EXPRESSIONS (= AffectNet order); -1 = unlabelled
    valence: float = math.nan  # NaN = no valence/arousal label
    arousal: float = math.nan
    box: tuple[float, float, float, float] | None = None  # face box x1, y1, x2, y2 (pixels)


@dataclass
class FaceData:
    samples: list[Sample]
    source: str
    layout: str  # csv | folders | affectnet
    notes: list[str] = field(default_factory=list)  # rows dropped or labels ignored

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def has_labels(self) -> bool:
        return any(s.label >= 0 for s in self.samples)

    @property
    def has_va(self) -> bool:
        return any(not math.isnan(s.valence) for s in self.samples)

    def class_counts(self) -> Counter:
        return Counter(s.label for s in self.samples if s.label >= 0)


def canonical_class(name: str) -> int | None:
    n = name.strip().lower()
    n = ALIASES.get(n, n)
    return EXPRESSIONS.index(n) if n in EXPRESSIONS else None


def load_data(path: str | Path, images: str | Path | None = None,
              progress: Callable[[int, int], None] | None = None) -> FaceData:
    """Read a dataset in any supported layout; raises DataError with a one-line message."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data not found: {p}")
    if p.is_file():
        if p.suffix.lower() == ".parquet" and (p.parent / "export.json").is_file():
            raise DataError(f"{p}: a `cage export` manifest in Parquet; pass the export's "
                            f"labels CSV (e.g. {_labels_csvs(p.parent)}) instead")
        if p.suffix.lower() not in (".csv", ".txt"):
            raise DataError(f"{p}: expected a CSV file or a folder (see docs/training.md)")
        data = _read_csv(p, Path(images) if images else p.parent)
    elif (p / "images").is_dir() and (p / "annotations").is_dir():
        data = _read_affectnet(p, progress)
    else:
        data = _read_folders(p)
    if not data.samples:
        raise DataError(f"{p}: no usable samples" + (f" ({'; '.join(data.notes)})"
                                                     if data.notes else ""))
    return data


# --------------------------------------------------------------------------- CSV

def _find(cols: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((cols[n] for n in names if n in cols), None)


def _read_csv(path: Path, root: Path) -> FaceData:
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    with f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        cols = {h.strip().lower(): h for h in header if h is not None}
        path_col = _find(cols, _PATH_COLS)
        class_col = _find(cols, _CLASS_COLS)
        val_col, aro_col = _find(cols, _VAL_COLS), _find(cols, _ARO_COLS)
        if path_col is None:
            raise DataError(f"{path}: no image column; expected one of {', '.join(_PATH_COLS)} "
                            f"(found: {', '.join(header) or 'nothing'})")
        if (val_col is None) != (aro_col is None):
            raise DataError(f"{path}: valence and arousal columns must come together "
                            f"(found: {', '.join(header)})")
        if class_col is None and val_col is None:
            raise DataError(f"{path}: no label columns; expected an expression column "
                            f"({', '.join(_CLASS_COLS)}) and/or valence/arousal "
                            f"(found: {', '.join(header)})")
        box_cols = None
        manifest = all(c in cols for c in _MANIFEST_COLS)
        if manifest:
            pass  # the crop files are the faces; x1..y2 are source-frame boxes
        elif all(c in cols for c in _AFFECTNET_BOX):
            box_cols = ("xywh", [cols[c] for c in _AFFECTNET_BOX])
        elif all(c in cols for c in _XYXY_BOX):
            box_cols = ("xyxy", [cols[c] for c in _XYXY_BOX])
        number = path_col == cols.get("number")
        samples: list[Sample] = []
        lines: list[int] = []
        not_expression = va_out = line_count = rejected = 0
        splits: set[str] = set()
        for line, row in enumerate(reader, start=2):
            line_count += 1
            if manifest:
                splits.add((row.get(cols["split"]) or "").strip())
                if (row.get(cols["rejected"]) or "").strip().lower() in ("true", "1", "yes"):
                    rejected += 1
                    continue
            raw = (row.get(path_col) or "").strip()
            if not raw:
                raise DataError(f"{path}:{line}: empty image path")
            rel = f"{raw}.jpg" if number else raw
            label = -1
            if class_col is not None:
                label = _parse_class(row.get(class_col), path, line)
                if label == -2:
                    not_expression += 1
                    continue
            v = a = math.nan
            if val_col is not None:
                v = _parse_float(row.get(val_col), path, line, "valence")
                a = _parse_float(row.get(aro_col), path, line, "arousal")
                if not (-1 <= v <= 1 and -1 <= a <= 1):
                    if not (math.isnan(v) and math.isnan(a)):
                        va_out += 1
                    v = a = math.nan
            box = None
            if box_cols is not None:
                vals = [_parse_float(row.get(c), path, line, c) for c in box_cols[1]]
                if not any(math.isnan(x) for x in vals):
                    x, y, w, h = vals
                    box = (x, y, x + w, y + h) if box_cols[0] == "xywh" else (x, y, w, h)
            samples.append(Sample(str(root / rel), label, v, a, box))
            lines.append(line)
    notes = []
    if manifest:
        notes.append(f"{path.name} is a `cage export` manifest: each crop in its image column "
                     "is read as the face (its x1..y2 are boxes in the source frames, not "
                     f"used), all splits together ({', '.join(sorted(splits)) or 'none'}); "
                     f"one split's labels: {_labels_csvs(path.parent)}")
        if rejected:
            notes.append(f"{rejected} rows rejected in review left out")
    if line_count == 0:
        notes.append(_no_rows(path))
    if not_expression:
        notes.append(f"{not_expression} rows without an expression (AffectNet codes 8-10: "
                     "none, uncertain, no face) skipped")
    if va_out:
        notes.append(f"{va_out} rows with valence/arousal outside [-1, 1] (AffectNet's -2 = "
                     "not annotated): their valence/arousal is ignored")
    _check_files(samples, f"listed in {path}", f"paths are relative to {root}; see --images")
    if box_cols is not None:
        samples = _boxes_that_fit(samples, lines, path, notes)
    return FaceData(samples, str(path), "csv", notes)


def _labels_csvs(folder: Path) -> str:
    """The labels CSVs of a `cage export` dataset, from its export.json (or the usual name)."""
    try:
        names = list(json.loads((folder / "export.json").read_text())["labels"].values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        names = []
    return ", ".join(str(folder / n) for n in names) or str(folder / "labels.csv")


def box_problem(box: tuple[float, float, float, float], width: int, height: int) -> str | None:
    """Why a face box cannot be cut from a ``width`` x ``height`` image, or None if it can
    (a box partly outside is fine: the outside is padded, as at a frame's edge)."""
    x1, y1, x2, y2 = box
    if not all(math.isfinite(v) for v in box):
        return "is not finite"
    if x2 <= x1 or y2 <= y1:
        return "is empty (x2 <= x1 or y2 <= y1)"
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        return f"lies outside the {width} x {height} image"
    return None


def _boxes_that_fit(samples: list[Sample], lines: list[int], path: Path,
                    notes: list[str]) -> list[Sample]:
    """Leave out (and name in ``notes``) the rows whose box does not fit their image; each
    image's size comes from its header (about 0.1 ms a row), before any training starts."""
    from PIL import Image

    keep, bad = [], 0
    sizes: dict[str, tuple[int, int] | None] = {}
    for s, line in zip(samples, lines, strict=True):
        if s.box is None:
            keep.append(s)
            continue
        if s.path not in sizes:
            try:
                with Image.open(s.path) as im:
                    sizes[s.path] = im.size
            except Exception:  # noqa: BLE001 - unreadable: reported when it is loaded
                sizes[s.path] = None
        size = sizes[s.path]
        why = box_problem(s.box, *size) if size else None
        if why is None:
            keep.append(s)
            continue
        bad += 1
        if bad <= MAX_ROW_NOTES:
            box = ", ".join(f"{v:g}" for v in s.box)
            notes.append(f"{path}:{line}: face box ({box}) {why} of {s.path}; row left out")
    if bad > MAX_ROW_NOTES:
        notes.append(f"{bad - MAX_ROW_NOTES} more rows whose face box does not fit their image "
                     "left out")
    return keep


def _no_rows(path: Path) -> str:
    """Why a labels CSV has no rows; names an empty split of a `cage export` dataset."""
    from ..export.prelabel import MARKER

    try:
        info = json.loads((path.parent / MARKER).read_text())
        split = next(k for k, v in info["labels"].items() if v == path.name)
        counts = info["counts"]
        exported, before_review = counts["exported"], counts["splits"].get(split)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration):
        return "the CSV has a header and no rows"
    if before_review:
        return f"every face of the {split} split was rejected in review"
    return (f"`cage export` left the {split} split empty: its {exported} faces come from too "
            "few sources, and each source goes whole into one split; export more sources, "
            "try another --seed, or use fewer splits")


def _parse_class(value: str | None, path: Path, line: int) -> int:
    """Canonical index; -1 for an empty cell; -2 for AffectNet's non-expression codes 8-10."""
    v = (value or "").strip()
    if not v:
        return -1
    try:
        i = int(float(v))
    except ValueError:
        i = None
    if i is not None:
        if 0 <= i < len(EXPRESSIONS):
            return i
        if 8 <= i <= 10:
            return -2
        raise DataError(f"{path}:{line}: expression {v} out of range (0-7 in AffectNet order)")
    c = canonical_class(v)
    if c is None:
        raise DataError(f"{path}:{line}: unknown expression {v!r} (use 0-7 in AffectNet order "
                        f"or one of {', '.join(EXPRESSIONS)})")
    return c


def _parse_float(value: str | None, path: Path, line: int, what: str) -> float:
    v = (value or "").strip()
    if not v:
        return math.nan
    try:
        return float(v)
    except ValueError:
        raise DataError(f"{path}:{line}: {what} {v!r} is not a number") from None


def _check_files(samples: list[Sample], where: str, hint: str) -> None:
    missing = [s.path for s in samples if not os.path.isfile(s.path)]
    if missing:
        raise DataError(f"{len(missing)} of {len(samples)} images {where} not found, "
                        f"e.g. {missing[0]} ({hint})")


# --------------------------------------------------------------------------- folders

def _read_folders(path: Path) -> FaceData:
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise DataError(f"{path}: expected a CSV file, a folder of class folders "
                        f"({', '.join(EXPRESSIONS)}) or an AffectNet folder (images/, "
                        "annotations/)")
    unknown = [d.name for d in subdirs if canonical_class(d.name) is None]
    if unknown:
        raise DataError(f"{path}: folder(s) {', '.join(unknown)} are not expressions; class "
                        f"folders must be named {', '.join(EXPRESSIONS)}")
    samples = []
    for d in subdirs:
        label = canonical_class(d.name)
        for root, _dirs, files in os.walk(d):
            for name in sorted(files):
                if os.path.splitext(name)[1].lower() in IMAGE_EXTS:
                    samples.append(Sample(os.path.join(root, name), label))
    return FaceData(samples, str(path), "folders")


# --------------------------------------------------------------------------- AffectNet npy

def _read_affectnet(path: Path, progress: Callable[[int, int], None] | None) -> FaceData:
    img_dir, ann_dir = path / "images", path / "annotations"
    names = sorted((f for f in os.listdir(img_dir) if os.path.splitext(f)[1].lower()
                    in IMAGE_EXTS), key=lambda f: (len(f), f))
    samples, skipped = [], 0
    for i, name in enumerate(names):
        stem = os.path.splitext(name)[0]
        try:
            exp = int(float(np.load(ann_dir / f"{stem}_exp.npy", allow_pickle=False)))
            v = float(np.load(ann_dir / f"{stem}_val.npy", allow_pickle=False))
            a = float(np.load(ann_dir / f"{stem}_aro.npy", allow_pickle=False))
        except FileNotFoundError as e:
            raise DataError(f"{path}: annotation missing for {name}: "
                            f"{Path(e.filename).name}") from None
        except (ValueError, OSError) as e:
            raise DataError(f"{path}: bad annotation for {name}: {e}") from None
        if not 0 <= exp < len(EXPRESSIONS):
            skipped += 1
            continue
        if not (-1 <= v <= 1 and -1 <= a <= 1):
            v = a = math.nan
        samples.append(Sample(str(img_dir / name), exp, v, a))
        if progress and (i % 1000 == 0 or i == len(names) - 1):
            progress(i + 1, len(names))
    notes = [f"{skipped} images without an expression (codes 8-10) skipped"] if skipped else []
    return FaceData(samples, str(path), "affectnet", notes)


# --------------------------------------------------------------------------- selection

def restrict(data: FaceData, classes: tuple[str, ...], need: str) -> FaceData:
    """Keep the samples a model with ``classes`` can learn from.

    need: "labels" (class labels required), "va" (valence/arousal required) or "any".
    """
    allowed = {EXPRESSIONS.index(c) for c in classes}
    keep, dropped = [], Counter()
    for s in data.samples:
        if need == "va":
            if math.isnan(s.valence):
                dropped["no valence/arousal"] += 1
                continue
        elif s.label < 0:
            if need == "labels" or math.isnan(s.valence):
                dropped["no expression label"] += 1
                continue
        elif s.label not in allowed:
            dropped[f"labelled {EXPRESSIONS[s.label]} (not a class of this model)"] += 1
            continue
        keep.append(s)
    notes = list(data.notes) + [f"{n} samples {why} left out" for why, n in dropped.items()]
    return FaceData(keep, data.source, data.layout, notes)


def balance(data: FaceData, seed: int = 0) -> FaceData:
    """Subsample every class to the size of the smallest (as the authors' VA-only training)."""
    by_class: dict[int, list[Sample]] = {}
    for s in data.samples:
        by_class.setdefault(s.label, []).append(s)
    n = min(len(v) for v in by_class.values())
    rng = random.Random(seed)
    keep = [s for v in by_class.values() for s in rng.sample(v, n)]
    rng.shuffle(keep)
    notes = list(data.notes) + [f"balanced to {n} samples per class"]
    return FaceData(keep, data.source, data.layout, notes)


# --------------------------------------------------------------------------- faces

def open_rgb(path: str):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def load_face(sample: Sample, config: ModelConfig) -> np.ndarray:
    """The model's input for one sample: (S, S, C) uint8, cropped as ``config`` says."""
    from ..preprocess import crop_face, whole_image_config

    image = open_rgb(sample.path)
    if sample.box is not None:
        return crop_face(image, np.asarray(sample.box, np.float32), config)
    box = np.array([0, 0, image.width, image.height], np.float32)
    return crop_face(image, box, whole_image_config(config))


def detect_faces(data: FaceData, device: str = "cpu", cache: Path | None = None,
                 progress: Callable[[int, int], None] | None = None) -> FaceData:
    """``--crop``: give every sample the box of its largest MTCNN face; drop faceless images.

    Boxes are cached in ``cache`` (JSON, keyed by path) when given, so a resumed run does not
    detect again.
    """
    from ..annotation.detection.mtcnn import MTCNN

    known: dict[str, list[float] | None] = {}
    if cache is not None and cache.is_file():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    todo = sorted({s.path for s in data.samples if s.path not in known})
    if todo:
        mtcnn = MTCNN(device)
        for i, p in enumerate(todo):
            known[p] = _largest_face(mtcnn, open_rgb(p))
            if progress:
                progress(i + 1, len(todo))
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(known))
    keep = [replace(s, box=tuple(known[s.path])) for s in data.samples if known[s.path]]
    notes = list(data.notes)
    if len(keep) < len(data.samples):
        notes.append(f"{len(data.samples) - len(keep)} images without a detected face left out")
    return FaceData(keep, data.source, data.layout, notes)


def _largest_face(mtcnn, image, max_side: int = 1280) -> list[float] | None:
    from PIL import Image

    scale = min(1.0, max_side / max(image.size))
    small = image if scale == 1.0 else image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BILINEAR)
    (boxes, _landmarks), = mtcnn(np.asarray(small)[None], 20)
    if len(boxes) == 0:
        return None
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return [float(v) / scale for v in boxes[int(np.argmax(areas)), :4]]


class FaceDataset:
    """torch Dataset: (input, class index or -100, (valence, arousal) with NaN for unknown).

    ``transform`` maps a PIL image to a float tensor; without it items are uint8 (S, S, C)
    tensors, the input of :meth:`ExpressionModel.predict`.
    """

    def __init__(self, samples: list[Sample], config: ModelConfig,
                 transform: Callable | None = None):
        self.samples = samples
        self.config = config
        self.transform = transform
        self.class_index = {EXPRESSIONS.index(c): j for j, c in enumerate(config.classes)}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch
        from PIL import Image

        s = self.samples[i]
        arr = load_face(s, self.config)
        if self.transform is None:
            x = torch.from_numpy(arr.copy())
        else:
            x = self.transform(Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr))
        y = self.class_index.get(s.label, -100)
        va = torch.tensor([s.valence, s.arousal], dtype=torch.float32)
        return x, y, va


def user_message(e: BaseException) -> str:
    """One line for an error, also when it was re-raised from a DataLoader worker."""
    msg = str(e)
    if "Original Traceback" in msg:
        last = msg.strip().splitlines()[-1]
        msg = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(msg.split())
