"""Training: recipe options wired in, exact resumption after a crash or kill -9, refused checkpoints, bad options.

A resumed training is compared with an uninterrupted one bit for bit, and that is guaranteed by
construction, not luck: both run on this machine with one intra-op thread (the fixture below), the
same batch shapes in the same order (the batch plan is a function of seed and epoch), and the
checkpoint restores the weights, optimiser, scheduler and every RNG state exactly. Different CPUs
may give different bits, but both sides of each comparison run on the same one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dcase_effdl.config import TrainConfig
from dcase_effdl.errors import UserError
from dcase_effdl.training.loop import FineTune, fit, predict
from dcase_effdl.training.options import check_crop, check_options
from train_helpers import SHAPE, all_techniques, tiny_bundle, tiny_model, one_thread  # noqa: F401 (autouse)

REPO = Path(__file__).resolve().parents[1]


def numbers(history):
    """History rows without wall-clock times."""
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in history.epochs]


class Crash:
    """A hook that raises in the middle of epoch `epoch` (after `steps` optimiser steps)."""

    def __init__(self, epoch: int, steps: int = 2):
        self.epoch, self.steps, self.now, self.count = epoch, steps, 0, 0

    def on_epoch_start(self, epoch, model):
        self.now, self.count = epoch, 0

    def after_step(self, model):
        self.count += 1
        if self.now == self.epoch and self.count == self.steps:
            raise KeyboardInterrupt("simulated Ctrl-C")


def test_all_techniques_train_and_resume_exactly(tmp_path):
    bundle, cfg = tiny_bundle(), all_techniques()
    ref_model = tiny_model()
    ref = fit(ref_model, bundle, cfg, seed=1, out_dir=tmp_path / "ref")
    assert len(ref.epochs) == 5 and ref.swa["n_averaged"] == 3  # epochs 3, 4, 5 averaged
    assert ref.epochs[-1]["train_loss"] < ref.epochs[0]["train_loss"]
    assert ref.epochs[0]["lr"] < ref.epochs[1]["lr"] or ref.epochs[1]["lr"] != ref.epochs[2]["lr"]  # warm-up, restarts

    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model(), bundle, cfg, seed=1, out_dir=tmp_path / "run", tune=FineTune(hooks=(Crash(epoch=4),)))
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 3
    resumed_model = tiny_model()
    resumed = fit(resumed_model, bundle, cfg, seed=1, out_dir=tmp_path / "run", resume=True)

    assert numbers(resumed) == numbers(ref)
    assert resumed.swa == ref.swa and resumed.best_epoch == ref.best_epoch
    for (k, a), b in zip(ref_model.state_dict().items(), resumed_model.state_dict().values()):
        # Exact by construction: see the module docstring.
        assert torch.equal(a, b), k
    assert (predict(ref_model, bundle.x_test) == predict(resumed_model, bundle.x_test)).all()


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from train_helpers import all_techniques, tiny_bundle, tiny_model
    from dcase_effdl.training.loop import FineTune, fit

    class KillNine:
        def on_epoch_start(self, epoch, model):
            if epoch == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    fit(tiny_model(), tiny_bundle(), all_techniques(swa=None), seed=2, out_dir={out!r}, tune=FineTune(hooks=(KillNine(),)))
    """
)


def test_resume_after_kill_9(tmp_path):
    bundle, cfg = tiny_bundle(), all_techniques(swa=None)
    script = tmp_path / "killed.py"
    script.write_text(KILL_SCRIPT.format(tests=str(REPO / "tests"), out=str(tmp_path / "run")))
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (tmp_path / "run" / "last.pt.tmp").exists() or (tmp_path / "run" / "last.pt").exists()

    ref_model, resumed_model = tiny_model(), tiny_model()
    ref = fit(ref_model, bundle, cfg, seed=2)
    resumed = fit(resumed_model, bundle, cfg, seed=2, out_dir=tmp_path / "run", resume=True)
    assert [r["epoch"] for r in resumed.epochs] == [1, 2, 3, 4, 5]
    assert numbers(resumed) == numbers(ref)
    # Exact by construction: see the module docstring.
    assert all(torch.equal(a, b) for a, b in zip(ref_model.state_dict().values(), resumed_model.state_dict().values()))


