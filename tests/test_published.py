"""Published 2020 Task 1B rows: the official top ten as printed, the verified extra rows, merging with own rows, formats."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from dcase_effdl.cli import main
from dcase_effdl.errors import UserError
from dcase_effdl.reporting.leaderboard import rank_rows
from dcase_effdl.reporting.published import format_leaderboard, load_published, merged_rows, published_rows
from dcase_effdl.rundir import VariantDir
from fake_run import make_dataset, make_run


def _by_label(rows):
    return {r["label"]: r for r in rows}


# ../shared/DCASE.md, "The official 2020 Task 1B ranking, top ten", copied as printed there.
OFFICIAL_TOP_TEN = """
| 1 | Koutini_CPJKU_task1b_2 | 1 | 96.5 % | 0.101 | 345k | 247k | 0.284 | 483.5 | pruning float16 |
| 2 | Koutini_CPJKU_task1b_4 | 2 | 96.2 % | 0.105 | 556k | 249k | 0.552 | 487.1 | float16 smaller width/depth |
| 3 | Hu_GT_task1b_3 | 3 | 96.0 % | 0.122 | 122k | 122k | 0 | 490.0 | int8 quantization |
| 4 | McDonnell_USA_task1b_3 | 4 | 95.9 % | 0.117 | 3M | 3M | 0 | 486.7 | 1-bit quantization |
| 5 | Hu_GT_task1b_1 | 7 | 95.8 % | 0.357 | 94k | 94k | 0 | 375.0 | int8 quantization |
| 5 | Hu_GT_task1b_4 | 5 | 95.8 % | 0.131 | 125k | 125k | 0 | 499.0 | int8 quantization |
| 5 | McDonnell_USA_task1b_4 | 6 | 95.8 % | 0.119 | 3M | 3M | 0 | 486.7 | 1-bit quantization |
| 6 | Koutini_CPJKU_task1b_3 | 8 | 95.7 % | 0.113 | 242k | 242k | 0 | 473.8 | float16 smaller width/depth |
| 7 | Hu_GT_task1b_2 | 10 | 95.5 % | 0.367 | 122k | 122k | 0 | 490.0 | int8 quantization |
| 7 | McDonnell_USA_task1b_2 | 9 | 95.5 % | 0.118 | 3M | 3M | 0 | 486.7 | 1-bit quantization |
"""
DCASE_MD = Path(__file__).resolve().parents[1].parent / "shared" / "DCASE.md"


def _table(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.strip().splitlines()]


def test_the_ten_official_rows_are_on_file_as_printed():
    rows = load_published()[:10]
    stored = [[str(r["rank"]), r["label"], str(r["official_rank"]), r["printed"]["eval_accuracy"] + " %",
               r["printed"]["eval_logloss"], r["printed"]["n_params"], r["printed"]["n_nonzero"], r["printed"]["sparsity"],
               r["printed"]["size_kb"], r["complexity_management"]] for r in rows]
    assert stored == _table(OFFICIAL_TOP_TEN)
    k2 = rows[0]
    assert (k2["n_params"], k2["n_nonzero"], k2["sparsity"], k2["size_kb"]) == (345_000, 247_000, 0.284, 483.5)
    assert k2["rounded"] == ["n_params", "n_nonzero"]  # printed '345k', '247k': marked rounded
    assert all(r["rounded"] == ["n_params", "n_nonzero"] and r["source"].startswith("top10") for r in rows)
    mcd = _by_label(rows)["McDonnell_USA_task1b_3"]
    assert (mcd["n_params"], mcd["size_kb"]) == (3_000_000, 486.7)  # 3,987,000 printed '3M'


def test_the_official_rows_match_dcase_md():
    if not DCASE_MD.is_file():
        pytest.skip(f"{DCASE_MD} not available")
    text = DCASE_MD.read_text(encoding="utf-8")
    section = text[text.index("## The official 2020 Task 1B ranking, top ten"):]
    lines = [x for x in section.splitlines() if x.startswith("| ") and "_task1b_" in x][:10]
    assert _table("\n".join(lines)) == _table(OFFICIAL_TOP_TEN)


def test_official_sparsity_is_the_fraction_of_the_printed_counts():
    for r in load_published()[:10]:
        assert r["sparsity"] == round(1 - r["n_nonzero"] / r["n_params"], 3), r["label"]  # 1 - 247k/345k = 0.284


def test_extra_rows_keep_their_sources():
    rows = _by_label(load_published())
    base = rows["DCASE2020_baseline"]
    assert (base["dev_accuracy"], base["eval_accuracy"], base["dev_logloss"]) == (87.3, 89.5, 0.437)
    assert base["n_params"] == 115_219 and base["size_kb"] == 450.07 and base["source"] == "baseline"
    assert base["n_nonzero"] * 32 / 8 / 1024 == pytest.approx(base["size_kb"], abs=0.005)  # the 2020 rule, KB = 1024 B
    # Koutini_CPJKU_task1b_1: 17,520 float16 (the README's 34.21875 KB exactly), 94.7 % eval.
    k1 = rows["Koutini_CPJKU_task1b_1"]
    assert k1["n_nonzero"] == 17_520 and k1["eval_accuracy"] == 94.7 and k1["rounded"] == []
    assert k1["n_nonzero"] * 16 / 8 / 1024 == pytest.approx(34.21875) and k1["size_kb"] == 34.22
    assert rows["Chang_QTI_task1b_1"]["official_rank"] == 12 and rows["Chang_QTI_task1b_1"]["rank"] is None
    # Koutini_CPJKU_task1b_3: the README's 97.3 % / 96.5 % repeat submission 2's line; only the official 95.7 % is on file.
    k3 = rows["Koutini_CPJKU_task1b_3"]
    assert (k3["eval_accuracy"], k3["dev_accuracy"]) == (95.7, None)


def test_dense_accuracy_ranking_gives_the_official_rank_column():
    ranked = rank_rows(published_rows())
    top = [r for r in ranked if r["published_rank"] is not None]
    assert [r["label"] for r in top] == [row[1] for row in _table(OFFICIAL_TOP_TEN)]  # the official order, ties by label
    assert [r["rank"] for r in top] == [r["published_rank"] for r in top] == [1, 2, 3, 4, 5, 5, 5, 6, 7, 7]
    assert [r["rank"] for r in ranked[:11]] == [1, 2, 3, 4, 5, 5, 5, 6, 7, 7, 8]  # Chang_QTI_task1b_1 (95.0 %) next


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
    assert ev["DCASE2020_baseline"]["accuracy"] == 89.5 and ev["DCASE2020_baseline"]["set"] == "evaluation set"
    assert dev["DCASE2020_baseline"]["accuracy"] == 87.3 and dev["DCASE2020_baseline"]["log_loss"] == 0.437
    assert dev["DCASE2020_baseline"]["set"] == "development set"
    # No development result of McDonnell's is on file: the dev ranking falls back to the evaluation set and says so.
    assert dev["McDonnell_USA_task1b_3"]["accuracy"] == 95.9 and dev["McDonnell_USA_task1b_3"]["set"] == "evaluation set"
    far = ev["Farrugia_IMT-Atlantique-BRAIn_task1b_3"]
    assert far["sparsity"] == pytest.approx((398_400 - 130_730) / 398_400)  # a fraction, as the official table prints it
    assert ev["Koutini_CPJKU_task1b_2"]["sparsity"] == 0.284 and ev["Koutini_CPJKU_task1b_2"]["printed"]["n_params"] == "345k"
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
    accs = [r["accuracy"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    ranks = [r["rank"] for r in rows]
    assert ranks[0] == 1 and all(b == a + (x != y) for a, b, x, y in zip(ranks, ranks[1:], accs, accs[1:]))  # ties share
    own = [r for r in rows if r["origin"] == "own"]
    assert {r["label"] for r in own} == {"Lastname_INST_task1b_1", "Lastname_INST_task1b_2"}
    assert all(r["over_limit"] for r in own)  # 546.88 KB
    md = format_leaderboard(rows, "md")
    assert md.splitlines()[0].startswith("| Rank | Submission label | Technical report | Official system rank | Accuracy (%) | Logloss | Parameters")
    assert "| **Lastname_INST_task1b_2** |" in md and "546.88 *" in md and "over the size limit (dcase2020: 500.00 KB)" in md
    line = next(x for x in md.splitlines() if "DCASE2020_baseline" in x)
    assert "| 89.5 |" in line and "| 450.07 |" in line and "| published | evaluation set |" in line
    own_line = next(x for x in md.splitlines() if "Lastname_INST_task1b_1" in x)
    assert "| own | development test split |" in own_line and "| 140,000 | 140,000 | 0.000 |" in own_line


def test_own_rows_say_which_set_their_accuracy_is_on(run, tmp_path):
    # float32 evaluated on an unlabeled evaluation-layout set, as `dcase-effdl evaluate` leaves it.
    names = make_dataset(tmp_path / "eval", n_clips=6, numbered=True)
    variant = VariantDir(run / "float32")
    variant.model_path.write_bytes(b"model")
    variant.evaluation.write(variant.label, names, np.full((6, 3), 1 / 3), ["indoor", "outdoor", "transportation"],
                             tmp_path / "eval", variant.model_path)
    rows = merged_rows([run], "dcase2020_task1b")
    own = [(r["label"], r["set"], r["accuracy"] is None, r["rank"] is None) for r in rows if r["origin"] == "own"]
    assert sorted(own) == [("Lastname_INST_task1b_1", "development test split", False, False),
                           ("Lastname_INST_task1b_1", "evaluation set: no labels", True, True),
                           ("Lastname_INST_task1b_2", "development test split", False, False)]
    assert rows[-1]["set"] == "evaluation set: no labels"  # no accuracy: not ranked, listed last
    evaluation = rows[-1]
    assert evaluation["log_loss"] is None and evaluation["size_kb"] == pytest.approx(546.88, abs=0.005)
    md = format_leaderboard(rows, "md")
    assert md.splitlines()[-5] == ("|  | **Lastname_INST_task1b_1** |  |  |  |  | 140,000 | 140,000 | 0.000 | 546.88 * |  "
                                   "| own | evaluation set: no labels |")
    assert "outputs on an unlabeled evaluation set (no labels, so no accuracy)" in md


def test_csv_and_html_formats(run):
    rows = merged_rows([run], "dcase2020_task1b")
    table = list(csv.DictReader(io.StringIO(format_leaderboard(rows, "csv"))))
    assert len(table) == len(rows)
    koutini = next(r for r in table if r["Submission label"] == "Koutini_CPJKU_task1b_2")
    assert koutini["Size (KB)"] == "483.5" and koutini["Origin"] == "published" and koutini["Over limit"] == "False"
    assert (koutini["Parameters"], koutini["Non-zero parameters"], koutini["Sparsity"]) == ("345k", "247k", "0.284")  # as printed
    chang = next(r for r in table if r["Submission label"] == "Chang_QTI_task1b_1")
    assert chang["Non-zero parameters"] == "" and chang["Size (KB)"] == ""  # not on file: empty, never 0
    own = next(r for r in table if r["Submission label"] == "Lastname_INST_task1b_1")
    assert own["Parameters"] == "140000" and own["Sparsity"] == "0.0000"
    html = format_leaderboard(rows, "html")
    assert html.count('<tr class="own over-limit">') == 2 and "<th>Complexity management</th>" in html
    with pytest.raises(UserError, match="unknown format"):
        format_leaderboard(rows, "xlsx")


def test_cli_leaderboard(run, capsys):
    assert main(["leaderboard", str(run), "--published", "dcase2020_task1b", "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert "Koutini_CPJKU_task1b_2" in out and "Lastname_INST_task1b_1" in out
    assert main(["leaderboard", "--published", "dcase2020_task1b", "--format", "md"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("| Rank | Submission label | Technical report | Official system rank | Accuracy (%) | Logloss | "
                        "Parameters | Non-zero parameters | Sparsity | Size (KB) | Complexity management | Origin | Accuracy on |")
    top = [[c for i, c in enumerate(row) if i not in (2, 11, 12)] for row in _table("\n".join(lines[2:12]))]
    official = [row[:3] + [row[3].removesuffix(" %")] + row[4:] for row in _table(OFFICIAL_TOP_TEN)]
    assert top == official  # the ten official rows, in the official order, numbers as printed
    assert "k, M: counts the official table prints rounded" in lines[-1]
    assert main(["leaderboard", str(run), "--format", "csv"]) == 0
    assert "Koutini" not in capsys.readouterr().out  # own rows only without --published
    assert main(["leaderboard"]) == 2
    assert "no rows" in capsys.readouterr().err
