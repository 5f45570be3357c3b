"""cage_cli.train.metrics against hand-worked values and against scikit-learn on random data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from cage_cli.train.metrics import (
    ccc,
    classification_metrics,
    confusion_matrix,
    regression_metrics,
    va_metrics,
)


def test_hand_worked_classification() -> None:
    # true 0 0 1 1 2 2, predicted 0 1 1 1 2 0
    m = classification_metrics([0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0], ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    a, b, c = (m["per_class"][k] for k in "abc")
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert (b["precision"], b["recall"], b["f1"]) == pytest.approx((2 / 3, 1.0, 0.8))
    assert (c["precision"], c["recall"], c["f1"]) == pytest.approx((1.0, 0.5, 2 / 3))
    assert m["macro"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["macro"]["precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    # supports are all 2: weighted = macro
    assert m["weighted"]["recall"] == pytest.approx(m["macro"]["recall"])


def test_hand_worked_zero_division_and_absent_classes() -> None:
    # class 1 is never predicted (precision 0, not NaN); class 2 never occurs: not averaged
    m = classification_metrics([0, 1], [0, 0], ["a", "b", "c"])
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["c"]["support"] == 0
    assert m["per_class"]["a"]["precision"] == pytest.approx(0.5)
    assert m["macro"]["f1"] == pytest.approx((2 / 3 + 0) / 2)  # a: P .5 R 1 -> F1 2/3


def test_hand_worked_regression_and_ccc() -> None:
    x = np.array([1.0, 2.0, 3.0])
    assert ccc(x, x) == pytest.approx(1.0)
    # y = x + 1: var 2/3 each, cov 2/3, mean gap 1 -> 2 (2/3) / (2/3 + 2/3 + 1) = 4/7
    assert ccc(x, x + 1) == pytest.approx(4 / 7)
    assert ccc(x - 2, 2 - x) == pytest.approx(-1.0)  # zero means: perfect disagreement
    assert math.isnan(ccc([1.0, 1.0], [1.0, 1.0]))  # no variance, no gap: undefined
    r = regression_metrics([0.0, 0.5, -1.0], [0.5, 0.5, 0.0])
    assert r["mse"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert r["mae"] == pytest.approx(1.5 / 3)
    assert r["rmse"] == pytest.approx(math.sqrt(1.25 / 3))
    assert r["n"] == 3


def test_va_metrics_pool_valence_and_arousal() -> None:
    pv, pa, tv, ta = [0.1, 0.2], [0.5, -0.5], [0.0, 0.4], [0.5, 0.0]
    m = va_metrics(pv, pa, tv, ta)
    assert m["valence"]["mse"] == pytest.approx((0.01 + 0.04) / 2)
    assert m["arousal"]["mse"] == pytest.approx((0 + 0.25) / 2)
    assert m["va"]["mse"] == pytest.approx((0.01 + 0.04 + 0 + 0.25) / 4)
    assert m["va"]["n"] == 4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 8
    y_true = rng.integers(0, k - 1, 300)  # class 7 never true ...
    y_pred = np.where(rng.random(300) < 0.5, y_true, rng.integers(0, k, 300))  # ... but predicted
    y_pred[y_pred == 3] = 4  # class 3 never predicted
    m = classification_metrics(y_true, y_pred, [str(i) for i in range(k)])
    np.testing.assert_array_equal(m["confusion_matrix"],
                                  skm.confusion_matrix(y_true, y_pred, labels=range(k)))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=range(k),
                                                     zero_division=0)
    for i in range(k):
        c = m["per_class"][str(i)]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx(
            (p[i], r[i], f[i], s[i]))
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, average=avg,
                                                         zero_division=0)
        assert (m[avg]["precision"], m[avg]["recall"], m[avg]["f1"]) == pytest.approx((p, r, f))


def test_regression_matches_sklearn_and_textbook_ccc() -> None:
    rng = np.random.default_rng(3)
    t = rng.uniform(-1, 1, 500)
    p = 0.7 * t + rng.normal(0, 0.3, 500) + 0.1
    r = regression_metrics(p, t)
    assert r["mse"] == pytest.approx(skm.mean_squared_error(t, p))
    assert r["mae"] == pytest.approx(skm.mean_absolute_error(t, p))
    assert r["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(t, p)))
    rho = np.corrcoef(p, t)[0, 1]
    expected = 2 * rho * p.std() * t.std() / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)
    assert r["ccc"] == pytest.approx(expected)


def test_confusion_matrix_rejects_bad_labels() -> None:
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
    assert confusion_matrix([], [], 2).tolist() == [[0, 0], [0, 0]]