def test_checkpoint_of_another_run_or_truncated_is_refused_and_kept(tmp_path):
    bundle = tiny_bundle()
    cfg = all_techniques(epochs=2, swa=None)
    fit(tiny_model(), bundle, cfg, seed=0, out_dir=tmp_path, run_hash="recipe-a")
    ckpt = tmp_path / "last.pt"
    before = ckpt.read_bytes()

    other = all_techniques(epochs=2, swa=None, lr=0.01)
    with pytest.raises(UserError, match="another recipe") as err:
        fit(tiny_model(), bundle, other, seed=0, out_dir=tmp_path, resume=True, run_hash="recipe-a")
    assert "\n" not in str(err.value) and str(ckpt) in str(err.value)
    with pytest.raises(UserError, match="another recipe"):
        fit(tiny_model(), bundle, cfg, seed=0, out_dir=tmp_path, resume=True, run_hash="recipe-b")
    assert ckpt.read_bytes() == before

    ckpt.write_bytes(before[: len(before) // 2])
    truncated = ckpt.read_bytes()
    with pytest.raises(UserError, match="truncated") as err:
        fit(tiny_model(), bundle, cfg, seed=0, out_dir=tmp_path, resume=True, run_hash="recipe-a")
    assert "\n" not in str(err.value)
    assert ckpt.read_bytes() == truncated  # nothing overwritten


def test_incompatible_options_are_one_line_errors():
    """Checked by the pipeline's resolve step against the features' shape, before any data is touched."""
    bundle = tiny_bundle()
    mono = (1, *SHAPE[1:])
    with pytest.raises(UserError, match="channel_swap needs stereo"):
        check_options(TrainConfig(epochs=1, channel_swap=True, device="cpu"), mono)

    def hard_loss(logits, y, idx):
        return torch.nn.functional.cross_entropy(logits, y)

    with pytest.raises(UserError, match="soft"):
        fit(tiny_model(), bundle, TrainConfig(epochs=1, mixup_alpha=0.4, device="cpu"), seed=0, tune=FineTune(loss_fn=hard_loss))
    hard_loss.accepts_soft_targets = True  # a loss that says it takes soft labels is accepted
    with pytest.raises(UserError, match="time_crop"):
        check_options(TrainConfig(epochs=1, time_crop=100, device="cpu"), SHAPE)
    with pytest.raises(UserError, match="time_roll = 30 is more than the 24 frames"):
        check_options(TrainConfig(epochs=1, time_roll=30, device="cpu"), SHAPE)
    with pytest.raises(UserError, match="frames"):
        # the baseline's flatten layer fixes its input length: crops cannot be fed to it
        check_crop(tiny_model(), TrainConfig(epochs=1, time_crop=20, device="cpu"), SHAPE)


def test_loss_fn_gets_batch_indices_and_same_seed_same_numbers():
    bundle = tiny_bundle()
    seen = []

    def loss(logits, y, idx):
        assert torch.equal(y, bundle.y_train[idx])
        seen.append(idx)
        return torch.nn.functional.cross_entropy(logits, y)

    cfg = TrainConfig(epochs=2, batch_size=8, device="cpu")
    a = fit(tiny_model(), bundle, cfg, seed=5, tune=FineTune(loss_fn=loss))
    assert sorted(torch.cat(seen[: len(seen) // 2]).tolist()) == list(range(48))
    b = fit(tiny_model(), bundle, cfg, seed=5, tune=FineTune(loss_fn=loss))
    assert numbers(a) == numbers(b)
