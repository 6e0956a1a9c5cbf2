"""compute_metrics: hand-computed example, parity with sklearn, empty classes, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, log_loss

from dcase_effdl.metrics import compute_metrics

CLASSES = ["indoor", "outdoor", "transportation"]

# Ten clips, worked out by hand below. Ties go to the first class (clips 5 and 8 are wrong).
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
PROBS = np.array(
    [
        [0.8, 0.1, 0.1],  # 0 -> 0 right
        [0.5, 0.25, 0.25],  # 0 -> 0 right
        [0.2, 0.6, 0.2],  # 0 -> 1 wrong
        [0.25, 0.25, 0.5],  # 0 -> 2 wrong
        [0.1, 0.8, 0.1],  # 1 -> 1 right
        [0.6, 0.4, 0.0],  # 1 -> 0 wrong
        [0.1, 0.1, 0.8],  # 2 -> 2 right
        [0.0, 0.0, 1.0],  # 2 -> 2 right, loss -ln(1 - eps) ~ 0
        [0.5, 0.0, 0.5],  # 2 -> 0 wrong (tie)
        [0.2, 0.2, 0.6],  # 2 -> 2 right
    ]
)


def test_hand_computed_example():
    m = compute_metrics(Y_TRUE, PROBS, CLASSES)
    ln = math.log
    loss0 = (ln(1 / 0.8) + ln(2) + ln(5) + ln(4)) / 4  # 0.978005
    loss1 = (ln(1 / 0.8) + ln(1 / 0.4)) / 2  # 0.569717
    loss2 = (ln(1 / 0.8) + 0 + ln(2) + ln(1 / 0.6)) / 4  # 0.356779
    assert m["class_wise"]["indoor"] == pytest.approx({"accuracy": 50.0, "log_loss": loss0, "n_clips": 4})
    assert m["class_wise"]["outdoor"] == pytest.approx({"accuracy": 50.0, "log_loss": loss1, "n_clips": 2})
    assert m["class_wise"]["transportation"] == pytest.approx({"accuracy": 75.0, "log_loss": loss2, "n_clips": 4})
    assert m["accuracy"] == pytest.approx(175 / 3)  # (50 + 50 + 75) / 3 = 58.33 %
    assert m["plain_accuracy"] == pytest.approx(60.0)  # 6 of 10
    assert m["log_loss"] == pytest.approx((4 * loss0 + 2 * loss1 + 4 * loss2) / 10)
    assert m["log_loss"] == pytest.approx(0.647857, abs=1e-6)
    assert m["log_loss_macro"] == pytest.approx((loss0 + loss1 + loss2) / 3)
    assert m["confusion_matrix"] == [[2, 1, 1], [1, 1, 0], [1, 0, 3]]
    assert m["classes"] == CLASSES and m["n_clips"] == 10
    # Plain JSON types all the way down.
    assert json.loads(json.dumps(m)) == m


def test_parity_with_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    n, c = 500, 4
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    classes = ["a", "b", "c", "d"]
    m = compute_metrics(y, probs.astype(np.float32), classes)
    pred = probs.argmax(axis=1)
    assert m["accuracy"] == pytest.approx(100 * balanced_accuracy_score(y, pred))
    assert m["plain_accuracy"] == pytest.approx(100 * np.mean(pred == y))
    assert m["log_loss"] == pytest.approx(log_loss(y, probs, labels=range(c)), rel=1e-6)
    for i, label in enumerate(classes):
        mask = y == i
        assert m["class_wise"][label]["log_loss"] == pytest.approx(log_loss(y[mask], probs[mask], labels=range(c)), rel=1e-6)
        assert m["class_wise"][label]["n_clips"] == int(mask.sum())
    assert np.array(m["confusion_matrix"]).sum() == n


def test_class_without_clips_is_null_and_left_out_of_the_means():
    classes = CLASSES + ["zoo"]
    probs = np.hstack([PROBS * 0.9, np.full((10, 1), 0.1)])
    m = compute_metrics(Y_TRUE, probs, classes)
    assert m["class_wise"]["zoo"] == {"accuracy": None, "log_loss": None, "n_clips": 0}
    assert m["accuracy"] == pytest.approx(175 / 3)
    present = [m["class_wise"][k]["log_loss"] for k in CLASSES]
    assert m["log_loss_macro"] == pytest.approx(sum(present) / 3)
    assert m["confusion_matrix"][3] == [0, 0, 0, 0]
    assert json.loads(json.dumps(m))["class_wise"]["zoo"]["accuracy"] is None


def test_zero_probability_is_clipped_like_sklearn():
    m = compute_metrics(np.array([1]), np.array([[1.0, 0.0, 0.0]]), CLASSES)
    assert m["log_loss"] == pytest.approx(-math.log(np.finfo(np.float64).eps))  # 36.04
    assert m["accuracy"] == 0.0


def test_rows_are_renormalised_within_tolerance():
    nearly = PROBS * 1.001  # float16 softmax outputs are this far off
    assert compute_metrics(Y_TRUE, nearly, CLASSES)["log_loss"] == pytest.approx(
        compute_metrics(Y_TRUE, PROBS, CLASSES)["log_loss"]
    )


@pytest.mark.parametrize(
    "y, probs, message",
    [
        (Y_TRUE, PROBS * 3, "sums to 3, not 1"),
        (Y_TRUE, PROBS[:, :2], r"shape \(N, 3\)"),
        (Y_TRUE[:5], PROBS, r"y_true must have shape \(10,\)"),
        (np.array([], dtype=int), np.zeros((0, 3)), "no clips"),
        (Y_TRUE + 1, PROBS, r"must be in \[0, 2\]"),
        (Y_TRUE.astype(float), PROBS, "integer"),
        (Y_TRUE, PROBS - 0.1, "non-negative"),
    ],
)
def test_bad_input(y, probs, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(y, probs, CLASSES)
