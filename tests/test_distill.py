"""Knowledge distillation: the loss against a hand computation, teacher sources and the teacher cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcase_effdl.compress import CompressContext, apply_steps, parse_steps
from dcase_effdl.compress.distill import kd_loss, soft_targets, teacher_logits
from dcase_effdl.config import TrainConfig
from dcase_effdl.errors import UserError
from dcase_effdl.data.digits import load_digits_bundle
from dcase_effdl.models import ModelSpec, build_model
from dcase_effdl.training.loop import FineTune, fit, predict_logits

DIGITS = ModelSpec.from_dict({"name": "digits_cnn", "params": {}, "n_classes": 10, "in_channels": 1, "n_mels": 8, "n_frames": 8})
SMALL = {"channels": [8, 16, 16], "hidden": 32}


def _build(params=None, seed=0):
    torch.manual_seed(seed)
    return build_model("digits_cnn", params or {}, n_classes=10, in_channels=1, n_mels=8, n_frames=8)


@pytest.fixture(scope="module")
def digits():
    return load_digits_bundle(seed=0)


def _ctx(bundle, tmp_path, calls=None):
    cfg = TrainConfig(batch_size=32, lr=3e-3)

    class Recording(CompressContext):
        def fine_tune(self, model, tune):
            if calls is not None:
                calls.append((sum(p.numel() for p in model.parameters()), tune.epochs, tune.loss_fn is not None))
            return super().fine_tune(model, tune)

    return Recording(bundle=bundle, train=cfg, seed=0, model_spec=DIGITS, work_dir=tmp_path / "work", size_policy="dcase2020")


def test_kd_loss_matches_hand_computation():
    student = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 0.3]])
    teacher = torch.tensor([[0.5, 1.5, -1.0], [2.0, 0.0, 0.0]])
    y = torch.tensor([1, 0])
    T, alpha = 2.0, 0.7
    expected = 0.0
    for s, t, label in zip(student.tolist(), teacher.tolist(), y.tolist()):
        pt = np.exp(np.array(t) / T) / np.exp(np.array(t) / T).sum()
        ps = np.exp(np.array(s) / T) / np.exp(np.array(s) / T).sum()
        kl = float(np.sum(pt * np.log(pt / ps)))
        ce = -math.log(math.exp(s[label]) / sum(math.exp(v) for v in s))
        expected += (alpha * T * T * kl + (1 - alpha) * ce) / 2
    got = kd_loss(student, soft_targets([teacher], T), y, T, alpha)
    assert float(got) == pytest.approx(expected, rel=1e-6)
    # alpha = 0 is plain cross-entropy; an ensemble averages the softened probabilities.
    assert float(kd_loss(student, soft_targets([teacher], T), y, T, 0.0)) == pytest.approx(float(F.cross_entropy(student, y)))
    ens = soft_targets([teacher, student], T)
    assert torch.allclose(ens, (torch.softmax(teacher / T, 1) + torch.softmax(student / T, 1)) / 2)


def test_inline_teacher_trained_once_then_cached(tmp_path, digits):
    calls = []
    step = {"method": "distill", "teacher": {"model": "digits_cnn", "params": {"channels": [16, 32, 32]}, "epochs": 1},
            "epochs": 1, "alpha": 0.5}
    steps = parse_steps([step], "kd.yaml: variants[1].compress")
    apply_steps(_build(SMALL), steps, _ctx(digits, tmp_path, calls))
    assert [c[1:] for c in calls] == [(1, False), (1, True)]  # teacher trained, then the student with the KD loss
    cache = list((tmp_path / "work" / "teacher_logits").glob("*.npy"))
    assert len(cache) == 1 and np.load(cache[0]).shape == (len(digits.x_train), 10)
    calls.clear()
    apply_steps(_build(SMALL), steps, _ctx(digits, tmp_path, calls))
    assert [c[1:] for c in calls] == [(1, True)]  # teacher logits came from the cache
    # Other data -> another key -> the teacher is trained again.
    other = load_digits_bundle(seed=1)
    calls.clear()
    apply_steps(_build(SMALL), steps, _ctx(other, tmp_path, calls))
    assert [c[1:] for c in calls] == [(1, False), (1, True)]
    assert len(list((tmp_path / "work" / "teacher_logits").glob("*.npy"))) == 2


def test_student_learns_from_run_folder_ensemble_without_labels(tmp_path, digits):
    runs = []
    for seed in (0, 1):
        teacher = _build(seed=seed)
        fit(teacher, digits, TrainConfig(batch_size=32, lr=3e-3), seed=seed, tune=FineTune(epochs=3))
        run = tmp_path / f"run{seed}"
        apply_steps(teacher, [], CompressContext(model_spec=DIGITS, size_policy="dcase2020")).save(run / "float32" / "model.safetensors")
        runs.append(str(run))
    ctx = _ctx(digits, tmp_path)
    cfg = parse_steps([{"method": "distill", "teacher": runs, "alpha": 1.0, "epochs": 3, "temperature": 2.0}], "kd.yaml: v")
    logits = teacher_logits(cfg[0], ctx)
    assert len(logits) == 2 and logits[0].shape == (len(digits.x_train), 10) and not torch.equal(logits[0], logits[1])
    variant = apply_steps(_build(SMALL), cfg, ctx)  # alpha = 1: the labels are never used
    with torch.no_grad():
        acc = float((predict_logits(variant.module, digits.x_test).argmax(1) == digits.y_test).float().mean()) * 100
    assert acc > 85.0, acc
    assert variant.complexity_management == "knowledge distillation"


def test_bad_teachers(tmp_path, digits):
    with pytest.raises(UserError, match=r"compress\[0\].*unknown key 'epoch'"):
        parse_steps([{"method": "distill", "teacher": {"model": "digits_cnn", "epoch": 3}}], "kd.yaml: variants[0].compress")
    with pytest.raises(UserError, match="alpha must be in"):
        parse_steps([{"method": "distill", "teacher": "runs/x", "alpha": 1.5}], "kd.yaml: variants[0].compress")
    with pytest.raises(UserError, match="teacher: expected"):
        parse_steps([{"method": "distill", "teacher": 3}], "kd.yaml: variants[0].compress")
    steps = parse_steps([{"method": "distill", "teacher": str(tmp_path / "nope"), "epochs": 1}], "kd.yaml: variants[0].compress")
    with pytest.raises(UserError, match="nope' is not a variant file"):
        apply_steps(_build(SMALL), steps, _ctx(digits, tmp_path))


def test_pruned_zeros_survive_distillation(tmp_path, digits):
    steps = parse_steps([
        {"method": "prune", "amount": 0.5},
        {"method": "distill", "teacher": {"model": "digits_cnn", "epochs": 1}, "epochs": 1},
    ], "kd.yaml: v")
    variant = apply_steps(_build(), steps, _ctx(digits, tmp_path))
    assert variant.history[1]["n_nonzero_after"] <= variant.history[0]["n_nonzero_after"]
