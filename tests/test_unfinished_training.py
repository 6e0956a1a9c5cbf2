"""A run folder with an unfinished training is never restarted silently: --resume continues, --restart keeps a backup."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcase_effdl.errors import UserError
from dcase_effdl.pipeline import run

REPO = Path(__file__).resolve().parents[1]

RECIPE = """\
name: d
features: {features}
dataset: {{kind: digits}}
model: {{name: digits_cnn, params: {{channels: [4, 8], hidden: 8}}}}
train: {{epochs: 2, batch_size: 64, device: cpu, threads: 1}}
variants:
  - {{name: float32, compress: []}}
"""


@pytest.fixture()
def interrupted(tmp_path):
    """A finished digits run whose best.safetensors is gone: as if killed after its last checkpoint."""
    recipe = tmp_path / "d.yaml"
    recipe.write_text(RECIPE.format(features=REPO / "features" / "dcase2020_baseline.yaml"))
    run_dir = run(recipe, out=str(tmp_path / "run"))
    (run_dir / "train" / "best.safetensors").unlink()
    return recipe, run_dir


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # three digits runs, ~40 s
def test_unfinished_training_is_refused_then_resumed_or_restarted_with_a_backup(interrupted, capsys):
    recipe, run_dir = interrupted
    last = run_dir / "train" / "last.pt"
    before = files(run_dir)
    with pytest.raises(UserError) as err:
        run(recipe, out=str(run_dir))
    message = str(err.value)
    assert "\n" not in message and str(last) in message and "--resume" in message and "--restart" in message
    assert files(run_dir) == before  # refused before any work: nothing written, last.pt untouched

    proc = subprocess.run([sys.executable, "-m", "dcase_effdl", "run", str(recipe), "--out", str(run_dir), "--resume",
                           "--restart"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr  # one or the other

    capsys.readouterr()
    run(recipe, out=str(run_dir), resume=True)  # every epoch was checkpointed: nothing left to train
    captured = capsys.readouterr()
    assert f"resuming from {last} after epoch 2" in captured.out + captured.err
    assert (run_dir / "train" / "best.safetensors").is_file()

    (run_dir / "train" / "best.safetensors").unlink()
    old = last.read_bytes()
    run(recipe, out=str(run_dir), restart=True)
    assert (run_dir / "train" / "last.pt.bak").read_bytes() == old  # the old checkpoint, kept
    assert torch.load(last, weights_only=True)["epoch"] == 2 and (run_dir / "train" / "best.safetensors").is_file()
