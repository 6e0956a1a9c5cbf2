"""Leaderboard rows from a fake run folder: values, ranking, CSV, the printed table, bad files."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from dcase_effdl.errors import UserError
from dcase_effdl.reporting.leaderboard import COLUMNS, format_table, rank_rows, row_from_variant, rows_from_run, write_leaderboard_csv

LIMIT = 512_000  # 500 KB


def _variant(run, name, label, accuracy, log_loss, n_params, n_nonzero, size_bytes, management, limit=LIMIT):
    d = run / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "log_loss": log_loss, "plain_accuracy": accuracy}))
    size = {
        "n_params": n_params, "n_nonzero": n_nonzero, "size_bytes": size_bytes, "size_kb": size_bytes / 1024,
        "policy": "dcase2020", "complexity_management": management, "limit_bytes": limit,
    }
    (d / "size.json").write_text(json.dumps(size))
    if label:
        (d / f"{label}.meta.yaml").write_text("submission: {}\n")
        (d / f"{label}.output.csv").write_text("filename\tscene_label\ta\n")


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "baseline_run"
    run.mkdir()
    # Numbers from DCASE.md: baseline 115,219 float32 values; Koutini 247,562 non-zero float16 values.
    _variant(run, "float32", "Lastname_INST_task1b_1", 87.3, 0.437, 115_219, 115_219, 460_876, "")
    _variant(run, "pruned_fp16", "Lastname_INST_task1b_2", 91.66, 0.2345, 345_000, 247_562, 495_124, "pruning + float16")
    _variant(run, "big", None, 93.0, 0.2, 200_000, 200_000, 800_000, "")
    (run / "train").mkdir()  # no metrics.json: not a variant
    # config.yaml is read strictly as a recipe: it needs the recipe's required key 'name'.
    variants = [{"name": "float32"}, {"name": "pruned_fp16"}, {"name": "big"}, {"name": "unfinished"}]
    (run / "config.yaml").write_text(yaml.safe_dump({"name": "baseline_run", "variants": variants}))
    return run


def test_row_from_variant(run):
    row = row_from_variant(run, "pruned_fp16")
    assert row["label"] == "Lastname_INST_task1b_2"
    assert row["run"] == "baseline_run" and row["variant"] == "pruned_fp16"
    assert row["accuracy"] == 91.66 and row["log_loss"] == 0.2345
    assert row["n_params"] == 345_000 and row["n_nonzero"] == 247_562
    assert row["sparsity"] == pytest.approx(97_438 / 345_000)  # a fraction (0.2824), as the official table prints it
    assert row["size_kb"] == pytest.approx(483.52, abs=0.005)
    assert row["complexity_management"] == "pruning + float16"
    assert row["over_limit"] is False and row["limit_bytes"] == LIMIT and row["policy"] == "dcase2020"
    big = row_from_variant(run, "big")
    assert big["over_limit"] is True and big["label"] is None


def test_rows_are_ranked_by_accuracy(run):
    rows = rows_from_run(run)
    assert [r["variant"] for r in rows] == ["big", "pruned_fp16", "float32"]
    assert [r["rank"] for r in rows] == [1, 2, 3]


def test_equal_accuracies_share_a_rank_as_in_the_official_table():
    rows = [{"label": label, "accuracy": acc, "size_kb": 1.0} for label, acc in
            [("B_X_task1b_1", 95.8), ("A_X_task1b_1", 95.8), ("C_X_task1b_1", 96.5), ("D_X_task1b_1", None), ("E_X_task1b_1", 95.7)]]
    ranked = rank_rows(rows)
    assert [(r["label"][0], r["rank"]) for r in ranked] == [("C", 1), ("A", 2), ("B", 2), ("E", 3), ("D", None)]


def test_csv(run, tmp_path):
    path = write_leaderboard_csv(run / "leaderboard.csv", rows_from_run(run))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == [header for _, header in COLUMNS]
        rows = list(reader)
    assert len(rows) == 3
    baseline = rows[2]
    assert baseline["Submission label"] == "Lastname_INST_task1b_1"
    assert baseline["Accuracy (%)"] == "87.30" and baseline["Logloss"] == "0.4370"
    assert baseline["Parameters"] == "115219" and baseline["Size (KB)"] == "450.07"
    assert baseline["Sparsity"] == "0.0000" and baseline["Over limit"] == "False"
    assert rows[0]["Submission label"] == "" and rows[0]["Over limit"] == "True"
    with pytest.raises(UserError, match="without rows"):
        write_leaderboard_csv(tmp_path / "empty.csv", [])


def test_format_table(run):
    text = format_table(rows_from_run(run))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["Rank", "Submission", "label"]
    assert set(lines[1]) == {"-", " "}
    first, second, third = lines[2:5]
    assert first.split()[:2] == ["1", "-"]  # no label
    assert "800,000" not in first and "200,000" in first and "781.25 *" in first
    assert "Lastname_INST_task1b_2" in second and "91.7" in second and "0.234" in second and "0.282" in second
    assert "247,562" in second and "483.52" in second and "pruning + float16" in second
    assert "Lastname_INST_task1b_1" in third and "87.3" in third and "0.437" in third and "115,219" in third
    assert "450.07" in third and "*" not in third
    assert lines[-1] == "* over the size limit (dcase2020: 500.00 KB)"
    # Numbers are right-aligned: the size column ends at the same place in every row.
    size_positions = {line.index(s) + len(s) for line, s in ((first, "781.25"), (second, "483.52"), (third, "450.07"))}
    assert len(size_positions) == 1


def test_without_config_uses_folder_order(run):
    (run / "config.yaml").unlink()
    assert {r["variant"] for r in rows_from_run(run)} == {"float32", "pruned_fp16", "big"}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "size.json").unlink(), "size.json: file not found"),
        (lambda d: (d / "metrics.json").write_text("{broken"), "metrics.json: not valid JSON"),
        (lambda d: (d / "size.json").write_text('{"n_params": 3}'), "size.json: missing key 'n_nonzero'"),
        (lambda d: (d / "metrics.json").write_text("[1, 2]"), "expected a JSON object"),
    ],
)
def test_bad_files_are_user_errors(run, mutate, message):
    mutate(run / "float32")
    with pytest.raises(UserError, match=message):
        rows_from_run(run)


def test_empty_run(tmp_path):
    with pytest.raises(UserError, match="no finished variant"):
        rows_from_run(tmp_path)
    with pytest.raises(UserError, match="run folder not found"):
        rows_from_run(tmp_path / "missing")
