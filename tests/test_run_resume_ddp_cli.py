"""`dcase-effdl run --resume` after kill -9, and `torchrun --nproc_per_node 2 -m dcase_effdl run` on CPU."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# sklearn digits (no audio needed); a batch-norm-free network so that two CPU ranks (per-rank batch
# statistics) compute exactly what one process computes.
RECIPE = """\
name: {name}
seed: 0
features: {features}
dataset:
  kind: digits
  validation_fraction: 0.3
model:
  name: dcase2020_baseline
  params: {{conv_filters: [8, 16], kernel_size: 3, pool_sizes: [[2, 2], [2, 2]], dense_units: 16, batch_norm: false, dropout: 0.0}}
train:
  epochs: {epochs}
  batch_size: 32
  optimizer: sgd
  lr: 0.05
  schedule: cosine
  warmup_epochs: 1
  mixup_alpha: 0.2
  time_roll: 1
  balanced_batches: true
  device: cpu
  threads: 1
variants:
  - name: float32
    compress: []
"""


def env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def write_recipe(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(name="tiny", epochs=epochs, features=REPO / "features" / "dcase2020_baseline.yaml"))
    return path


def cli(*args, prefix=None, timeout=300):
    cmd = (prefix or [sys.executable, "-m", "dcase_effdl"]) + [str(a) for a in args]
    proc = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def results(run_dir: Path):
    metrics = json.loads((run_dir / "float32" / "metrics.json").read_text())
    history = json.loads((run_dir / "train" / "history.json").read_text())
    rows = [{k: v for k, v in r.items() if "seconds" not in k} for r in history["epochs"]]
    return metrics, rows


@pytest.mark.slow
def test_run_killed_then_resumed_ends_with_the_same_numbers(tmp_path):
    recipe = write_recipe(tmp_path, epochs=25)
    cli("run", recipe, "--out", tmp_path / "straight")

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dcase_effdl", "run", str(recipe), "--out", str(killed)],
                            cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "train" / "last.pt"
    deadline = time.time() + 240
    while time.time() < deadline:
        if last.is_file():
            try:
                if torch.load(last, weights_only=True)["epoch"] >= 2:
                    break
            except Exception:  # caught between writes: try again
                pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch = torch.load(last, weights_only=True)["epoch"]
    assert 2 <= epoch < 25 and not (killed / "train" / "best.safetensors").exists()

    out = cli("run", recipe, "--out", killed, "--resume")
    assert f"resuming from {last} after epoch {epoch}" in out.stdout + out.stderr
    assert results(killed) == results(tmp_path / "straight")


@pytest.mark.slow
def test_resume_refuses_another_recipes_checkpoint(tmp_path):
    recipe = write_recipe(tmp_path, epochs=2)
    run_dir = tmp_path / "run"
    cli("run", recipe, "--out", run_dir)
    last = run_dir / "train" / "last.pt"
    (run_dir / "train" / "best.safetensors").unlink()  # as if training had been interrupted
    last.write_bytes(last.read_bytes()[:1000])
    before = last.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "dcase_effdl", "run", str(recipe), "--out", str(run_dir), "--resume"],
                          cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "truncated" in lines[0] and str(last) in lines[0]
    assert last.read_bytes() == before


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    recipe = write_recipe(tmp_path, epochs=3)
    cli("run", recipe, "--out", tmp_path / "single")
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    cli("run", recipe, "--out", tmp_path / "ddp", prefix=[torchrun, "--standalone", "--nproc_per_node", "2", "-m", "dcase_effdl"])
    (m1, h1), (m2, h2) = results(tmp_path / "single"), results(tmp_path / "ddp")
    assert m1["accuracy"] == pytest.approx(m2["accuracy"], abs=0.5)  # at most one clip flips
    assert m1["log_loss"] == pytest.approx(m2["log_loss"], rel=1e-3)
    for a, b in zip(h1, h2):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
    assert (tmp_path / "ddp" / "leaderboard.csv").is_file()
    assert not list((tmp_path / "ddp").rglob("*.tmp"))
