"""A recipe is resolved and checked before any work: bad values fail in one line and write nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcase_effdl.compress import load_variant
from dcase_effdl.config import SAFE_NAME, load_recipe
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
    assert [[s.method for s in steps] for steps in plan.steps] == [["float16"]]
    assert plan.spec.build().eval()(torch.zeros(1, 1, 40, 501)).shape == (1, 3)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "train.epochs must be >= 1, got 0"),  # B2: exited 0 with untrained variants
    ("train.epochs=-3", "train.epochs must be >= 1, got -3"),
    ("train.lr=-1", "train.lr must be a finite number > 0, got -1.0"),  # B3: tracebacks after extraction
    ("train.weight_decay=-1", "train.weight_decay must be >= 0, got -1.0"),
    ("seed=-5", "seed must be >= 0, got -5"),
    ("train.threads=-1", "train.threads must be >= 0"),
    ("train.num_workers=-2", "train.num_workers must be >= 0"),
    ("train.batch_size=0", "train.batch_size must be >= 2 (batch norm needs two examples), got 0"),  # Poor
    ("train.mixup_alpha=-1", "train.mixup_alpha must be >= 0, got -1.0"),
    ("train.label_smoothing=1", "train.label_smoothing must be in [0, 1), got 1.0"),
    ("dataset.validation_fraction=1.5", "dataset.validation_fraction must be in [0, 1), got 1.5"),
    ("train.restart_mult=0.5", "train.restart_mult must be >= 1"),
    ("train.swa={start_epoch: 5}", "train.swa.start_epoch must be <= train.epochs (1), got 5"),
    ("train.spec_augment={freq_mask: -1}", "train.spec_augment.freq_mask must be >= 0, got -1"),
    ("train.time_crop=600", "train.time_crop = 600 frames, but the features have 501 frames"),
    ("train.time_roll=900", "train.time_roll = 900 is more than the 501 frames"),
    ("train.spec_augment={freq_mask: 60}", "train.spec_augment.freq_mask = 60 is more than the 40 mel bands"),
    ("train.channel_swap=true", "train.channel_swap needs stereo features"),
    ("train.time_crop=100", "train.time_crop = 100 frames: this model cannot take 100-frame inputs"),
    ("train.device=gpu", "train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("size_policy=dcase2099", "unknown size policy 'dcase2099'"),
])
def test_bad_values_fail_before_any_work(tmp_path, override, message):
    assert message in refused(tmp_path, override)


def test_mixup_with_a_hard_label_step_loss_fails_in_the_dry_run(tmp_path):
    step = "{method: distill, teacher: {model: dcase2020_baseline, epochs: 1}}"
    message = refused(tmp_path, "train.mixup_alpha=0.2", f"variants=[{{name: kd, compress: [{step}]}}]")
    assert "variants[0].compress[0]: train.mixup_alpha = 0.2 needs a loss that takes soft (mixed) labels" in message


@pytest.mark.parametrize("override, key", [
    ("name=../../escaped_run", "name"),  # S4: created a folder two levels up
    ("variants=[{name: ../../x, compress: []}]", "variants[0].name"),  # S4: wrote a variant outside the run
    ("variants=[{name: a, label: ../../x}]", "variants[0].label"),
    ("submission.lastname=../../../x/Evil", "submission.lastname"),  # S4: wrote an output.csv outside
    ("submission.lastname=<script>alert(2)</script>", "submission.lastname"),
    ("submission.institute=..", "submission.institute"),
    ("submission.lastname=Lopez_Meyer", "variants[0].label defaults to 'Lopez_Meyer_INST_task1b_1'"),
])
def test_names_that_become_paths_are_checked_at_load(tmp_path, override, key):
    message = refused(tmp_path, override)
    assert f"r.yaml: {key}" in message
    assert not (tmp_path.parent / "escaped_run").exists() and not (tmp_path.parent / "x").exists()


def test_cli_refuses_a_path_name_in_one_line_and_writes_nothing(tmp_path):
    path = write_recipe(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "dcase_effdl", "run", str(path), "--set", "name=../../x"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: name must be {SAFE_NAME}, got '../../x'"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"] and not (tmp_path.parent / "x").exists()


DIGITS = """\
name: d
features: {features}
dataset: {{kind: digits}}
model: {{name: digits_cnn, params: {{channels: [4, 8], hidden: 8}}}}
train: {{epochs: 1, batch_size: 64, device: cpu, threads: 1}}
variants:
  - {{name: float32, compress: []}}
  - {{name: float16, compress: [{{method: float16}}]}}
"""


@pytest.mark.slow  # a whole run on digits, ~20 s
def test_size_policy_reaches_the_step_log_and_the_variant_history(tmp_path, capsys):
    path = tmp_path / "d.yaml"
    path.write_text(DIGITS.format(features=REPO / "features" / "dcase2020_baseline.yaml"))
    run_dir = run(path, out=str(tmp_path / "run"), overrides=["size_policy=dcase2024"])
    logged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[float16] float16: ")]
    assert len(logged) == 1 and logged[0].endswith(", dcase2024)"), logged
    history = load_variant(run_dir / "float16" / "model.safetensors").history
    assert [h["policy"] for h in history] == ["dcase2024"]
