"""Plots: every run gets its PNG and SVG files; the pictures hold what they claim (axes, limit, points)."""

from __future__ import annotations

import json

import pytest

from dcase_effdl.cli import main
from dcase_effdl.errors import UserError
from dcase_effdl.reporting.plots import plot_accuracy_vs_size, plot_confusion_matrix, write_run_plots
from dcase_effdl.rundir import RunDir
from fake_run import make_dataset, make_run


@pytest.fixture
def runs(tmp_path):
    ds = tmp_path / "data"
    make_dataset(ds)
    a = make_run(tmp_path / "runs" / "baseline", ds)
    b = make_run(tmp_path / "runs" / "small", ds, n_params=40_000, seed=1, epochs=4)
    return a, b


def _png_size(path):
    import matplotlib.image

    return matplotlib.image.imread(path).shape


def test_run_plots_are_written(runs):
    run = runs[0]
    paths = write_run_plots(run)
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{stem}.{ext}" for stem in ("training_curves", "confusion_float32", "confusion_float16",
                                                        "accuracy_vs_size") for ext in ("png", "svg"))
    for p in paths:
        assert p.parent == run / "plots" and p.stat().st_size > 5_000
    h, w, _ = _png_size(run / "plots" / "accuracy_vs_size.png")
    assert w > 1000 and h > 600  # readable, not a thumbnail
    svg = (run / "plots" / "accuracy_vs_size.svg").read_text()
    # The log axis, the limit and both kinds of rows are on the picture (labels stay text in the SVG).
    for text in ("500 KB limit", "log scale", "published (DCASE 2020 Task 1B)", "own: float32", "Koutini_2", "baseline"):
        assert text in svg, text
    confusion = (run / "plots" / "confusion_float32.svg").read_text()
    metrics = json.loads((run / "float32" / "metrics.json").read_text())
    assert f"macro accuracy {metrics['accuracy']:.1f} %" in confusion
    assert "best epoch 6" in (run / "plots" / "training_curves.svg").read_text()


def test_accuracy_vs_size_marks_rows_over_the_limit(tmp_path):
    rows = [
        {"label": "Doe_UNI_task1b_1", "accuracy": 90.0, "size_kb": 450.07, "origin": "own", "variant": "a"},
        {"label": "Doe_UNI_task1b_2", "accuracy": 91.0, "size_kb": 900.0, "origin": "own", "variant": "b", "over_limit": True},
        {"label": "Somebody_X_task1b_1", "accuracy": None, "size_kb": 20.0, "origin": "published"},  # cannot be placed
    ]
    paths = plot_accuracy_vs_size(rows, tmp_path / "acc", limit_kb=500.0)
    svg = paths[1].read_text()
    assert "own: a" in svg and "own: b" in svg and "Somebody_1" not in svg
    with pytest.raises(UserError, match="no row has both an accuracy and a size"):
        plot_accuracy_vs_size(rows[2:], tmp_path / "none")


def test_history_without_validation_data(tmp_path):
    """A run without validation clips writes NaN (as JSON NaN): the curves leave it out and say so."""
    from dcase_effdl.reporting.plots import plot_training_curves

    run = RunDir(tmp_path)
    run.history_path.parent.mkdir()
    run.history_path.write_text('{"best_epoch": 1, "epochs": [{"epoch": 1, "train_loss": 1.1, "val_loss": NaN, "val_accuracy": NaN},'
                                ' {"epoch": 2, "train_loss": 0.9, "val_loss": NaN, "val_accuracy": NaN}]}')
    paths = plot_training_curves({"run": run.history()}, tmp_path / "curves")
    svg = paths[1].read_text()
    assert "no validation data" in svg and "train loss" in svg and "nan" not in svg.lower().replace("nanometer", "")


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="confusion_matrix"):
        plot_confusion_matrix({"classes": ["a", "b"], "confusion_matrix": [[1, 2]]}, tmp_path / "cm")
    run = RunDir(tmp_path)
    run.history_path.parent.mkdir()
    run.history_path.write_text("{not json")
    with pytest.raises(UserError, match=r"history\.json: not valid JSON"):  # the one JSON reader's message
        run.history()
    run.history_path.write_text(json.dumps({"epochs": [{"loss": 1}]}))
    with pytest.raises(UserError, match="expected a list of epoch records"):
        run.history()


def test_plot_command_compares_runs(runs, tmp_path, capsys):
    out = tmp_path / "compare"
    assert main(["plot", *map(str, runs), "--out", str(out)]) == 0
    assert "wrote 12 files" in capsys.readouterr().out
    svg = (out / "accuracy_vs_size.svg").read_text()
    assert "own: baseline/float32" in svg and "own: small/float16" in svg
    curves = (out / "training_curves.svg").read_text()
    assert "baseline: validation" in curves and "small: validation" in curves
    assert (out / "confusion_small_float16.png").is_file()
