"""The Koutini, Hu and McDonnell recipes load strictly and build networks of the published sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.nn as nn

from dcase_effdl.compress import parse_steps
from dcase_effdl.config import load_recipe
from dcase_effdl.features.logmel import feature_shape
from dcase_effdl.models import build_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# recipe -> (weights counted by the 2020 rule: conv/linear weights and biases, batch norm not counted)
PUBLISHED = {
    "koutini": 265_728,  # then pruned to 247,562 non-zero (Koutini_CPJKU_task1b_2)
    "hu": 138_032,  # Mobnet, int8 after post-training quantisation
    "mcdonnell": 3_987_000,  # McDonnell_USA_task1b_3: one bit each, 486.69 KB
}


def counted(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) for p in m.parameters())


def build(name: str):
    recipe, feat = load_recipe(RECIPES / f"{name}.yaml")
    c, f, t = feature_shape(feat)
    model = build_model(recipe.model.name, recipe.model.params, n_classes=3, in_channels=c, n_mels=f, n_frames=t)
    return recipe, model


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_recipes_build_published_sizes(name):
    recipe, model = build(name)
    assert counted(model) == PUBLISHED[name]
    for i, v in enumerate(recipe.variants):
        parse_steps(v.compress, f"{name}: variants[{i}].compress")


def test_koutini_prune_target_is_the_published_non_zero_count():
    recipe, _ = build("koutini")
    prune = [s for v in recipe.variants for s in v.compress if s["method"] == "prune"]
    assert prune and prune[0]["n_nonzero"] == 247_562
    assert 247_562 * 2 / 1024 == pytest.approx(483.52, abs=0.005)  # float16 bytes -> KB


@pytest.mark.parametrize("name", ["koutini_fast", "hu_fast", "mcdonnell_fast"])
def test_fast_recipes_use_the_same_front_end_and_family(name):
    fast, _ = load_recipe(RECIPES / f"{name}.yaml")
    full, _ = load_recipe(RECIPES / f"{name.removesuffix('_fast')}.yaml")
    assert fast.features == full.features and fast.model.name == full.model.name
    assert fast.dataset.synthetic is not None and fast.train.epochs <= 10
    for key in ("mixup_alpha", "channel_swap", "balanced_batches", "time_roll", "schedule"):
        assert getattr(fast.train, key) == getattr(full.train, key), key
    assert (fast.train.spec_augment is None) == (full.train.spec_augment is None)
    assert 0 < fast.train.time_crop <= 128  # shorter training inputs keep CPU time to minutes
