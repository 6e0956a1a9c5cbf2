"""Scene classification metrics: macro accuracy, log loss, class-wise results and confusion matrix.

One function, `compute_metrics`, used by validation, evaluation and the submission files alike.
Definitions follow DCASE 2020 Task 1 (and sed_eval / the official baseline):

- accuracy: macro average of the class-wise accuracies (recall of each class), in percent.
- plain_accuracy: correct clips / all clips, in percent.
- log_loss: multi-class cross-entropy over all clips, `sklearn.metrics.log_loss` with
  `labels=range(C)`; probabilities are clipped to [eps, 1 - eps] (eps of float64), as sklearn does.
- log_loss_macro: mean of the class-wise log losses.
- class_wise[label]: accuracy (%), log_loss (over that class's clips) and n_clips.

A class without clips has accuracy and log_loss None (JSON null) and is left out of the macro means
(averaging a 0 or a 100 for it would invent a result). The confusion matrix still has its row.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, log_loss

# Rows of `probs` may be off 1 by float16/float32 rounding; anything further off is not probabilities.
_SUM_TOLERANCE = 1e-2


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Metrics for integer labels `y_true` (N,) and class probabilities `probs` (N, C).

    `classes[i]` names column i of `probs` (and label value i). Rows of `probs` are renormalised to
    sum to 1 (they must already sum to 1 within 1e-2: apply the softmax first). The prediction is the
    argmax (first maximum on ties). Returns a JSON-ready dict (floats, ints, lists, None).
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    classes = list(classes)
    n_classes = len(classes)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"probs must have shape (N, {n_classes}) for classes {classes}, got {probs.shape}")
    if y_true.ndim != 1 or len(y_true) != len(probs):
        raise ValueError(f"y_true must have shape ({len(probs)},), got {y_true.shape}")
    if len(y_true) == 0:
        raise ValueError("no clips to evaluate (empty y_true)")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true values must be in [0, {n_classes - 1}], got [{y_true.min()}, {y_true.max()}]")
    if not np.all(np.isfinite(probs)) or probs.min() < 0:
        raise ValueError("probs must be finite and non-negative")
    sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1)))
    if abs(sums[worst] - 1) > _SUM_TOLERANCE:
        raise ValueError(
            f"probs row {worst} sums to {sums[worst]:.6g}, not 1: pass probabilities (softmax), not logits"
        )
    probs = probs / sums[:, None]

    labels = list(range(n_classes))
    y_pred = probs.argmax(axis=1)
    correct = y_pred == y_true

    class_wise = {}
    for index, label in enumerate(classes):
        mask = y_true == index
        n_clips = int(mask.sum())
        if n_clips == 0:
            class_wise[label] = {"accuracy": None, "log_loss": None, "n_clips": 0}
            continue
        class_wise[label] = {
            "accuracy": float(100.0 * correct[mask].mean()),
            "log_loss": float(log_loss(y_true[mask], probs[mask], labels=labels)),
            "n_clips": n_clips,
        }
    present = [m for m in class_wise.values() if m["n_clips"] > 0]

    return {
        "accuracy": float(np.mean([m["accuracy"] for m in present])),
        "plain_accuracy": float(100.0 * correct.mean()),
        "log_loss": float(log_loss(y_true, probs, labels=labels)),
        "log_loss_macro": float(np.mean([m["log_loss"] for m in present])),
        "class_wise": class_wise,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": classes,
        "n_clips": int(len(y_true)),
    }
