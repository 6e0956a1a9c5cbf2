"""CP-ResNet, McDonnell's pre-activation ResNet and Mobnet: shapes, published sizes, MACs, a few training steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from dcase_effdl.errors import UserError
from dcase_effdl.compress.macs import count_macs
from dcase_effdl.models import available, build_model
from dcase_effdl.models.cp_resnet import DampedConv2d, damping_mask, kernel_sizes

SMALL = {
    "cp_resnet": dict(rho=4, width=8, n_blocks=[4, 1, 1], frequency_damping=True),
    "preact_resnet": dict(width=4, head_channels=8),
    "mobnet": dict(alpha=0.5, head_channels=8),
}


def conv_weights(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))


def bn_params(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())


def flop_counter_macs(model: nn.Module, shape) -> int:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() // 2


def test_families_registered():
    assert {"cp_resnet", "preact_resnet", "mobnet"} <= set(available())


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("in_channels,n_classes", [(1, 3), (2, 10), (6, 3)])
def test_any_classes_and_channels(name, in_channels, n_classes):
    model = build_model(name, SMALL[name], n_classes=n_classes, in_channels=in_channels, n_mels=40, n_frames=50)
    out = model(torch.randn(2, in_channels, 40, 50))
    assert out.shape == (2, n_classes)
    assert torch.isfinite(out).all()
    report = count_macs(model, (in_channels, 40, 50))
    assert report["macs"] == flop_counter_macs(model, (in_channels, 40, 50)) > 0
    print(f"{name} C={in_channels} K={n_classes}: {sum(p.numel() for p in model.parameters())} params, {report['macs']} MACs")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_trains_a_few_steps(name):
    torch.manual_seed(0)
    x = torch.randn(24, 2, 40, 50)
    y = torch.arange(24) % 3
    x[y == 1, :, :20] += 2.0  # a learnable difference between classes
    x[y == 2, :, 20:] += 2.0
    model = build_model(name, SMALL[name], n_classes=3, in_channels=2, n_mels=40, n_frames=50)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_koutini_kernel_table_matches_rho():
    # rho=4 (the 2020 submissions): stage 1 keeps 3x3 kernels in blocks 1-3, stages 2-3 are all 1x1.
    k = kernel_sizes(4)
    assert k["stage1"] == ([3, 3, 3, 1], [1, 3, 3, 1])
    assert k["stage2"] == ([1, 1, 1, 1], [1, 1, 1, 1])
    # rho=7 is the default CP-ResNet of the 2019 config: stage 2 starts with a 3x3 kernel.
    assert kernel_sizes(7)["stage2"][0][0] == 3 and kernel_sizes(7)["stage1"] == ([3, 3, 3, 3], [1, 3, 3, 3])
    # Larger rho only grows kernels.
    assert all(a <= b for r in range(0, 20) for s in k for a, b in zip(sum(kernel_sizes(r)[s], []), sum(kernel_sizes(r + 1)[s], [])))


def test_koutini_published_sizes():
    # sub2: --rho 4 --width 64 --depth_restriction "0,2,4", stereo 256 mel bands x 431 frames.
    sub2 = build_model("cp_resnet", dict(rho=4, width=64, n_blocks=[4, 2, 0], frequency_damping=True),
                       n_classes=3, in_channels=2, n_mels=256, n_frames=431)
    assert conv_weights(sub2) == 265_728
    assert bn_params(sub2) == 2_438
    # Its pruning target counted every parameter (250,000 incl. batch norm): the non-zero conv
    # weights left are exactly the published 247,562 (Koutini_CPJKU_task1b_2).
    assert 250_000 - bn_params(sub2) == 247_562
    # sub3: --rho 4 --width 48 --depth_restriction "0,1,3": reported 247,316 trainable parameters.
    sub3 = build_model("cp_resnet", dict(rho=4, width=48, n_blocks=[4, 3, 1]), n_classes=3, in_channels=2, n_mels=256, n_frames=431)
    total = sum(p.numel() for p in sub3.parameters())
    assert abs(total - 247_316) / 247_316 < 0.01, total
    macs = count_macs(sub2, (2, 256, 431))["macs"]
    assert macs == flop_counter_macs(sub2, (2, 256, 431))
    print(f"Koutini sub2: {conv_weights(sub2)} conv weights, {bn_params(sub2)} BN params, {macs / 1e6:.1f} M MACs")
    print(f"Koutini sub3: {total} params")


def test_mcdonnell_published_size_and_one_bit_compatibility():
    model = build_model("preact_resnet", {}, n_classes=3, in_channels=2, n_mels=256, n_frames=400)
    assert conv_weights(model) == 3_987_000  # 486.69 KB at one bit each
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(type(m) is nn.Conv2d and m.bias is None for m in convs)
    # Only the input BN of each path and the last BN learn an affine transform (as in the Keras code).
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert sum(m.affine for m in bns) == 3
    # Frequency is never downsampled: every stride along the mel axis is 1.
    assert all(m.stride[0] == 1 for m in convs)
    # A 1-bit step (sign x sqrt(2 / (k^2 C_in))) applied to the weights keeps the network working.
    with torch.no_grad():
        for m in convs:
            k2 = m.kernel_size[0] * m.kernel_size[1]
            m.weight.copy_(torch.sign(m.weight) * (2.0 / (k2 * m.in_channels)) ** 0.5)
    model.eval()
    out = model(torch.randn(1, 2, 256, 40))
    assert out.shape == (1, 3) and torch.isfinite(out).all()
    macs = count_macs(model, (2, 256, 40))["macs"]
    assert macs == flop_counter_macs(model, (2, 256, 40))
    print(f"McDonnell: {conv_weights(model)} conv weights; {macs * 10 / 1e9:.2f} G MACs per 400 frames")


def test_mobnet_published_configuration():
    model = build_model("mobnet", {}, n_classes=3, in_channels=6, n_mels=128, n_frames=461)
    n_params = sum(p.numel() for p in model.parameters())
    # Two paths of (conv 3x3 -> 32, 3 x 3 inverted residuals to 32/40/48, conv 1x1 -> 56) + head.
    assert n_params == 145_328
    assert model(torch.randn(2, 6, 128, 64)).shape == (2, 3)
    macs = count_macs(model, (6, 128, 64))["macs"]
    assert macs == flop_counter_macs(model, (6, 128, 64))
    print(f"Mobnet: {n_params} params, {macs / 1e6:.1f} M MACs per 64 frames")


def test_frequency_damping_mask():
    mask = damping_mask(5, 3, 0.1)
    assert mask.shape == (1, 1, 5, 3)
    assert torch.allclose(mask[0, 0, :, 0], torch.tensor([0.1, 0.55, 1.0, 0.55, 0.1]))
    assert torch.equal(damping_mask(1, 3, 0.1), torch.ones(1, 1, 1, 3))  # 1 x k kernels are untouched
    conv = DampedConv2d(2, 4, 3, padding=1, bias=False, damping_min=0.0)
    x = torch.randn(1, 2, 8, 8)
    expected = nn.functional.conv2d(x, conv.weight * damping_mask(3, 3, 0.0), padding=1)
    assert torch.allclose(conv(x), expected)
    assert "damper" not in conv.state_dict()  # the mask is not a parameter and not stored


def test_bad_knobs_are_one_line_user_errors():
    with pytest.raises(UserError, match="n_blocks"):
        build_model("cp_resnet", dict(n_blocks=[4, 5, 0]), n_classes=3, in_channels=1, n_mels=40, n_frames=50)
    with pytest.raises(UserError, match="too small"):
        build_model("cp_resnet", {}, n_classes=3, in_channels=1, n_mels=8, n_frames=50)
    with pytest.raises(UserError, match="even number"):
        build_model("preact_resnet", {}, n_classes=3, in_channels=1, n_mels=41, n_frames=50)
    with pytest.raises(UserError, match="unknown parameter 'depth'"):
        build_model("mobnet", dict(depth=3), n_classes=3, in_channels=1, n_mels=40, n_frames=50)
