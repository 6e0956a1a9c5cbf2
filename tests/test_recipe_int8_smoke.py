"""Smoke: recipes/int8.yaml runs end to end on a tiny generated set; its int8 rows are under 500 KB."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_int8_recipe_runs_and_fits_the_2020_limit(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dcase_effdl", "run", str(REPO / "recipes" / "int8.yaml"), "--out", "runs/i",
         "--set", "train.epochs=1", "--set", "dataset.root=data/tiny", "--set", "dataset.synthetic.clips_per_class=6",
         "--set", "cache_dir=cache"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "i"
    sizes = {v: json.loads((run_dir / v / "size.json").read_text()) for v in ("float32", "int8", "int8_qat")}
    assert not sizes["float32"]["within_limit"]  # 1,682.57 KB: the reason to quantize
    for name in ("int8", "int8_qat"):
        size = sizes[name]
        assert size["within_limit"] and size["size_kb"] < 500
        assert {r["format"] for r in size["rows"] if r["role"] == "weight"} == {"int8"}
        assert 0 < size["file_size_bytes"] - size["size_bytes"] < 8 * 1024
    assert "int8 post-training quantization" in proc.stdout
    assert "int8 quantization-aware training" in proc.stdout
