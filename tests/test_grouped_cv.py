"""benchmarks/grouped_cv.py: a bad recipe setting is one line before any data is read."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _grouped_cv():
    spec = importlib.util.spec_from_file_location("grouped_cv", REPO / "benchmarks" / "grouped_cv.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_crop_the_model_cannot_take_is_one_line_before_the_data(tmp_path, capsys):
    # The baseline's flatten head takes whole clips only; before, the folds' training crashed on it
    # after the features were extracted. The dataset folder does not exist: nothing may read it first.
    code = _grouped_cv().main(["--data", str(tmp_path / "no-such-dataset"), "--set", "train.time_crop=100"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 2 and len(out) == 1
    assert out[0].startswith("error: ") and "ambient3.yaml" in out[0] and "train.time_crop = 100 frames" in out[0]
