"""Batch plans (shuffled, class-balanced, sharded), learning-rate schedules, optimisers and SWA."""

from __future__ import annotations

import math

import pytest
import torch

from dcase_effdl.training import sampling, schedules


def test_shuffled_batches_cover_each_example_once_and_depend_on_seed_and_epoch_only():
    plan = sampling.shuffled_batches(101, 10, seed=3, epoch=2)
    assert sorted(torch.cat(plan).tolist()) == list(range(101))
    assert len(plan[-1]) == 11  # the trailing single example joined the last batch
    again = sampling.shuffled_batches(101, 10, seed=3, epoch=2)
    assert all(torch.equal(a, b) for a, b in zip(plan, again))
    other = sampling.shuffled_batches(101, 10, seed=3, epoch=3)
    assert not torch.equal(torch.cat(plan), torch.cat(other))


def test_balanced_batches_have_equal_class_counts():
    labels = torch.tensor([0] * 10 + [1] * 100 + [2] * 40)  # strongly imbalanced
    plan = sampling.balanced_batches(labels, 32, seed=0, epoch=1)
    assert len(plan) == 150 // 32
    for batch in plan:
        counts = torch.bincount(labels[batch], minlength=3)
        assert len(batch) == 32 and counts.max() - counts.min() <= 1 and counts.min() >= 10
    # The small class is oversampled through reshuffled cycles: all its members appear.
    used = torch.cat(plan)
    assert set(used[labels[used] == 0].tolist()) == set(range(10))
    assert all(torch.equal(a, b) for a, b in zip(plan, sampling.balanced_batches(labels, 32, seed=0, epoch=1)))
    with pytest.raises(ValueError):
        sampling.balanced_batches(labels, 2, seed=0, epoch=1)


def test_shards_partition_a_batch():
    batch = torch.arange(10)
    parts = [sampling.shard(batch, r, 3) for r in range(3)]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))


def factors(**kw):
    spe = kw.pop("steps_per_epoch", 10)
    total = kw.pop("total_epochs", 10)
    return [schedules.lr_factor(s, steps_per_epoch=spe, total_epochs=total, **kw) for s in range(spe * total)]


def test_warmup_then_cosine():
    f = factors(schedule="cosine", warmup_epochs=2, min_factor=0.01)
    assert f[0] == pytest.approx(1 / 20) and f[19] == pytest.approx(1.0)  # linear warm-up over 20 steps
    assert f[20] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[20:], f[21:]))  # monotone decay after warm-up
    assert f[20 + 40] == pytest.approx(0.01 + 0.99 * 0.5)  # half-way: cosine at pi/2
    assert f[-1] == pytest.approx(0.01, abs=2e-3)


def test_warm_restarts_periods_double():
    # McDonnell: periods 10, 20, 40 epochs; the factor is back at 1 at epochs 10 and 30.
    f = factors(schedule="warm_restarts", restart_epochs=10, restart_mult=2, min_factor=1e-4, steps_per_epoch=2, total_epochs=70)
    restarts = [i / 2 for i in range(1, len(f)) if f[i] > f[i - 1]]
    assert restarts == [10.0, 30.0]
    assert f[2 * 10 - 1] < 0.01 and f[2 * 30 - 1] < 0.01


def test_linear_decay_koutini():
    f = factors(schedule="linear", decay_start_epoch=50, decay_epochs=200, min_factor=0.0, steps_per_epoch=1, total_epochs=300)
    assert f[49] == 1.0 and f[50] == 1.0 and f[150] == pytest.approx(0.5) and f[250] == 0.0 and f[299] == 0.0


def test_optimizers():
    p = [torch.nn.Parameter(torch.ones(2))]
    assert isinstance(schedules.make_optimizer(p, "adam", 1e-3), torch.optim.Adam)
    assert isinstance(schedules.make_optimizer(p, "adamw", 1e-3, weight_decay=0.01), torch.optim.AdamW)
    sgd = schedules.make_optimizer(p, "sgd", 0.1, momentum=0.9, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    with pytest.raises(ValueError):
        schedules.make_optimizer(p, "rmsprop", 0.1)


def test_scheduler_follows_lr_factor_and_resumes():
    p = [torch.nn.Parameter(torch.ones(1))]
    opt = schedules.make_optimizer(p, "sgd", 0.1)
    fn = lambda s: schedules.lr_factor(s, steps_per_epoch=4, total_epochs=5, schedule="cosine")  # noqa: E731
    sched = schedules.make_scheduler(opt, fn)
    seen = []
    for _ in range(7):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.1 * fn(s) for s in range(7)])
    opt2 = schedules.make_optimizer(p, "sgd", 0.1)
    sched2 = schedules.make_scheduler(opt2, fn)
    opt2.load_state_dict(opt.state_dict())  # a checkpoint restores both
    sched2.load_state_dict(sched.state_dict())
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * fn(7))
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1 * fn(8))


def test_swa_averages_weights_of_chosen_epochs_and_updates_batch_norm():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    swa = schedules.SWA(model, start_epoch=3, every=2)
    weights = []
    for epoch in range(1, 8):
        with torch.no_grad():
            model[0].weight.fill_(float(epoch))
        if swa.update(model, epoch):
            weights.append(epoch)
    assert weights == [3, 5, 7] and swa.n_averaged == 3
    data = [torch.randn(16, 2) * 3 + 1 for _ in range(4)]
    swa.finish(model, data)
    assert torch.allclose(model[0].weight, torch.full((2, 2), 5.0))
    # BN running statistics were recomputed for the averaged weights (not left at their initial 0/1).
    assert not torch.allclose(model[1].running_mean, torch.zeros(2))
    with torch.no_grad():
        feats = torch.cat([model[0](d) for d in data])
    assert torch.allclose(model[1].running_mean, feats.mean(0), atol=1e-4)
    assert not math.isnan(model[1].running_var.sum().item())
