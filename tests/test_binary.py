"""1-bit weights: straight-through training, scales, packing to 1 bit per weight, BN re-estimation."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dcase_effdl.compress import CompressContext, apply_steps, load_variant, parse_steps
from dcase_effdl.compress.binary import (
    BinaryConv2d,
    BinaryLinear,
    binarize_layers,
    fixed_scale,
    freeze_binary,
    select_layers,
)
from dcase_effdl.config import TrainConfig
from dcase_effdl.errors import UserError
from dcase_effdl.data.digits import load_digits_bundle
from dcase_effdl.models import ModelSpec
from dcase_effdl.compress.size import size_report
from dcase_effdl.training.schedules import reestimate_batchnorm

BASELINE = ModelSpec.from_dict({"name": "dcase2020_baseline", "params": {}, "n_classes": 3, "in_channels": 1, "n_mels": 40, "n_frames": 500})
DIGITS = ModelSpec.from_dict({"name": "digits_cnn", "params": {}, "n_classes": 10, "in_channels": 1, "n_mels": 8, "n_frames": 8})


def _build(spec, seed=0):
    torch.manual_seed(seed)
    return spec.build()


@pytest.fixture(scope="module")
def digits():
    return load_digits_bundle(seed=0)


@pytest.fixture(scope="module")
def trained_digits(digits):
    """digits_cnn after 3 quick epochs (about 97 % test accuracy)."""
    model = _build(DIGITS)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        model.train()
        for idx in torch.randperm(len(digits.x_train), generator=g).split(32):
            loss = F.cross_entropy(model(digits.x_train[idx]), digits.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _accuracy(model, bundle):
    model.eval()
    with torch.no_grad():
        return float((model(bundle.x_test).argmax(1) == bundle.y_test).float().mean()) * 100


def _ctx(bundle, spec, tmp_path=None):
    cfg = TrainConfig(batch_size=32, lr=1e-3)

    return CompressContext(bundle=bundle, train=cfg, seed=0, model_spec=spec, work_dir=tmp_path, size_policy="dcase2020")


def test_forward_is_sign_times_scale_and_gradient_goes_straight_through():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    with torch.no_grad():
        linear.weight[0, 0] = 0.0  # sign(0) counts as +1
    layer = BinaryLinear.from_linear(linear, "fixed").train()
    scale = math.sqrt(2 / 6)
    assert float(layer.weight_scale) == pytest.approx(scale)
    expected_w = torch.where(linear.weight >= 0, scale, -scale)
    assert expected_w[0, 0] == scale
    x = torch.randn(5, 6)
    out = layer(x)
    assert torch.allclose(out, F.linear(x, expected_w, linear.bias), atol=1e-6)
    out.sum().backward()
    # Identity STE: d/dw of sum(x @ (sign(w) * s).T) = s * sum_b x_b.
    assert torch.allclose(layer.weight.grad, scale * x.sum(0).expand(4, 6), atol=1e-5)


def test_scales():
    conv = nn.Conv2d(32, 64, 7)
    assert fixed_scale(conv) == pytest.approx(math.sqrt(2 / (49 * 32)))  # McDonnell sqrt(2 / (k^2 C_in))
    assert fixed_scale(nn.Conv2d(32, 32, 3, groups=32)) == pytest.approx(math.sqrt(2 / 9))
    learned = BinaryConv2d.from_conv(conv, "learned")
    assert isinstance(learned.weight_scale, nn.Parameter) and learned.weight_scale.shape == (64,)
    assert torch.allclose(learned.weight_scale, conv.weight.abs().mean(dim=(1, 2, 3)))


def test_first_and_last_layers_configurable():
    model = _build(BASELINE)
    assert select_layers(model, True, True) == ["features.1.0", "classifier.1"]
    assert select_layers(model, False, False) == ["features.0.0", "features.1.0", "classifier.1", "classifier.4"]
    assert select_layers(model, True, False, skip=["classifier.*"]) == ["features.1.0"]


def test_packs_to_one_bit_per_weight_in_size_and_file(tmp_path, digits):
    # The baseline with every layer binary: 115,020 weights -> 14,377.5 B; the 199 biases stay float32.
    spec = BASELINE
    model = _build(spec)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.fill_(0.1)  # non-zero, so that the dcase2020 rule counts them
    steps = parse_steps([{"method": "binary", "epochs": 0, "keep_first": False, "keep_last": False, "bn_reestimate": False}], "t.yaml: v")
    variant = apply_steps(model, steps, _ctx(None, spec))
    report = size_report(variant, "dcase2020")
    rows = {r["name"]: r for r in report["rows"]}
    assert rows["features.1.0.weight"]["format"] == "binary" and rows["features.1.0.weight"]["bits"] == 1
    assert rows["features.1.0.weight_scale"]["counted"] is False
    n_weights = 32 * 49 + 64 * 32 * 49 + 128 * 100 + 100 * 3
    n_bias = 32 + 64 + 100 + 3
    assert report["n_params"] == n_weights + n_bias == 115_219
    assert report["size_bytes"] == n_weights / 8 + n_bias * 4 == 15_173.5
    path = variant.save(tmp_path / "binary.safetensors")
    float_path = apply_steps(_build(spec), [], _ctx(None, spec)).save(tmp_path / "float32.safetensors")
    # Weights cost 1 bit each on disk: the file is ~14.4 KB + BN/bias/scales + header, not 460 KB.
    assert path.stat().st_size < n_weights / 8 + 8_000
    assert float_path.stat().st_size > 460_000
    loaded = load_variant(path)
    x = torch.randn(2, 1, 40, 500)
    with torch.no_grad():
        assert torch.equal(variant.module(x), loaded.module(x))


def test_batchnorm_reestimation_restores_accuracy(trained_digits, digits):
    model = copy.deepcopy(trained_digits)
    binarize_layers(model, select_layers(model, False, False), "fixed")
    freeze_binary(model)
    before = _accuracy(model, digits)  # running statistics still those of the float network
    assert reestimate_batchnorm(model, digits.x_train.tensor_split(5)) == 3
    after = _accuracy(model, digits)
    assert before < 60.0 and after > 75.0 and after - before > 30.0, (before, after)


def test_binary_step_fine_tunes_and_round_trips_exactly(tmp_path, trained_digits, digits):
    steps = parse_steps([{"method": "binary", "scale": "learned", "epochs": 1}], "t.yaml: variants[3].compress")
    variant = apply_steps(trained_digits, steps, _ctx(digits, DIGITS, tmp_path))
    assert isinstance(trained_digits.features[1][0], nn.Conv2d) and not isinstance(trained_digits.features[1][0], BinaryConv2d)
    layer = variant.module.features[1][0]
    assert isinstance(layer, BinaryConv2d) and set(layer.weight.unique().tolist()) == {-1.0, 1.0}
    assert variant.step_meta[0]["layers"] == ["features.1.0", "features.2.0", "classifier.1"]
    assert _accuracy(variant.module, digits) > 88.0
    assert variant.complexity_management == "1-bit weights"
    loaded = load_variant(variant.save(tmp_path / "b.safetensors"))
    with torch.no_grad():
        assert torch.equal(variant.module(digits.x_test), loaded.module(digits.x_test))


def test_refuses_already_quantised_or_bad_knobs():
    with pytest.raises(UserError, match=r"variants\[0\]\.compress\[0\].*epochs must be >= 0"):
        parse_steps([{"method": "binary", "epochs": -1}], "r.yaml: variants[0].compress")
    with pytest.raises(UserError, match="expected one of"):
        parse_steps([{"method": "binary", "scale": "per_tensor"}], "r.yaml: variants[0].compress")
    steps = parse_steps([{"method": "float16"}, {"method": "binary", "epochs": 0}], "r.yaml: variants[0].compress")
    with pytest.raises(UserError, match=r"compress\[1\]: binary cannot apply .* float16"):
        apply_steps(_build(DIGITS), steps, _ctx(None, DIGITS))
