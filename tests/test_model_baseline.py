"""The DCASE 2020 Task 1B baseline CNN: exact parameter counts, shapes, knobs, Keras initialisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dcase_effdl.errors import UserError
from dcase_effdl.models import available, build_model


def _counts(model: nn.Module) -> tuple[int, int]:
    """(weights and biases without batch norm, Keras-style total with BN's 4 values per channel)."""
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    bn_params = sum(p.numel() for m in bn for p in m.parameters())
    bn_stats = sum(m.running_mean.numel() + m.running_var.numel() for m in bn)
    all_params = sum(p.numel() for p in model.parameters())
    return all_params - bn_params, all_params + bn_stats


def test_registered():
    assert "dcase2020_baseline" in available()


def test_parameter_counts_match_the_official_baseline():
    model = build_model("dcase2020_baseline", {}, n_classes=3, in_channels=1, n_mels=40, n_frames=500)
    without_bn, with_bn = _counts(model)
    assert without_bn == 115_219  # DCASE.md: 450.07 KB in float32
    assert with_bn == 115_603
    assert model.flatten_size == 128
    # Per layer, as in the Keras summary: conv 1,600 / 100,416; dense 12,900 / 303.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    denses = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [sum(p.numel() for p in m.parameters()) for m in convs] == [1_600, 100_416]
    assert [sum(p.numel() for p in m.parameters()) for m in denses] == [12_900, 303]


def test_output_shape_and_layers():
    model = build_model("dcase2020_baseline", {}, n_classes=3)
    model.eval()
    out = model(torch.randn(4, 1, 40, 500))
    assert out.shape == (4, 3)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 2 and all(m.eps == 1e-3 and m.momentum == 0.01 for m in bns)
    pools = [m.kernel_size for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert pools == [(5, 5), (4, 100)]
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.3, 0.3, 0.3]


def test_ten_classes_two_channels_other_frames():
    model = build_model("dcase2020_baseline", {}, n_classes=10, in_channels=2, n_mels=40, n_frames=1001)
    assert model.flatten_size == 64 * 2 * 2  # 1001 // 5 // 100 = 2 frames
    model.eval()
    assert model(torch.randn(2, 2, 40, 1001)).shape == (2, 10)
    # 431 // 5 = 86 frames, 86 // 100 = 0 -> too short for the second pool: a clear error instead.
    with pytest.raises(UserError, match="431 frames is too small for pool_sizes"):
        build_model("dcase2020_baseline", {}, n_classes=3, n_mels=40, n_frames=431)
    model = build_model("dcase2020_baseline", {}, n_classes=10, in_channels=2, n_mels=128, n_frames=1000)
    # 128 // 5 // 4 = 6 mel rows, 1000 // 5 // 100 = 2 frames, 64 channels.
    assert model.flatten_size == 64 * 6 * 2
    without_bn, _ = _counts(model)
    expected = (7 * 7 * 2 * 32 + 32) + (7 * 7 * 32 * 64 + 64) + (768 * 100 + 100) + (100 * 10 + 10)
    assert without_bn == expected
    model.eval()
    assert model(torch.randn(1, 2, 128, 1000)).shape == (1, 10)


def test_knobs():
    params = {
        "conv_filters": [8, 16, 24],
        "kernel_size": 3,
        "pool_sizes": [[2, 2], [2, 5], [2, 10]],
        "dense_units": 20,
        "dropout": 0.1,
        "batch_norm": False,
    }
    model = build_model("dcase2020_baseline", params, n_classes=3, n_mels=40, n_frames=500)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.flatten_size == 24 * 5 * 5
    without_bn, with_bn = _counts(model)
    expected = (9 * 8 + 8) + (9 * 8 * 16 + 16) + (9 * 16 * 24 + 24) + (600 * 20 + 20) + (20 * 3 + 3)
    assert without_bn == with_bn == expected
    model.eval()
    assert model(torch.randn(3, 1, 40, 500)).shape == (3, 3)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"conv_filters": [32], "pool_sizes": [[5, 5], [4, 100]]}, "one pool per conv block"),
        ({"pool_sizes": [[5, 5], [4]]}, "pairs of positive integers"),
        ({"dropout": 1.5}, "dropout must be in"),
        ({"dropout": "high"}, r"dropout: expected float"),  # a wrong type: the strict loader says so
        ({"dense_init": "he"}, "dense_init"),
        ({"width": 3}, "unknown parameter 'width'"),
    ],
)
def test_bad_knobs_are_user_errors(params, message):
    with pytest.raises(UserError, match=message):
        build_model("dcase2020_baseline", params, n_classes=3)


