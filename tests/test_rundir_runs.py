"""Run folders under real runs: the dataset a run used is the one `submit` checks against."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dcase_effdl.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


def cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcase_effdl", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from dcase_effdl.data.synthetic import make_dataset

    return make_dataset(tmp_path_factory.mktemp("data") / "copy", clips_per_class=6, seed=3, duration=10.0, sample_rate=16000)


@pytest.mark.slow
def test_run_with_data_records_it_and_submit_checks_against_it(dataset, tmp_path):
    """Issue 11 B4: config.yaml recorded the recipe's dataset.root, so submit checked the wrong file list."""
    work = tmp_path / "work"
    work.mkdir()
    proc = cli("run", REPO / "recipes" / "quickstart.yaml", "--data", dataset, "--out", "runs/x",
               "--set", "train.epochs=1", "--set", "cache_dir=cache", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = RunDir(work / "runs" / "x")
    assert run.recipe().dataset.root == str(dataset.resolve())
    elsewhere = tmp_path / "elsewhere"  # another working directory: the recorded path still holds
    elsewhere.mkdir()
    proc = cli("submit", run.path / "float16", "--out", "pkg", cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"validated against test split of {dataset.resolve()}" in proc.stdout
