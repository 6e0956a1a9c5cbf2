"""A recipe is resolved and checked before any work: bad values fail in one line and write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dcase_effdl.config import load_recipe
from dcase_effdl.errors import UserError
from dcase_effdl.pipeline import resolve, run

REPO = Path(__file__).resolve().parents[1]

# Everything a run would create lives under the test's folder, so "nothing written" is checkable.
RECIPE = """\
name: r
features: {features}
dataset:
  root: {root}/data
  synthetic: {{clips_per_class: 2, duration: 1.0}}
cache_dir: {root}/cache
out_dir: {root}/runs
train: {{epochs: 1, device: cpu}}
"""


def write_recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE.format(features=REPO / "features" / "dcase2020_baseline.yaml", root=tmp_path))
    return path


def refused(tmp_path: Path, *overrides: str) -> str:
    """Run the recipe with `overrides`; it must fail in one line, before data, cache or run folder exist."""
    path = write_recipe(tmp_path)
    with pytest.raises(UserError) as err:
        run(path, overrides=list(overrides))
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]
    return message


def test_model_knob_typo_fails_before_any_data(tmp_path):
    message = refused(tmp_path, "model.params.conv_filterz=[8, 16]")
    assert "unknown parameter 'model.params.conv_filterz'" in message and "conv_filters" in message


def test_model_knob_range_and_input_shape_fail_before_any_data(tmp_path):
    assert "model.params: dropout must be in [0, 1), got 1.5" in refused(tmp_path, "model.params.dropout=1.5")
    message = refused(tmp_path, "model.params.pool_sizes=[[5, 5], [4, 600]]")
    assert "input 40 mels x 501 frames is too small" in message  # the shape the feature definition gives
    assert "unknown model 'resnet9000'" in refused(tmp_path, "model.name=resnet9000")


def test_step_order_and_teachers_fail_in_the_dry_run(tmp_path):
    message = refused(tmp_path, "variants=[{name: b, compress: [{method: binary, epochs: 0}, {method: int8}]}]")
    assert "variants[0].compress[1]: int8 cannot apply to a model whose weights are already binary" in message
    message = refused(tmp_path, "variants=[{name: p, compress: [{method: prune, n_nonzero: 50}]}]")
    assert "variants[0].compress[0]: pruning 114,970 of 115,020 weights needs more than max_layer_sparsity" in message
    teacher = "{model: dcase2020_baseline, params: {conv_filterz: [8]}, epochs: 1}"
    message = refused(tmp_path, f"variants=[{{name: kd, compress: [{{method: distill, teacher: {teacher}}}]}}]")
    assert "unknown parameter 'teacher.params.conv_filterz'" in message
    message = refused(tmp_path, "variants=[{name: kd, compress: [{method: distill, teacher: " + str(tmp_path / "none") + "}]}]")
    assert "is not a variant file, variant folder or run folder" in message


def test_resolve_types_the_model_and_steps_once(tmp_path):
    recipe, feat = load_recipe(write_recipe(tmp_path), ["variants=[{name: a, compress: [{method: float16}]}]"])
    plan = resolve(recipe, feat, "r.yaml")
    assert (plan.spec.family, plan.spec.input_shape, plan.spec.n_classes) == ("dcase2020_baseline", (1, 40, 501), 3)
    assert plan.spec.params.conv_filters == [32, 64]  # typed knobs with the family's defaults
    assert [(v.name, v.label, [s.method for s in v.steps]) for v in plan.variants] == [("a", "Lastname_INST_task1b_1", ["float16"])]
    assert plan.spec.build().eval()(torch.zeros(1, 1, 40, 501)).shape == (1, 3)
