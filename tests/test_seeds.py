"""Seeds as an option: run-folder naming, argument checks, mean +- std per variant, the spread CSV and table."""

from __future__ import annotations

import csv
import math

import pytest

from dcase_effdl.errors import UserError
from dcase_effdl.rundir import VariantDir, write_json
from dcase_effdl.seeds import aggregate, check_seeds, format_spread, mean_std, seed_run_dir, spread_csv_path, write_spread_csv
from fake_run import make_dataset, make_run

# Per seed: (float32 accuracy, float32 log loss, float16 accuracy, float16 log loss). Chosen so the
# spread is exact in decimal: float32 80/82/84 -> mean 82, std 2; log loss 0.5/0.6/0.7 -> 0.6, 0.1.
SEED_METRICS = {0: (80.0, 0.5, 79.0, 0.55), 1: (82.0, 0.6, 81.0, 0.65), 2: (84.0, 0.7, 80.0, 0.60)}


def _set_metrics(variant_dir, accuracy, log_loss):
    """The fake run's metrics with chosen overall accuracy and log loss, through the run folder's own reader and writer."""
    variant = VariantDir(variant_dir)
    write_json(variant.metrics_path, {**variant.metrics(), "accuracy": accuracy, "log_loss": log_loss})


@pytest.fixture
def seed_runs(tmp_path):
    data = tmp_path / "data"
    make_dataset(data)
    base = tmp_path / "runs" / "quickstart"
    dirs = {}
    for seed, (a32, l32, a16, l16) in SEED_METRICS.items():
        d = make_run(seed_run_dir(base, seed), data, seed=seed)
        _set_metrics(d / "float32", a32, l32)
        _set_metrics(d / "float16", a16, l16)
        dirs[seed] = d
    return base, dirs


def test_seed_folders_sit_beside_the_single_seed_run_folder(tmp_path):
    assert seed_run_dir(tmp_path / "runs" / "quickstart", 3) == tmp_path / "runs" / "quickstart-seed3"
    assert spread_csv_path(tmp_path / "runs" / "quickstart") == tmp_path / "runs" / "quickstart-seeds.csv"


def test_mean_and_sample_std():
    assert mean_std([80.0, 82.0, 84.0]) == (82.0, 2.0)
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3), rel=1e-15)  # n - 1, not n
    mean, std = mean_std([71.1])
    assert mean == 71.1 and math.isnan(std)


def test_seed_arguments_are_checked():
    assert check_seeds([3, 0, 1]) == [3, 0, 1]
    with pytest.raises(UserError, match="seed 1 given twice"):
        check_seeds([0, 1, 1])
    with pytest.raises(UserError, match="at least one seed"):
        check_seeds([])
    with pytest.raises(UserError, match="drop --set seed="):
        check_seeds([0, 1], ["train.epochs=2", "seed=4"])
    assert check_seeds([0], ["dataset.synthetic.seed=4"]) == [0]  # the data seed is not the training seed


def test_aggregate_gives_exact_mean_and_std_per_variant(seed_runs):
    _, dirs = seed_runs
    rows = aggregate(dirs)
    assert [r["variant"] for r in rows] == ["float32", "float16"]  # ranked by mean accuracy
    f32, f16 = rows
    assert f32["rank"] == 1 and f16["rank"] == 2
    assert f32["n_seeds"] == 3 and f32["seeds"] == [0, 1, 2]
    assert f32["accuracies"] == [80.0, 82.0, 84.0]
    assert f32["accuracy_mean"] == 82.0 and f32["accuracy_std"] == 2.0
    assert f32["log_loss_mean"] == pytest.approx(0.6, abs=1e-15) and f32["log_loss_std"] == pytest.approx(0.1, abs=1e-15)
    assert f16["accuracy_mean"] == 80.0 and f16["accuracy_std"] == 1.0
    assert f16["log_loss_mean"] == pytest.approx(0.6, abs=1e-15) and f16["log_loss_std"] == pytest.approx(0.05, abs=1e-15)
    # Size does not depend on the seed here: 115,219 values of 32 and 16 bits.
    assert f32["size_kb_mean"] == pytest.approx(115_219 * 4 / 1024) and f32["size_kb_std"] == 0.0
    assert f16["size_kb_mean"] == pytest.approx(115_219 * 2 / 1024) and f16["size_kb_std"] == 0.0
    assert f32["label"] == "Lastname_INST_task1b_1" and f16["complexity_management"] == "float16"
    assert f32["n_params"] == 115_219


def test_spread_csv_and_printed_lines(seed_runs, tmp_path):
    base, dirs = seed_runs
    rows = aggregate(dirs)
    path = write_spread_csv(spread_csv_path(base), rows)
    table = list(csv.DictReader(path.open()))
    assert len(table) == 2
    first = table[0]
    assert first["Variant"] == "float32" and first["Submission label"] == "Lastname_INST_task1b_1"
    assert (first["Accuracy mean (%)"], first["Accuracy std (pp)"]) == ("82.00", "2.00")
    assert (first["Logloss mean"], first["Logloss std"]) == ("0.6000", "0.1000")
    assert (first["Size mean (KB)"], first["Size std (KB)"]) == ("450.07", "0.00")
    assert (first["Seeds (n)"], first["Seeds"], first["Accuracy per seed (%)"]) == ("3", "0 1 2", "80.00 82.00 84.00")
    text = format_spread(rows)
    assert text.splitlines()[0] == (
        "float32  macro accuracy 82.0 +- 2.0 %  log loss 0.600 +- 0.100  size 450.07 +- 0.00 KB  "
        "(3 seeds: 0 1 2; per seed 80.0 82.0 84.0)"
    )
    # One seed: no spread to speak of; the std cell stays empty rather than printing 0.
    single = aggregate({0: dirs[0]})
    write_spread_csv(tmp_path / "one.csv", single)
    assert list(csv.DictReader((tmp_path / "one.csv").open()))[0]["Accuracy std (pp)"] == ""
    assert "80.0 +- - %" in format_spread(single)


def test_a_variant_missing_from_one_seed_is_an_error(seed_runs):
    _, dirs = seed_runs
    (dirs[1] / "float16" / "metrics.json").unlink()  # seed 1 never finished float16
    with pytest.raises(UserError, match=r"quickstart-seed1: variant 'float16' is not in every seed's run folder"):
        aggregate(dirs)
