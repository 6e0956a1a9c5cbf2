"""Run folders under real runs: the dataset a run used is what `submit` checks; one run at a time per folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
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


# sklearn digits: no audio, a run in seconds.
DIGITS = """\
name: digits
seed: {seed}
features: {features}
dataset: {{kind: digits}}
model:
  name: dcase2020_baseline
  params: {{conv_filters: [4, 8], kernel_size: 3, pool_sizes: [[2, 2], [2, 2]], dense_units: 8}}
train: {{epochs: 2, batch_size: 64, device: cpu, threads: 1}}
variants: [{{name: float32}}, {{name: float16, compress: [{{method: float16}}]}}]
"""


def digits_recipe(tmp_path: Path, seed: int) -> Path:
    path = tmp_path / f"digits{seed}.yaml"
    path.write_text(DIGITS.format(seed=seed, features=REPO / "features" / "dcase2020_baseline.yaml"))
    return path


def start_run(recipe: Path, out: Path, *extra) -> subprocess.Popen:
    """A run in the background, returned once it holds the folder's lock."""
    proc = subprocess.Popen([sys.executable, "-m", "dcase_effdl", "run", str(recipe), "--out", str(out), *extra],
                            cwd=recipe.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ((out / ".lock").is_file() and (out / ".lock").read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    return proc


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_two_runs_into_one_folder(tmp_path):
    """Issue 11: a second run said 'exists and is not a dcase-effdl run folder' or met a half-written SVG.

    (A run killed with the lock held, then resumed: test_run_resume_ddp_cli's kill -9 test.)
    """
    out = tmp_path / "runs" / "d"
    first = start_run(digits_recipe(tmp_path, 0), out)
    os.kill(first.pid, signal.SIGSTOP)  # hold the first run while it owns the folder, wherever it is
    try:
        before = snapshot(out)
        second = cli("run", digits_recipe(tmp_path, 1), "--out", out, cwd=tmp_path)  # another seed, same folder
        assert second.returncode == 2
        assert second.stderr.strip() == (f"error: {out}: in use by pid {first.pid} on {socket.gethostname()} (since "
                                         f"{json.loads((out / '.lock').read_text())['started']}); wait for it to "
                                         "finish or choose another --out")
        assert snapshot(out) == before  # the second run touched nothing
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert not (out / ".lock").exists() and not list(out.rglob("*.tmp"))
    for name in ("float32/metrics.json", "float16/size.json", "train/history.json", "environment.json"):
        json.loads((out / name).read_text())  # complete files only
    assert (out / "plots" / "accuracy_vs_size.svg").read_text().rstrip().endswith("</svg>")

