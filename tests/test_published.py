"""Published 2020 Task 1B rows: the numbers on file, the size rule they obey, merging with own rows, formats."""

from __future__ import annotations

import csv
import io

import pytest

from dcase_effdl.cli import main
from dcase_effdl.errors import UserError
from dcase_effdl.reporting.published import format_leaderboard, load_published, merged_rows, published_rows
from fake_run import make_dataset, make_run


def _by_label(rows):
    return {r["label"]: r for r in rows}


def test_baseline_and_golden_rows():
    rows = _by_label(load_published())
    base = rows["DCASE2020_baseline"]
    assert (base["dev_accuracy"], base["eval_accuracy"], base["dev_logloss"]) == (87.3, 89.5, 0.437)
    assert base["n_params"] == 115_219 and base["size_kb"] == 450.07
    # Every size on file obeys the 2020 rule where the stored type is known (KB = 1024 B).
    assert base["n_nonzero"] * 32 / 8 / 1024 == pytest.approx(base["size_kb"], abs=0.005)
    assert rows["Koutini_CPJKU_task1b_2"]["n_nonzero"] * 16 / 8 / 1024 == pytest.approx(483.52, abs=0.005)
    assert rows["McDonnell_USA_task1b_3"]["n_nonzero"] / 8 / 1024 == pytest.approx(486.69, abs=0.005)
    assert rows["Koutini_CPJKU_task1b_2"]["eval_accuracy"] == 96.5  # the 2020 winner (challenge paper: 96.5 %)
    assert rows["Chang_QTI_task1b_1"]["official_rank"] == 12


def test_verified_top_system_rows():
    rows = _by_label(load_published())
    # Koutini_CPJKU_task1b_2, the team's notebook count: 265,728 float16 weights (BN and prune masks excluded),
    # 247,562 non-zero -> 483.52 KB, 6.84 % sparse; 96.5 % eval / 97.3 % dev (README).
    k2 = rows["Koutini_CPJKU_task1b_2"]
    assert (k2["n_params"], k2["n_nonzero"], k2["size_kb"]) == (265_728, 247_562, 483.52)
    assert (k2["eval_accuracy"], k2["dev_accuracy"]) == (96.5, 97.3)
    # Koutini_CPJKU_task1b_1: 17,520 float16 (the README's 34.21875 KB exactly), 94.7 % eval.
    k1 = rows["Koutini_CPJKU_task1b_1"]
    assert k1["n_nonzero"] == 17_520 and k1["eval_accuracy"] == 94.7
    assert k1["n_nonzero"] * 16 / 8 / 1024 == pytest.approx(34.21875) and k1["size_kb"] == 34.22
    # Koutini_CPJKU_task1b_3: only the README's trainable-parameter count; its rule size is not verified.
    k3 = rows["Koutini_CPJKU_task1b_3"]
    assert k3["n_params"] == 247_316 and k3["n_nonzero"] is None and k3["size_kb"] is None
    # McDonnell's +-1 weights: none is zero.
    mcd = rows["McDonnell_USA_task1b_3"]
    assert mcd["n_params"] == mcd["n_nonzero"] == 3_987_000
    # Every size on file obeys the 2020 rule for the row's stored type (bits per non-zero parameter).
    bits = {"DCASE2020_baseline": 32, "Koutini_CPJKU_task1b_1": 16, "Koutini_CPJKU_task1b_2": 16,
            "McDonnell_USA_task1b_3": 1}
    for label, b in bits.items():
        assert rows[label]["n_nonzero"] * b / 8 / 1024 == pytest.approx(rows[label]["size_kb"], abs=0.005), label
    # No official rank 1-11 is on file (not verified); the best eval accuracy on file is the winner's 96.5 %.
    assert all(r["official_rank"] is None or r["official_rank"] >= 12 for r in rows.values())
    assert max(r["eval_accuracy"] for r in rows.values() if r["eval_accuracy"] is not None) == 96.5


def test_file_is_consistent():
    rows = load_published()
    assert len(rows) >= 11
    labels = [r["label"] for r in rows]
    assert len(set(labels)) == len(labels)
    for r in rows:
        assert r["source"], r["label"]  # every row names where its numbers come from
        for key in ("eval_accuracy", "dev_accuracy"):
            assert r[key] is None or 50 <= r[key] <= 100
        if r["n_params"] is not None and r["n_nonzero"] is not None:
            assert r["n_nonzero"] <= r["n_params"]
        if r["size_kb"] is not None:
            assert r["size_kb"] <= 500  # every published system respected the limit


