"""Augmentations do what they say: mixup lambdas and convex combinations, mask widths, crops, rolls, swaps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from dcase_effdl.training import augment


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_mixup_is_a_convex_combination_with_beta_lambdas():
    n, k = 4000, 3
    x = torch.randn(n, 1, 2, 3, dtype=torch.float64)
    y = torch.arange(n) % k
    xm, ym, lam = augment.mixup(x, y, alpha=0.4, n_classes=k, generator=gen())
    assert torch.allclose(ym.sum(1), torch.ones(n, dtype=ym.dtype))
    assert ((0 <= lam) & (lam <= 1)).all()
    # Recover each partner: x' - lam x = (1 - lam) x_partner, and the partner is one of the inputs.
    resid = (xm - lam.view(-1, 1, 1, 1) * x) / (1 - lam).view(-1, 1, 1, 1).clamp(min=1e-6)
    keep = (1 - lam) > 0.05
    dist = torch.cdist(resid[keep].flatten(1), x.flatten(1))
    partner = dist.argmin(1)
    assert dist.min(1).values.max() < 1e-3
    # Targets are the same convex combination of one-hot labels.
    expected = lam[keep, None] * F.one_hot(y[keep], k) + (1 - lam[keep, None]) * F.one_hot(y[partner], k)
    assert torch.allclose(ym[keep], expected.to(ym.dtype), atol=1e-6)
    # lambda follows Beta(0.4, 0.4): Kolmogorov-Smirnov test and the known mean/variance.
    assert stats.kstest(lam.numpy(), stats.beta(0.4, 0.4).cdf).pvalue > 0.01
    assert abs(lam.mean().item() - 0.5) < 0.02
    assert abs(lam.var().item() - 0.25 / (2 * 0.4 + 1)) < 0.01


def test_mixup_is_seeded():
    x, y = torch.randn(8, 2, 4, 5), torch.arange(8) % 3
    a = augment.mixup(x, y, 0.3, 3, gen(1))
    b = augment.mixup(x, y, 0.3, 3, gen(1))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_spec_augment_masks_contiguous_bands_of_bounded_width():
    x = torch.ones(500, 2, 64, 100)
    out = augment.spec_augment(x, gen(), freq_mask=13, time_mask=40)
    zero = out == 0
    freq_rows = zero.all(dim=3)  # (B, C, F): a masked band is zero over all frames
    time_cols = zero.all(dim=2)  # (B, C, T)
    fw = freq_rows.sum(-1)
    tw = time_cols.sum(-1)
    assert fw.max() <= 12 and tw.max() <= 39
    assert fw.min() == 0 and tw.min() == 0  # width 0 is allowed, as in Hu's code
    assert set(fw.flatten().tolist()) == set(range(13))  # every width 0..12 occurs
    # Zero cells are exactly the union of the frequency band and the time band.
    assert torch.equal(zero, freq_rows[..., None] | time_cols[:, :, None, :])
    # Each band is contiguous.
    for row in freq_rows[:50].reshape(-1, 64):
        idx = torch.nonzero(row).flatten()
        if len(idx):
            assert idx[-1] - idx[0] + 1 == len(idx)
    # Channels are masked independently.
    assert not torch.equal(freq_rows[:, 0], freq_rows[:, 1])
    assert torch.equal(x, torch.ones_like(x))  # input untouched


def test_time_roll_is_a_circular_shift_within_bounds():
    x = torch.arange(100.0).view(1, 1, 1, 100).repeat(300, 2, 3, 1)
    out = augment.time_roll(x, 50, gen())
    shifts = (out[:, 0, 0, 0] - 0) % 100  # out[..., 0] = x[..., -shift]
    shifts = torch.where(shifts > 50, shifts - 100, shifts) * -1
    assert shifts.abs().max() <= 50 and shifts.abs().max() >= 45
    for i in range(10):
        assert torch.equal(out[i], torch.roll(x[i], int(shifts[i]), dims=-1))


def test_time_crop_takes_contiguous_windows():
    x = torch.arange(469.0).view(1, 1, 1, 469).repeat(200, 2, 4, 1)
    out = augment.time_crop(x, 400, gen())
    assert out.shape == (200, 2, 4, 400)
    starts = out[:, 0, 0, 0]
    assert torch.equal(out, (starts.view(-1, 1, 1, 1) + torch.arange(400.0)).expand_as(out))
    assert starts.min() >= 0 and starts.max() <= 69 and len(set(starts.tolist())) > 30
    with pytest.raises(ValueError):
        augment.time_crop(x, 500, gen())


def test_channel_swap_exchanges_left_and_right_in_every_group():
    assert augment.swap_permutation(6) == [1, 0, 3, 2, 5, 4]
    x = torch.arange(6.0).view(1, 6, 1, 1).repeat(1000, 1, 2, 2)
    out = augment.channel_swap(x, gen(), p=0.5)
    swapped = out[:, 0, 0, 0] == 1
    assert torch.equal(out[swapped], x[swapped][:, [1, 0, 3, 2, 5, 4]])
    assert torch.equal(out[~swapped], x[~swapped])
    assert 0.45 < swapped.float().mean() < 0.55
    with pytest.raises(ValueError, match="stereo"):
        augment.channel_swap(torch.zeros(2, 3, 4, 4), gen())


def test_level_shift_adds_one_bounded_uniform_offset_per_example():
    x = torch.randn(2000, 2, 4, 5)
    out = augment.level_shift(x, 0.5, gen())
    offsets = (out - x).flatten(1)
    # one offset per example, the same for every channel, band and frame (float32 rounding of x + o)
    assert (offsets.max(1).values - offsets.min(1).values).max() < 1e-5
    o = offsets[:, 0].double().numpy()
    assert np.abs(o).max() <= 0.5 + 1e-6
    assert stats.kstest(o, stats.uniform(loc=-0.5, scale=1.0).cdf).pvalue > 1e-3
    assert torch.equal(augment.level_shift(x, 0.5, gen(3)), augment.level_shift(x, 0.5, gen(3)))


def test_soft_cross_entropy_with_smoothing():
    logits = torch.randn(16, 3)
    y = torch.arange(16) % 3
    assert torch.allclose(augment.soft_cross_entropy(logits, y), F.cross_entropy(logits, y))
    assert torch.allclose(augment.soft_cross_entropy(logits, y, 0.1), F.cross_entropy(logits, y, label_smoothing=0.1))
    soft = torch.softmax(torch.randn(16, 3), 1)
    expected = -(soft * F.log_softmax(logits, 1)).sum(1).mean()
    assert torch.allclose(augment.soft_cross_entropy(logits, soft), expected)
    np.testing.assert_allclose(
        augment.soft_cross_entropy(logits, soft, 0.2).item(),
        -((0.8 * soft + 0.2 / 3) * F.log_softmax(logits, 1)).sum(1).mean().item(),
        rtol=1e-6,
    )


def test_level_shift_is_a_checked_recipe_option_applied_per_example():
    from dcase_effdl.config import TrainConfig, from_dict
    from dcase_effdl.errors import UserError
    from dcase_effdl.training.loop import augment_example

    with pytest.raises(UserError, match=r"r.yaml: train.level_shift must be >= 0, got -0.5"):
        from_dict(TrainConfig, {"level_shift": -0.5}, "r.yaml", "train")
    # The loop augments one (1, C, F, T) row at a time with that row's own generator.
    out = torch.cat([augment_example(torch.zeros(1, 1, 3, 4), TrainConfig(level_shift=0.5), gen(seed)) for seed in range(8)])
    per_example = out.flatten(1)
    assert torch.equal(per_example, per_example[:, :1].expand_as(per_example)) and per_example.abs().max() > 0
    assert per_example.abs().max() <= 0.5 and len(set(per_example[:, 0].tolist())) == 8


@pytest.mark.parametrize("linear", [True, False])
def test_filter_augment_adds_one_bounded_gain_curve_over_bands_per_example(linear):
    x = torch.randn(500, 2, 40, 6)
    out = augment.filter_augment(x, 0.3, 4, gen(), linear)
    assert out.shape == x.shape
    curve = out - x
    # constant over channels and frames (float32 rounding of x + gain), one curve per example
    assert (curve - curve[:, :1, :, :1]).abs().max() < 1e-5
    c = curve[:, 0, :, 0].double()  # (B, F)
    assert c.abs().max() <= 0.3 + 1e-6
    # the gain varies over the bands: a flat curve would be level_shift
    assert (c.max(1).values - c.min(1).values).median() > 0.1
    steps = (c[:, 1:] - c[:, :-1]).abs()
    one = augment.filter_augment(x, 0.3, 1, gen(), linear)[:, 0, :, 0].double() - x[:, 0, :, 0].double()
    if linear:  # slopes, not 3 steps; one band: a straight line from the lowest to the highest band
        assert ((steps > 1e-6).sum(1) > 4).float().mean() > 0.9
        assert (one[:, 2:] - 2 * one[:, 1:-1] + one[:, :-2]).abs().max() < 1e-5
    else:  # 4 parts: at most 3 changes of gain along the bands; one band: a flat gain
        assert ((steps > 1e-6).sum(1) <= 3).all()
        assert (one - one[:, :1]).abs().max() < 1e-5
    assert torch.equal(augment.filter_augment(x, 0.3, 4, gen(3), linear), augment.filter_augment(x, 0.3, 4, gen(3), linear))
    assert not torch.equal(augment.filter_augment(x, 0.3, 4, gen(3), linear), augment.filter_augment(x, 0.3, 4, gen(4), linear))
    assert torch.equal(augment.filter_augment(x, 0.0, 4, gen(), linear), x)


def test_freq_shift_moves_bands_and_repeats_the_edge_band():
    x = torch.arange(10.0).view(1, 1, 10, 1).expand(200, 2, 10, 3).contiguous()
    out = augment.freq_shift(x, 2, gen())
    assert out.shape == x.shape
    shifts = x[:, 0, 5, 0] - out[:, 0, 5, 0]  # band 5 now holds band 5 - shift
    assert set(shifts.long().tolist()) == {-2, -1, 0, 1, 2}
    expected = (torch.arange(10)[None, :] - shifts.long()[:, None]).clamp(0, 9).float()
    assert torch.equal(out, expected.view(200, 1, 10, 1).expand_as(x))
    assert torch.equal(augment.freq_shift(x, 2, gen(5)), augment.freq_shift(x, 2, gen(5)))
    assert torch.equal(augment.freq_shift(x, 0, gen()), x)


def test_filter_augment_and_freq_shift_are_checked_recipe_options_applied_per_example():
    from dcase_effdl.config import FilterAugmentConfig, TrainConfig, from_dict
    from dcase_effdl.errors import UserError
    from dcase_effdl.training.loop import augment_example
    from dcase_effdl.training.options import check_options

    with pytest.raises(UserError, match=r"r.yaml: train.freq_shift must be >= 0, got -1"):
        from_dict(TrainConfig, {"freq_shift": -1}, "r.yaml", "train")
    with pytest.raises(UserError, match=r"r.yaml: train.filter_augment.n_bands must be >= 1, got 0"):
        from_dict(TrainConfig, {"filter_augment": {"n_bands": 0}}, "r.yaml", "train")
    with pytest.raises(UserError, match=r"train.filter_augment.max_gain must be a finite number >= 0"):
        from_dict(TrainConfig, {"filter_augment": {"max_gain": -0.1}}, "r.yaml", "train")
    with pytest.raises(UserError, match=r"train.filter_augment.n_bands = 50 is more than the 40 mel bands"):
        check_options(TrainConfig(filter_augment=FilterAugmentConfig(n_bands=50)), (1, 40, 100))
    with pytest.raises(UserError, match=r"train.freq_shift = 40 bins would move every band of the 40 mel bands"):
        check_options(TrainConfig(freq_shift=40), (1, 40, 100))
    check_options(TrainConfig(freq_shift=39, filter_augment=FilterAugmentConfig(n_bands=40)), (1, 40, 100))
    # Off (the defaults) is the identity; on, each row's own generator gives it its own curve, the same on a rerun.
    x = torch.randn(1, 1, 8, 5)
    assert torch.equal(augment_example(x, TrainConfig(), gen()), x)
    cfg = TrainConfig(filter_augment=FilterAugmentConfig(max_gain=0.5, n_bands=3), freq_shift=1)
    rows = [augment_example(x, cfg, gen(seed)) for seed in range(4)]
    assert all(torch.equal(r, augment_example(x, cfg, gen(seed))) for seed, r in enumerate(rows))
    assert len({tuple(r.flatten().tolist()) for r in rows}) == 4
