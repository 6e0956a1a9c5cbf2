"""Smoke: every shipped recipe runs end to end on a tiny generated set and leaves its files.

Each recipe is run as written (model, front end, training options, compression steps), except that
every epoch count is cut to 1 and the data is 6 generated clips per class, so the whole list takes
minutes. quickstart and int8 have their own smoke tests with more assertions.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
OWN_SMOKE_TESTS = {"quickstart", "int8"}
RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml") if p.stem not in OWN_SMOKE_TESTS)


def one_epoch(node):
    """Every `*epochs` count and `*epoch` start in a recipe (training, SWA, schedules, compression steps,
    teachers) cut to at most 1."""
    if isinstance(node, dict):
        return {
            k: (min(v, 1) if k.endswith(("epochs", "epoch")) and isinstance(v, (int, float)) and not isinstance(v, bool) else one_epoch(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [one_epoch(v) for v in node]
    return node


def tiny_recipe(name: str, work: Path) -> Path:
    data = one_epoch(yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text()))
    data["features"] = str((REPO / "features" / Path(data.get("features", "dcase2020_baseline.yaml")).name).resolve())
    if data.get("dataset", {}).get("kind", "tau") == "tau":
        data["dataset"]["root"] = "data/tiny"
        data["dataset"]["synthetic"] = {"clips_per_class": 6, "seed": 0}
    data["cache_dir"] = "cache"
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_end_to_end(name, tmp_path):
    recipe = tiny_recipe(name, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "dcase_effdl", "run", str(recipe), "--out", "runs/r"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "r"
    variants = [v["name"] for v in yaml.safe_load(recipe.read_text())["variants"]]
    board = list(csv.DictReader(open(run_dir / "leaderboard.csv")))
    assert sorted(row["Variant"] for row in board) == sorted(variants)
    for variant in variants:
        vdir = run_dir / variant
        metrics = json.loads((vdir / "metrics.json").read_text())
        size = json.loads((vdir / "size.json").read_text())
        assert (vdir / "model.safetensors").is_file()
        assert 0.0 <= metrics["accuracy"] <= 100.0 and metrics["n_clips"] > 0
        assert 0 < size["n_nonzero"] <= size["n_params"]
        outputs = list(vdir.glob("*.output.csv"))
        assert len(outputs) == 1
        rows = list(csv.reader(open(outputs[0]), delimiter="\t"))
        assert len(rows) - 1 == metrics["n_clips"]
    assert (run_dir / "report.html").is_file()
