"""`cage evaluate`: expression and valence/arousal metrics of any registered model on labelled
faces (layouts as `cage train`, see docs/training.md).

Images are taken as face crops (the whole image is the model's input region: squared as the
model's crop config says, no margin added) unless rows carry a face box or ``crop=True``
(largest MTCNN face, then the model's own crop config, as `cage annotate`).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..schema import EXPRESSIONS
from . import datasets as ds
from .metrics import classification_metrics, va_metrics


def evaluate(data: str | Path, model: str | None = None, weights: str | Path | None = None,
             images: str | Path | None = None, crop: bool = False, batch_size: int = 32,
             device: str = "auto", precision: str = "auto", workers: int = 0,
             predictions: str | Path | None = None, console=None) -> dict[str, Any]:
    """Run ``model`` over ``data``; return the metrics as a JSON-ready dict."""
    from torch.utils.data import DataLoader

    from ..models.cage import load_model

    fd = ds.load_data(data, images)
    if not fd.has_labels and not fd.has_va:
        raise ds.DataError(f"{data}: no expression or valence/arousal labels to evaluate against")
    em = load_model(model, weights, device=device, precision=precision)
    cfg = em.config
    if crop:
        fd = ds.detect_faces(fd, str(em.device) if em.device.type == "cuda" else "cpu")
        if not fd.samples:
            raise ds.DataError(f"{data}: no face found in any image")
    loader = DataLoader(ds.FaceDataset(fd.samples, cfg), batch_size=batch_size,
                        num_workers=workers, shuffle=False)
    probs, val, aro = [], [], []
    progress = _progress(console)
    with progress:
        task = progress.add_task(f"evaluating {cfg.name}", total=len(fd.samples))
        for x, _y, _va in loader:
            out = em.predict(x)
            probs.append(out["probs"])
            val.append(out["valence"])
            aro.append(out["arousal"])
            progress.update(task, advance=len(x))
    probs_a = np.concatenate(probs) if probs else np.zeros((0, len(EXPRESSIONS)), np.float32)
    val_a = np.concatenate(val) if val else np.zeros(0, np.float32)
    aro_a = np.concatenate(aro) if aro else np.zeros(0, np.float32)

    labels = np.array([s.label for s in fd.samples], np.int64)
    tv = np.array([s.valence for s in fd.samples], np.float64)
    ta = np.array([s.arousal for s in fd.samples], np.float64)
    classes = tuple(cfg.classes)
    canon = [EXPRESSIONS.index(c) for c in classes]
    notes = list(fd.notes)
    result: dict[str, Any] = {
        "model": cfg.name,
        "weights": str(weights) if weights is not None else (cfg.weights or None),
        "weights_sha256": em.weights_sha256,
        "data": fd.source,
        "layout": fd.layout,
        "crop": "mtcnn" if crop else ("boxes" if any(s.box for s in fd.samples) else "whole_image"),
        "n_images": len(fd.samples),
        "model_classes": list(classes),
        "excluded": {},
        "classification": None,
        "va_method": cfg.va_method,
        "va": None,
        "notes": notes,
    }
    pred = np.full(len(labels), -1, np.int64)
    if classes:
        pred = np.argmax(probs_a[:, canon], axis=1) if len(probs_a) else pred
        in_model = np.isin(labels, canon)
        outside = Counter(EXPRESSIONS[i] for i in labels[(labels >= 0) & ~in_model])
        if outside:
            result["excluded"] = dict(outside)
            notes.append(f"excluded from expression metrics: {_counts(outside)} "
                         f"({cfg.name} has no such class)")
        if in_model.any():
            y_true = np.array([canon.index(i) for i in labels[in_model]], np.int64)
            result["classification"] = classification_metrics(y_true, pred[in_model], classes)
        elif fd.has_labels:
            notes.append(f"no labelled face belongs to a class of {cfg.name}")
    elif fd.has_labels:
        notes.append(f"{cfg.name} predicts no expression classes: expression metrics skipped")
    has_va = ~np.isnan(tv) & ~np.isnan(ta)
    if has_va.any():
        result["va"] = va_metrics(val_a[has_va], aro_a[has_va], tv[has_va], ta[has_va])
        if cfg.va_method != "head":
            notes.append(f"{cfg.name} has no valence/arousal head: valence/arousal are the "
                         "expected AffectNet class centroid (va_method centroid)")
    if predictions is not None:
        _write_predictions(Path(predictions), fd.samples, probs_a, val_a, aro_a, pred, classes)
    return _clean(result)


def _counts(c: Counter) -> str:
    return ", ".join(f"{n} {name}" for name, n in sorted(c.items()))


def _progress(console):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    console=console or Console(stderr=True), transient=True)


def _clean(obj):
    """NaN -> None, so the JSON is standard."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def _write_predictions(path: Path, samples, probs, val, aro, pred, classes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true_label", "pred_label", *[f"p_{e}" for e in EXPRESSIONS],
                     "true_valence", "true_arousal", "valence", "arousal"])
        for i, s in enumerate(samples):
            w.writerow([s.path, EXPRESSIONS[s.label] if s.label >= 0 else "",
                        classes[pred[i]] if classes and pred[i] >= 0 else "",
                        *["" if math.isnan(p) else f"{p:.6f}" for p in probs[i]],
                        "" if math.isnan(s.valence) else s.valence,
                        "" if math.isnan(s.arousal) else s.arousal,
                        f"{val[i]:.6f}", f"{aro[i]:.6f}"])


