"""Magnitude pruning (targets, per-layer cap, gradual ramp) and structured channel pruning."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from dcase_effdl.compress import CompressContext, apply_steps, load_variant, parse_steps
from dcase_effdl.compress.prune import (
    GradualPruning,
    channel_groups,
    prune_channels,
    prune_magnitude,
    ramp_fraction_at,
    sparsity_table,
)
from dcase_effdl.config import TrainConfig
from dcase_effdl.data.bundle import DataBundle
from dcase_effdl.errors import UserError
from dcase_effdl.models import ModelSpec
from dcase_effdl.training.best_epoch import BestEpoch
from dcase_effdl.training.loop import validate

DIGITS_SPEC = ModelSpec.from_dict({"name": "digits_cnn", "params": {}, "n_classes": 10, "in_channels": 1, "n_mels": 8, "n_frames": 8})


def _model(spec=DIGITS_SPEC, seed=0):
    torch.manual_seed(seed)
    return spec.build()


def _toy_bundle(n=240, seed=0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    x[torch.arange(n), 0, y % 8, y // 8 * 4] += 3.0  # one bright pixel per class: learnable in an epoch
    return DataBundle([str(c) for c in range(10)], x[: n // 2], y[: n // 2], x[n // 2:], y[n // 2:], x[n // 2:], y[n // 2:],
                      [f"x{i}" for i in range(n - n // 2)])


def _ctx(bundle, tmp_path=None, spec=DIGITS_SPEC, calls=None):
    cfg = TrainConfig(batch_size=32, lr=3e-3)

    class Recording(CompressContext):
        def fine_tune(self, model, tune):
            if calls is not None:
                calls.append(tune)
            return super().fine_tune(model, tune)

    return Recording(bundle=bundle, train=cfg, seed=0, model_spec=spec, work_dir=tmp_path, size_policy="dcase2020")


def _counted_nonzero(model):
    return sum(int((p != 0).sum()) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())


def test_global_pruning_meets_fraction_exactly_and_keeps_every_layer():
    model = _model()
    n_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    prune_magnitude(model, amount=0.7)
    table = sparsity_table(model)
    zeros = sum(r["n_params"] - r["n_nonzero"] for r in table)
    assert zeros == round(0.7 * n_weights)
    assert all(r["sparsity"] <= 0.9 + 1e-9 for r in table)
    assert all(r["n_nonzero"] > 0 for r in table)


def test_cap_stops_global_pruning_from_removing_a_layer():
    # A layer of tiny weights (like a freshly initialised dense layer beside glorot convs).
    def net():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 3))
        with torch.no_grad():
            m[2].weight.mul_(1e-3)
        return m

    uncapped = net()
    prune_magnitude(uncapped, amount=0.75, max_layer_sparsity=1.0)
    assert int((uncapped[2].weight != 0).sum()) == 0  # plain global magnitude pruning kills the layer
    capped = net()
    prune_magnitude(capped, amount=0.75)
    rows = {r["layer"]: r for r in sparsity_table(capped)}
    assert rows["2"]["n_nonzero"] == 250  # exactly at the 0.9 cap: 10 % of 2,500 left
    assert sum(r["n_params"] - r["n_nonzero"] for r in rows.values()) == round(0.75 * (1000 + 2500 + 150))
    with pytest.raises(UserError, match="max_layer_sparsity"):
        prune_magnitude(net(), amount=0.95)


def test_n_nonzero_target_and_layer_scope():
    model = _model()
    prune_magnitude(model, n_nonzero=10_000)
    assert _counted_nonzero(model) == 10_000
    model = _model()
    prune_magnitude(model, amount=0.5, scope="layer")
    for row in sparsity_table(model):
        assert abs(row["sparsity"] - 0.5) <= 1.0 / row["n_params"] + 1e-9
    with pytest.raises(UserError, match="n_nonzero 50"):
        prune_magnitude(_model(), n_nonzero=50)  # below the biases that pruning keeps


def test_bad_step_parameters_are_user_errors_naming_the_step():
    with pytest.raises(UserError, match=r"r\.yaml: variants\[1\]\.compress\[0\].*amount must be in \[0, 1\)"):
        parse_steps([{"method": "prune", "amount": 1.5}], "r.yaml: variants[1].compress")
    with pytest.raises(UserError, match="exactly one of amount"):
        parse_steps([{"method": "prune"}], "r.yaml: variants[1].compress")
    with pytest.raises(UserError, match="unknown key"):
        parse_steps([{"method": "prune", "amount": 0.5, "amout": 1}], "r.yaml: variants[1].compress")
    with pytest.raises(UserError, match="amount must be in"):
        parse_steps([{"method": "prune_channels", "amount": 1.0}], "r.yaml: variants[0].compress")


def test_ramp_schedules():
    assert [ramp_fraction_at(e, 4, "linear") for e in (1, 2, 3, 4, 5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cubic = [ramp_fraction_at(e, 4, "cubic") for e in (1, 2, 3, 4)]
    assert cubic == sorted(cubic) and cubic[-1] == 1.0 and cubic[0] > 0.25
    assert ramp_fraction_at(1, 4, "oneshot") == 1.0


def test_gradual_pruning_ramps_during_fine_tuning_and_ends_on_target(tmp_path):
    bundle = _toy_bundle()
    steps = parse_steps([{"method": "prune", "amount": 0.8, "epochs": 4, "ramp_fraction": 0.5}], "t.yaml: variants[0].compress")
    calls = []
    variant = apply_steps(_model(), steps, _ctx(bundle, tmp_path, calls=calls))
    # An epoch before the ramp's end is not at the target, so fit may not keep it.
    assert len(calls) == 1 and [calls[0].eligible(e) for e in (1, 2, 3, 4)] == [False, True, True, True]
    rows = variant.step_meta[0]["ramp"]
    assert [r["sparsity"] for r in rows] == pytest.approx([0.4, 0.8, 0.8, 0.8], abs=1e-4)
    # Only epochs at the full target are scored on validation data (and one of them is kept).
    assert "val_accuracy" not in rows[0] and all("val_accuracy" in r for r in rows[1:])
    table = variant.step_meta[0]["sparsity"]
    total = sum(r["n_params"] for r in table)
    assert sum(r["n_params"] - r["n_nonzero"] for r in table) == round(0.8 * total)
    assert all(0 < r["n_nonzero"] for r in table)
    # Saved zeros stay zeros and predictions reproduce exactly.
    path = variant.save(tmp_path / "pruned.safetensors")
    loaded = load_variant(path)
    with torch.no_grad():
        assert torch.equal(variant.module(bundle.x_val), loaded.module(bundle.x_val))
    assert sparsity_table(loaded.module) == table


def test_masks_reapplied_after_each_step():
    model = _model()
    hook = GradualPruning([], 20_000, epochs=2, schedule="oneshot")
    hook.on_epoch_start(1, model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # an optimizer step revives every zero
    hook.after_step(model)
    assert sum(r["n_params"] - r["n_nonzero"] for r in sparsity_table(model)) >= 20_000


def test_channel_groups_of_the_baseline():
    spec = ModelSpec.from_dict({"name": "dcase2020_baseline", "params": {}, "n_classes": 3, "in_channels": 1, "n_mels": 40, "n_frames": 500})
    groups = channel_groups(_model(spec))
    assert [(g.conv, g.batch_norm, g.consumer, g.consumer_kind) for g in groups] == [
        ("features.0.0", "features.0.1", "features.1.0", "conv"),
        ("features.1.0", "features.1.1", "classifier.1", "linear"),
    ]


def test_channel_pruning_shrinks_the_network_and_keeps_its_function(tmp_path):
    spec = ModelSpec.from_dict({"name": "dcase2020_baseline", "params": {}, "n_classes": 3, "in_channels": 1, "n_mels": 40, "n_frames": 500})
    model = _model(spec).eval()
    x = torch.randn(4, 1, 40, 500)
    n_before = sum(p.numel() for p in model.parameters())
    # Zero half of conv1's filters: removing exactly those channels must not change the output.
    with torch.no_grad():
        model.features[0][0].weight[::2] = 0
        model.features[0][0].bias[::2] = 0
        model.features[0][1].bias[::2] = 0
        model.features[0][1].running_mean[::2] = 0
        ref = model(x)
    layers = prune_channels(model, 0.5, skip=["features.1.0"])
    assert model.features[0][0].out_channels == 16 and model.features[1][0].in_channels == 16
    assert set(layers) == {"features.0.0", "features.0.1", "features.1.0"}
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-5)
    prune_channels(model, 0.5, skip=["features.0.0"])
    assert model.features[1][0].out_channels == 32 and model.classifier[1].in_features == 64
    assert sum(p.numel() for p in model.parameters()) < 0.4 * n_before
    assert model(x).shape == (4, 3)
    # Real work saved, not zeros: conv MACs per clip fall with the channel counts (16 x 32 of 32 x 64).
    from dcase_effdl.compress.macs import count_macs

    macs = count_macs(model, (1, 40, 500))["macs"]
    assert macs < 0.35 * count_macs(_model(spec), (1, 40, 500))["macs"]


def test_channel_pruning_variant_round_trip(tmp_path):
    bundle = _toy_bundle()
    steps = parse_steps([{"method": "prune_channels", "amount": 0.5, "epochs": 1}, {"method": "float16"}], "t.yaml: v")
    parent = _model()
    variant = apply_steps(parent, steps, _ctx(bundle, tmp_path))
    assert variant.module.features[0][0].out_channels == 8 and parent.features[0][0].out_channels == 16
    assert variant.history[0]["size_bytes_after"] < 0.4 * variant.history[0]["size_bytes_before"]
    loaded = load_variant(variant.save(tmp_path / "channels.safetensors"))
    with torch.no_grad():
        assert torch.equal(variant.module(bundle.x_val), loaded.module(bundle.x_val))
    assert np.isclose(variant.history[1]["size_bytes_after"] * 2, variant.history[1]["size_bytes_before"])


def test_n_nonzero_target_exact_after_fine_tuning_moves_zero_biases(tmp_path):
    # A fresh Keras-style model has all-zero biases; fine-tuning makes them non-zero, and the target still holds.
    model = _model()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.zero_()
    assert _counted_nonzero(model) == sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    steps = parse_steps([{"method": "prune", "n_nonzero": 12_345, "epochs": 1}], "t.yaml: v")
    variant = apply_steps(model, steps, _ctx(_toy_bundle(), tmp_path))
    assert _counted_nonzero(variant.module) == 12_345
    assert variant.history[0]["n_nonzero_after"] == 12_345


def test_best_full_sparsity_epoch_is_restored():
    bundle = _toy_bundle()
    model = _model()
    hook = GradualPruning([], 20_000, epochs=4, ramp_fraction=0.5)
    best = BestEpoch(hook.eligible)  # what fit does with FineTune(eligible=hook.eligible)
    states, scores = {}, {}
    for epoch in (1, 2, 3, 4):
        hook.on_epoch_start(epoch, model)
        with torch.no_grad():
            model.classifier[4].bias.copy_(torch.arange(10.0) * (1 if epoch != 3 else 0))  # epoch 3 differs
        scores[epoch] = validate(model, bundle)
        best.update(epoch, *scores[epoch], model)
        states[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
    assert [hook.eligible(e) for e in (1, 2, 3, 4)] == [False, True, True, True]  # epoch 1 is not at the target
    expected = max((2, 3, 4), key=lambda e: (scores[e][0], -scores[e][1], -e))
    assert best.restore(model) == expected
    assert all(torch.equal(v, states[expected][k]) for k, v in model.state_dict().items())
