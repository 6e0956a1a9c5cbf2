"""Device-wise results: each device scored with the one metrics function."""

from __future__ import annotations

import numpy as np
import pytest

from dcase_effdl.evaluation.breakdown import device_wise, format_breakdown
from dcase_effdl.data.dataset import Clip


def _clip(name: str, label: str) -> Clip:
    scene, city, loc, seg, device = name.split("-")
    return Clip(f"audio/{name}.wav", label, f"{city}-{loc}", city, loc, seg, device, scene)


def test_device_wise_accuracy_and_order():
    clips = [
        _clip("park-lyon-1-1-s4", "park"), _clip("park-lyon-1-1-a", "park"),
        _clip("bus-lyon-2-1-a", "bus"), _clip("bus-lyon-2-1-b", "bus"), _clip("bus-lyon-2-2-s4", "bus"),
    ]
    classes = ["bus", "park"]
    y = np.array([1, 1, 0, 0, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.4, 0.6], [0.6, 0.4]])
    out = device_wise(clips, y, probs, classes)
    assert list(out) == ["a", "b", "s4"]
    assert out["a"]["accuracy"] == pytest.approx(100.0) and out["a"]["n_clips"] == 2
    assert out["b"]["accuracy"] == pytest.approx(0.0)  # only a bus clip, predicted park
    # s4: park clip wrong (0 %), bus clip right (100 %) -> macro 50 %
    assert out["s4"]["accuracy"] == pytest.approx(50.0)
    assert out["s4"]["log_loss"] == pytest.approx(-(np.log(0.1) + np.log(0.6)) / 2)
    text = format_breakdown(out)
    assert text.splitlines()[3].startswith("s4") and "(unseen in training)" in text
