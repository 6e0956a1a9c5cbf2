"""Results broken down by a clip attribute: device-wise (DCASE 2020 Task 1A), city-wise, ...

Each group is scored with the one metrics function (`metrics.compute_metrics`), so a device's
accuracy is the macro average of its class-wise accuracies, as in the Task 1A results tables.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dcase_effdl.data.dataset import Clip
from dcase_effdl.metrics import compute_metrics

# Task 1A development set: devices A, B, C are real, S1-S6 simulated; S4-S6 appear only in the
# evaluation fold ("unseen"). Used only to order and tag rows; unknown devices sort after these.
TASK1A_DEVICES = ("a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6")
UNSEEN_DEVICES = ("s4", "s5", "s6")


def groupwise_metrics(groups: Sequence[str | None], y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """{group: compute_metrics(...) over the clips of that group}; None groups are '(unknown)'."""
    keys = np.asarray([g if g is not None else "(unknown)" for g in groups], dtype=object)
    if len(keys) != len(y_true):
        raise ValueError(f"{len(keys)} group values for {len(y_true)} clips")
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    order = sorted(set(keys), key=lambda g: (TASK1A_DEVICES.index(g) if g in TASK1A_DEVICES else len(TASK1A_DEVICES), g))
    return {g: compute_metrics(y_true[keys == g], probs[keys == g], classes) for g in order}


def device_wise(clips: Sequence[Clip], y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict:
    """Metrics per recording device (parsed from the file name, e.g. 'a', 's4')."""
    return groupwise_metrics([c.device for c in clips], y_true, probs, classes)


def format_breakdown(results: dict, what: str = "device") -> str:
    """One line per group: macro accuracy, log loss, clips; unseen Task 1A devices are tagged."""
    lines = [f"{what:<10} {'accuracy %':>10} {'log loss':>9} {'clips':>6}"]
    for group, m in results.items():
        tag = "  (unseen in training)" if what == "device" and group in UNSEEN_DEVICES else ""
        lines.append(f"{group:<10} {m['accuracy']:10.1f} {m['log_loss']:9.3f} {m['n_clips']:6d}{tag}")
    return "\n".join(lines)
