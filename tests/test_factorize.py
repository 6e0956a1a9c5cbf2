"""Low-rank (SVD) and depthwise-separable factorization: approximation error, savings, stored variants."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dcase_effdl.compress import CompressContext, apply_steps, load_variant, parse_steps
from dcase_effdl.compress.factorize import choose_rank, low_rank_pair, lowrank_candidates, separable_candidates, separable_pair
from dcase_effdl.config import TrainConfig
from dcase_effdl.errors import UserError
from dcase_effdl.data.digits import load_digits_bundle
from dcase_effdl.models import ModelSpec, build_model
from dcase_effdl.training.loop import FineTune, fit

DIGITS = ModelSpec.from_dict({"name": "digits_cnn", "params": {}, "n_classes": 10, "in_channels": 1, "n_mels": 8, "n_frames": 8})


def _build(seed=0):
    torch.manual_seed(seed)
    return build_model("digits_cnn", {}, n_classes=10, in_channels=1, n_mels=8, n_frames=8)


def _ctx(bundle):
    cfg = TrainConfig(batch_size=32, lr=3e-3)

    return CompressContext(bundle=bundle, train=cfg, seed=0, model_spec=DIGITS, size_policy="dcase2020")


def test_rank_r_reconstruction_error_is_the_tail_of_the_spectrum():
    torch.manual_seed(0)
    linear = nn.Linear(40, 30)
    s = torch.linalg.svdvals(linear.weight.detach().double())
    for r in (1, 5, 20):
        pair = low_rank_pair(linear, r)
        assert pair[0].weight.shape == (r, 40) and pair[1].weight.shape == (30, r) and pair[0].bias is None
        w_r = (pair[1].weight.double() @ pair[0].weight.double()).detach()
        # Eckart-Young: the best rank-r error in Frobenius norm is sqrt(sum of the discarded s^2).
        assert float(torch.linalg.norm(linear.weight.detach().double() - w_r)) == pytest.approx(float(s[r:].pow(2).sum().sqrt()), rel=1e-4)
    x = torch.randn(8, 40)
    full = low_rank_pair(linear, 30)
    assert torch.allclose(full(x), linear(x), atol=1e-5)  # full rank reproduces the layer


def test_choose_rank_by_energy():
    s = torch.tensor([3.0, 2.0, 1.0, 0.5])  # s^2: 9, 4, 1, 0.25 of 14.25
    assert choose_rank(s, energy=9 / 14.25) == 1
    assert choose_rank(s, energy=0.9) == 2
    assert choose_rank(s, energy=0.99) == 4
    assert choose_rank(s, energy=1.0) == 4
    assert choose_rank(s, rank=10) == 4


def test_pointwise_conv_low_rank():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 12, 1)
    pair = low_rank_pair(conv, 12)
    x = torch.randn(2, 16, 5, 5)
    assert torch.allclose(pair(x), conv(x), atol=1e-5)


def test_separable_init_is_exact_for_rank_one_kernels():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():  # W[o, c] = p[o, c] * d_c: exactly depthwise-separable
        d, p = torch.randn(4, 3, 3), torch.randn(6, 4)
        conv.weight.copy_(p[:, :, None, None] * d[None])
    pair = separable_pair(conv)
    assert pair[0].groups == 4 and pair[0].weight.shape == (4, 1, 3, 3) and pair[1].weight.shape == (6, 4, 1, 1)
    x = torch.randn(2, 4, 7, 7)
    assert torch.allclose(pair(x), conv(x), atol=1e-4)


def test_default_candidates():
    model = _build()
    assert lowrank_candidates(model, []) == ["classifier.1"]  # the output layer is left alone
    assert separable_candidates(model, []) == ["features.1.0", "features.2.0"]  # not the 1-channel input conv
    assert separable_candidates(model, ["features.2.*"]) == ["features.2.0"]


@pytest.mark.parametrize("step", [
    {"method": "lowrank", "rank": 8, "epochs": 1},
    {"method": "separable", "epochs": 1},
])
def test_factorized_variant_shrinks_learns_and_round_trips(tmp_path, step):
    bundle = load_digits_bundle(seed=0)
    parent = _build()
    fit(parent, bundle, TrainConfig(batch_size=32, lr=3e-3), seed=0, tune=FineTune(epochs=2))
    steps = parse_steps([step, {"method": "float16"}], "lowrank.yaml: variants[1].compress")
    variant = apply_steps(parent, steps, _ctx(bundle))
    h = variant.history[0]
    assert h["n_nonzero_after"] < 0.8 * h["n_nonzero_before"]
    with torch.no_grad():
        acc = float((variant.module(bundle.x_test).argmax(1) == bundle.y_test).float().mean()) * 100
    assert acc > 85.0, acc
    loaded = load_variant(variant.save(tmp_path / "f.safetensors"))
    assert repr(loaded.module) == repr(variant.module)
    with torch.no_grad():
        assert torch.equal(loaded.module(bundle.x_test), variant.module(bundle.x_test))


def test_bad_knobs():
    with pytest.raises(UserError, match=r"variants\[1\]\.compress\[0\].*exactly one of rank or energy"):
        parse_steps([{"method": "lowrank"}], "lowrank.yaml: variants[1].compress")
    with pytest.raises(UserError, match="energy must be in"):
        parse_steps([{"method": "lowrank", "energy": 1.5}], "lowrank.yaml: variants[1].compress")
    steps = parse_steps([{"method": "separable", "layers": ["nothing.*"]}], "lowrank.yaml: variants[1].compress")
    with pytest.raises(UserError, match="no full k x k Conv2d"):
        apply_steps(_build(), steps, CompressContext(model_spec=DIGITS, size_policy="dcase2020"))