def test_keras_initialisation():
    torch.manual_seed(0)
    model = build_model("dcase2020_baseline", {}, n_classes=3)
    conv1, conv2 = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    dense1, dense2 = [m for m in model.modules() if isinstance(m, nn.Linear)]
    for layer in (conv1, conv2, dense1, dense2):
        assert torch.count_nonzero(layer.bias) == 0
    # glorot_uniform limit = sqrt(6 / (fan_in + fan_out)), fans include the receptive field.
    limit = (6 / (7 * 7 * 32 + 7 * 7 * 64)) ** 0.5
    assert conv2.weight.abs().max() <= limit
    assert conv2.weight.abs().max() > 0.95 * limit
    # Dense layers: Keras 'uniform' = U(-0.05, 0.05), as in task1b.yaml.
    assert dense1.weight.abs().max() <= 0.05 and dense1.weight.abs().max() > 0.049
    glorot = build_model("dcase2020_baseline", {"dense_init": "glorot_uniform"}, n_classes=3)
    dense1 = [m for m in glorot.modules() if isinstance(m, nn.Linear)][0]
    assert dense1.weight.abs().max() <= (6 / (128 + 100)) ** 0.5
    assert dense1.weight.abs().max() > 0.1


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = build_model("dcase2020_baseline", {}, n_classes=3)
    torch.manual_seed(3)
    b = build_model("dcase2020_baseline", {}, n_classes=3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        # Same seed, same init calls: exact.
        assert torch.equal(pa, pb)


def test_bn_momentum_and_clip_norm_knobs():
    keras = build_model("dcase2020_baseline", {}, n_classes=3)
    fast = build_model("dcase2020_baseline", {"bn_momentum": 0.1, "clip_norm": "band_mean_rms"}, n_classes=3)
    assert [m.momentum for m in fast.modules() if isinstance(m, nn.BatchNorm2d)] == [0.1, 0.1]
    assert [m.momentum for m in keras.modules() if isinstance(m, nn.BatchNorm2d)] == [0.01, 0.01]
    assert _counts(fast) == _counts(keras)  # the input layer has no parameters
    with pytest.raises(UserError, match="bn_momentum must be in"):
        build_model("dcase2020_baseline", {"bn_momentum": 0.0})


def test_stats_head_and_input_stats():
    params = {"conv_filters": [4, 8], "kernel_size": 3, "pool_sizes": [[5, 5], [4, 1]], "dense_units": 10}
    stats = build_model("dcase2020_baseline", {**params, "head": "stats"}, n_classes=3, n_mels=40, n_frames=501)
    assert stats.flatten_size == 8 * 2 * 2  # mean and std of 8 channels x 2 mel rows over 100 frames
    both = build_model("dcase2020_baseline", {**params, "head": "stats", "input_stats": True}, n_classes=3, n_mels=40, n_frames=501)
    assert both.flatten_size == 8 * 2 * 2 + 2 * 40
    # Only the first dense layer grows: 80 more inputs x 10 units.
    assert _counts(both)[0] - _counts(stats)[0] == 80 * 10
    both.eval()
    x = torch.randn(3, 1, 40, 501) * 2 + 1
    assert both(x).shape == (3, 3)
    # The input statistics are each band's mean and (population) std over time, as the logistic regression sees them.
    z = both.input_stats(x)
    torch.testing.assert_close(z[:, :40], x.mean(-1).flatten(1))
    torch.testing.assert_close(z[:, 40:], x.std(-1, correction=0).flatten(1), rtol=1e-5, atol=1e-5)
    # A constant band (digital silence) keeps a finite gradient.
    silent = torch.zeros(2, 1, 40, 501, requires_grad=True)
    both.train()
    both(silent).sum().backward()
    assert torch.isfinite(silent.grad).all()
    # The baseline's layer names are kept, so its compressed variants' files read the same.
    keys = set(build_model("dcase2020_baseline", params, n_frames=501).state_dict())
    assert keys == set(stats.state_dict())
    with pytest.raises(UserError, match="head 'stats' needs at least two frames after the last pool"):
        build_model("dcase2020_baseline", {"head": "stats"}, n_classes=3, n_mels=40, n_frames=500)
