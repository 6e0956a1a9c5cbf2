"""The float32 fine-tune control (compress/finetune.py), per-clip band-mean input layer, and the
compression-accuracy benchmark's row matching and logistic-regression reference."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from dcase_effdl.compress import CompressContext, apply_steps, parse_steps
from dcase_effdl.config import TrainConfig
from dcase_effdl.errors import UserError
from dcase_effdl.models import ModelSpec, build_model
from dcase_effdl.models.clip_norm import ClipBandMean, ClipBandMeanRMS
from dcase_effdl.training.loop import FineTune, fit
from train_helpers import SHAPE, tiny_bundle, tiny_model

REPO = Path(__file__).resolve().parents[1]
SPEC = ModelSpec.from_dict({"name": "dcase2020_baseline", "n_classes": 3, "in_channels": SHAPE[0], "n_mels": SHAPE[1],
                            "n_frames": SHAPE[2], "params": dict(conv_filters=[4, 8], kernel_size=3, pool_sizes=[[2, 2], [2, 2]],
                                                                 dense_units=8, dropout=0.1)})


def _benchmark():
    spec = importlib.util.spec_from_file_location("compression_accuracy", REPO / "benchmarks" / "compression_accuracy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finetune_step_is_fit_with_the_same_epochs_and_lr():
    bundle, cfg = tiny_bundle(), TrainConfig(epochs=5, batch_size=8, lr=0.01, schedule="cosine", device="cpu")
    parent = tiny_model()
    steps = parse_steps([{"method": "finetune", "epochs": 2, "lr": 0.005}], "r.yaml: variants[1].compress")
    variant = apply_steps(parent, steps, CompressContext(bundle=bundle, train=cfg, model_spec=SPEC, size_policy="dcase2020", seed=3))
    direct = copy.deepcopy(parent)
    fit(direct, bundle, cfg, seed=3, tune=FineTune(2, 0.005))
    trained, untouched = variant.module.state_dict(), parent.state_dict()
    assert any(not torch.equal(trained[k], untouched[k]) for k in trained)  # it trained (the parent was copied, not changed)
    # The same calls with the same seed in the same process and thread count: the same kernels, so equal bits.
    assert all(torch.equal(trained[k], direct.state_dict()[k]) for k in trained)
    assert variant.precisions == {"float32"}
    assert variant.complexity_management == "float32, fine-tuned 2 more epochs"


def test_finetune_refuses_bad_knobs_and_compressed_weights():
    with pytest.raises(UserError, match=r"r.yaml: variants\[1\].compress\[0\]: epochs must be >= 1, got 0"):
        parse_steps([{"method": "finetune", "epochs": 0}], "r.yaml: variants[1].compress")
    steps = parse_steps([{"method": "float16"}, {"method": "finetune", "epochs": 1}], "r")
    ctx = CompressContext(bundle=tiny_bundle(), train=TrainConfig(epochs=1, batch_size=8, device="cpu"), model_spec=SPEC,
                          size_policy="dcase2020")
    with pytest.raises(UserError, match=r"r\[1\]: finetune cannot apply to a model whose weights are already float16"):
        apply_steps(tiny_model(), steps, ctx)


def test_clip_band_mean_removes_a_per_band_level_and_adds_no_parameters():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 16, 24, generator=g)
    offset = 5.0 * torch.randn(3, 2, 16, 1, generator=g)  # a gain (same in every band) plus a per-band response
    out = ClipBandMean()(x)
    assert out.mean(dim=-1).abs().max() < 1e-6
    # float32 rounding of values near |x + offset| ~ 15: a few ulps
    torch.testing.assert_close(ClipBandMean()(x + offset), out, atol=1e-5, rtol=0)
    plain = build_model("dcase2020_baseline", {}, n_classes=3, in_channels=1, n_mels=40, n_frames=500)
    normed = build_model("dcase2020_baseline", {"clip_norm": "band_mean"}, n_classes=3, in_channels=1, n_mels=40, n_frames=500)
    assert list(normed.state_dict()) == list(plain.state_dict())  # same tensors: same size, same variant files
    normed.eval()
    x = torch.randn(2, 1, 40, 500, generator=g)
    torch.testing.assert_close(normed(x + 3.0), normed(x), atol=1e-4, rtol=0)


def test_clip_band_mean_rms_puts_every_clip_on_one_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 16, 24, generator=g) * torch.tensor([0.1, 1.0, 6.0, 0.3]).view(4, 1, 1, 1)
    out = ClipBandMeanRMS()(x + 7.0)
    rms = out.pow(2).mean(dim=(1, 2, 3)).sqrt()
    torch.testing.assert_close(rms, torch.ones(4), atol=0.02, rtol=0)  # 1 / (1 + RMS_FLOOR / rms) for rms >= 0.1
    assert out.mean(dim=-1).abs().max() < 1e-5
    torch.testing.assert_close(ClipBandMeanRMS()(torch.zeros(1, 1, 4, 5)), torch.zeros(1, 1, 4, 5))  # no variation: zeros, not NaN


def test_benchmark_matches_each_variant_with_the_float32_row_trained_as_long():
    bench = _benchmark()
    variants = [
        {"name": "float32", "compress": []},
        {"name": "float16", "compress": [{"method": "float16"}]},
        {"name": "int8_qat", "compress": [{"method": "int8", "qat_epochs": 6}]},
        {"name": "prune_fp16", "compress": [{"method": "prune", "amount": 0.5, "epochs": 6}, {"method": "float16"}]},
        {"name": "float32_ft", "compress": [{"method": "finetune", "epochs": 6}]},
    ]
    assert bench.matched_rows(variants) == {"float32": None, "float16": "float32", "int8_qat": "float32_ft",
                                            "prune_fp16": "float32_ft", "float32_ft": None}
    with pytest.raises(SystemExit, match=r"variant 'binary' \(4 fine-tuning epochs\) has no matched float32 row: .*epochs: 4"):
        bench.matched_rows(variants + [{"name": "binary", "compress": [{"method": "binary", "epochs": 4}]}])


def test_logistic_regression_reference_learns_band_energy():
    result = _benchmark().logistic_regression_reference(tiny_bundle(n_train=60))
    assert result["accuracy"] > 90.0  # the classes differ in band energy, which the clip means carry
    assert result["C"] in _benchmark().LR_C_GRID


def test_logistic_regression_reference_without_validation_picks_c_by_grouped_cv():
    from dataclasses import replace

    bench = _benchmark()
    bundle = tiny_bundle(n_train=60)
    whole = replace(bundle, x_val=bundle.x_val[:0], y_val=bundle.y_val[:0])
    # 4 sources per class (y = i % 3), 5 clips each; source i // 15 of each class whole in fold i // 15
    folds = np.arange(60) // 15
    result = bench.logistic_regression_reference(whole, folds)
    assert result["accuracy"] > 90.0 and result["C"] in bench.LR_C_GRID
    # The same C as the grouped CV's best score (the first of equal ones), refitted on every training clip.
    x, y = bench.clip_statistics(whole.x_train), whole.y_train.numpy()
    scores = [bench.grouped_cv_accuracy(c, x, y, folds, whole.classes) for c in bench.LR_C_GRID]
    assert result["C"] == bench.LR_C_GRID[scores.index(max(scores))]
    with pytest.raises(ValueError, match="no validation clips"):
        bench.logistic_regression_reference(whole)