def test_published_rows_choose_the_accuracy_set():
    ev = _by_label(published_rows(accuracy="eval"))
    dev = _by_label(published_rows(accuracy="dev"))
    assert ev["DCASE2020_baseline"]["accuracy"] == 89.5 and ev["DCASE2020_baseline"]["set"] == "eval"
    assert dev["DCASE2020_baseline"]["accuracy"] == 87.3 and dev["DCASE2020_baseline"]["log_loss"] == 0.437
    assert ev["McDonnell_USA_task1b_3"]["accuracy"] is None and ev["McDonnell_USA_task1b_3"]["set"] is None
    far = ev["Farrugia_IMT-Atlantique-BRAIn_task1b_3"]
    assert far["sparsity"] == pytest.approx(100 * (398_400 - 130_730) / 398_400)
    assert all(r["origin"] == "published" and not r["over_limit"] for r in ev.values())
    with pytest.raises(UserError, match="unknown published leaderboard"):
        published_rows("dcase2031")


@pytest.fixture
def run(tmp_path):
    ds = tmp_path / "data"
    make_dataset(ds)
    variants = [("float32", 32, 1.0, "", 2.0), ("wide", 32, 1.0, "", 3.5)]
    return make_run(tmp_path / "runs" / "wide", ds, n_params=140_000, variants=variants)  # 140,000 x 4 B > 500 KB


def test_merged_ranking_and_marks(run):
    rows = merged_rows([run], "dcase2020_task1b")
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    accs = [r["accuracy"] for r in rows if r["accuracy"] is not None]
    assert accs == sorted(accs, reverse=True)
    assert rows[-1]["accuracy"] is None  # rows without accuracy go last
    own = [r for r in rows if r["origin"] == "own"]
    assert {r["label"] for r in own} == {"Lastname_INST_task1b_1", "Lastname_INST_task1b_2"}
    assert all(r["over_limit"] for r in own)  # 546.88 KB
    md = format_leaderboard(rows, "md")
    assert md.splitlines()[0].startswith("| Rank | Submission label | Technical report | Official system rank | Accuracy (%) | Logloss | Parameters")
    assert "| **Lastname_INST_task1b_2** |" in md and "546.88 *" in md and "over the size limit (dcase2020: 500.00 KB)" in md
    line = next(x for x in md.splitlines() if "DCASE2020_baseline" in x)
    assert "| 89.5 |" in line and "| 450.07 |" in line and "| published | eval |" in line


def test_csv_and_html_formats(run):
    rows = merged_rows([run], "dcase2020_task1b")
    table = list(csv.DictReader(io.StringIO(format_leaderboard(rows, "csv"))))
    assert len(table) == len(rows)
    koutini = next(r for r in table if r["Submission label"] == "Koutini_CPJKU_task1b_2")
    assert koutini["Size (KB)"] == "483.52" and koutini["Origin"] == "published" and koutini["Over limit"] == "False"
    assert (koutini["Parameters"], koutini["Non-zero parameters"], koutini["Sparsity (%)"]) == ("265728", "247562", "6.84")
    k3 = next(r for r in table if r["Submission label"] == "Koutini_CPJKU_task1b_3")
    assert k3["Non-zero parameters"] == "" and k3["Size (KB)"] == ""  # not verified: empty, never 0
    html = format_leaderboard(rows, "html")
    assert html.count('<tr class="own over-limit">') == 2 and "<th>Complexity management</th>" in html
    with pytest.raises(UserError, match="unknown format"):
        format_leaderboard(rows, "xlsx")


def test_cli_leaderboard(run, capsys):
    assert main(["leaderboard", str(run), "--published", "dcase2020_task1b", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "Koutini_CPJKU_task1b_2" in out and "Lastname_INST_task1b_1" in out
    assert main(["leaderboard", str(run), "--format", "csv"]) == 0
    assert "Koutini" not in capsys.readouterr().out  # own rows only without --published
    assert main(["leaderboard"]) == 2
    assert "no rows" in capsys.readouterr().err
