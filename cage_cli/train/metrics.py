"""Expression and valence/arousal metrics (numpy only), as reported by `cage evaluate`.

Classification follows scikit-learn's conventions: precision/recall/F1 of a class with no
predictions / no true samples are 0; macro and support-weighted averages run over the classes
that occur in the true or predicted labels (scikit-learn's default ``labels=None``). The CAGE
paper reports support-weighted precision/recall/F1 (their evaluation.py), which equal macro
averages on AffectNet's balanced validation set.

Regression: MSE, MAE, RMSE and Lin's concordance correlation coefficient (population
moments), per dimension and pooled over valence and arousal (the paper's tables pool them).
"""

from __future__ import annotations

import math

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """(k, k) counts, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    if y_true.shape != y_pred.shape:
        raise ValueError("y_true and y_pred differ in length")
    if len(y_true) and (min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max())
                        >= k):
        raise ValueError(f"labels must be in [0, {k})")
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.zeros_like(a, dtype=np.float64)
    np.divide(a, b, out=out, where=b > 0)
    return out


def classification_metrics(y_true, y_pred, classes: list[str] | tuple[str, ...]) -> dict:
    """Accuracy, per-class/macro/weighted precision, recall, F1 and the confusion matrix.

    ``y_true``/``y_pred`` are indices into ``classes``.
    """
    k = len(classes)
    cm = confusion_matrix(y_true, y_pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    precision = _div(tp, predicted)
    recall = _div(tp, support)
    f1 = _div(2 * precision * recall, precision + recall)
    n = int(cm.sum())
    present = (support > 0) | (predicted > 0)
    per_class = {
        c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
            "support": int(support[i])}
        for i, c in enumerate(classes)
    }

    def avg(weights: np.ndarray) -> dict:
        w = weights[present]
        if w.sum() == 0:
            return {"precision": math.nan, "recall": math.nan, "f1": math.nan}
        return {name: float(np.average(v[present], weights=w))
                for name, v in (("precision", precision), ("recall", recall), ("f1", f1))}

    return {
        "n": n,
        "accuracy": float(tp.sum() / n) if n else math.nan,
        "classes": list(classes),
        "per_class": per_class,
        "macro": avg(np.ones(k)),
        "weighted": avg(support),
        "confusion_matrix": cm.tolist(),
    }


def ccc(pred, true) -> float:
    """Lin's concordance correlation coefficient (population variances and covariance)."""
    x = np.asarray(pred, np.float64)
    y = np.asarray(true, np.float64)
    if len(x) == 0:
        return math.nan
    mx, my = x.mean(), y.mean()
    cov = ((x - mx) * (y - my)).mean()
    den = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / den) if den > 0 else math.nan


def regression_metrics(pred, true) -> dict:
    x = np.asarray(pred, np.float64)
    y = np.asarray(true, np.float64)
    if len(x) == 0:
        return {"n": 0, "mse": math.nan, "mae": math.nan, "rmse": math.nan, "ccc": math.nan}
    err = x - y
    mse = float(np.mean(err**2))
    return {"n": int(len(x)), "mse": mse, "mae": float(np.mean(np.abs(err))),
            "rmse": math.sqrt(mse), "ccc": ccc(x, y)}


def va_metrics(pred_valence, pred_arousal, true_valence, true_arousal) -> dict:
    """Per-dimension metrics and the pooled ones ("va": valence and arousal concatenated)."""
    pv, pa = np.asarray(pred_valence, np.float64), np.asarray(pred_arousal, np.float64)
    tv, ta = np.asarray(true_valence, np.float64), np.asarray(true_arousal, np.float64)
    return {
        "valence": regression_metrics(pv, tv),
        "arousal": regression_metrics(pa, ta),
        "va": regression_metrics(np.concatenate([pv, pa]), np.concatenate([tv, ta])),
    }