def write_json(result: dict[str, Any], path: str | Path) -> None:
    text = json.dumps(result, indent=2, allow_nan=False)
    if str(path) == "-":
        print(text)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text + "\n")


def print_report(result: dict[str, Any], console) -> None:
    """Rich tables: expression metrics, confusion matrix, valence/arousal metrics, notes."""
    from rich.table import Table

    console.print(f"[bold]{result['model']}[/bold] on {result['data']}: "
                  f"{result['n_images']} faces ({_CROPS[result['crop']]})", highlight=False)
    c = result["classification"]
    if c:
        t = Table(title=f"expressions: accuracy {_f(c['accuracy'])} (n={c['n']})")
        for col in ("class", "precision", "recall", "F1", "support"):
            t.add_column(col, justify="left" if col == "class" else "right")
        for name, m in c["per_class"].items():
            t.add_row(name, _f(m["precision"]), _f(m["recall"]), _f(m["f1"]), str(m["support"]))
        t.add_section()
        for avg in ("macro", "weighted"):
            m = c[avg]
            t.add_row(f"{avg} avg", _f(m["precision"]), _f(m["recall"]), _f(m["f1"]), str(c["n"]))
        console.print(t)
        cm = Table(title="confusion matrix (rows: true, columns: predicted)")
        cm.add_column("")
        for name in c["classes"]:
            cm.add_column(name[:8], justify="right")
        for name, row in zip(c["classes"], c["confusion_matrix"], strict=True):
            cm.add_row(name, *[str(v) for v in row])
        console.print(cm)
    v = result["va"]
    if v:
        t = Table(title=f"valence/arousal ({result['va_method']})")
        for col in ("", "MSE", "MAE", "RMSE", "CCC", "n"):
            t.add_column(col, justify="left" if not col else "right")
        for d, label in (("valence", "valence"), ("arousal", "arousal"), ("va", "pooled")):
            m = v[d]
            t.add_row(label, _f(m["mse"]), _f(m["mae"]), _f(m["rmse"]), _f(m["ccc"]), str(m["n"]))
        console.print(t)
    for n in result["notes"]:
        console.print(f"note: {n}", highlight=False, markup=False)


_CROPS = {"mtcnn": "largest MTCNN face per image", "boxes": "face boxes from the data",
          "whole_image": "pre-cropped faces"}


def _f(x) -> str:
    return "-" if x is None else f"{x:.4f}"
