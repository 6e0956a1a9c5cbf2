"""Published DCASE leaderboard rows (package data) merged with own rows, as a markdown, CSV, HTML or text table.

    dcase-effdl leaderboard runs/quickstart [RUNDIR...] --published dcase2020_task1b --format md

Published rows come from `dcase_effdl/reporting/<name>_results.csv` (sources in its header): the ten
official top rows as printed (rounded counts such as '345k' kept and marked) and verified extra rows.
Own rows come from run folders (`leaderboard.rows_from_run`). Both use the row keys of
`dcase_effdl.reporting.leaderboard` plus `origin` ('published' or 'own'), `set` (which data the
accuracy is on), `technical_report` and `official_rank`, and both go through its one formatter, in the
official table's column order. Rows are ranked by accuracy with ties (the official 'Rank'); rows over
the size limit are marked.
"""

from __future__ import annotations

import csv
import io
from importlib import resources
from pathlib import Path
from typing import Any

from dcase_effdl.errors import UserError
from dcase_effdl.reporting.leaderboard import format_rows, rank_rows, rows_from_run
from dcase_effdl.rundir import VariantDir
from dcase_effdl.task import KB, SIZE_LIMIT_BYTES

PUBLISHED = {"dcase2020_task1b": "dcase2020_task1b_results.csv"}
RULE = {"dcase2020_task1b": ("dcase2020", SIZE_LIMIT_BYTES)}  # the size policy its rows obey, and its limit

# The 2020 results table's columns, then where each row comes from.
TABLE_KEYS = ["rank", "label", "technical_report", "official_rank", "accuracy", "log_loss", "n_params", "n_nonzero",
              "sparsity", "size_kb", "complexity_management", "origin", "set"]
SETS = {"eval": "evaluation set", "dev": "development set"}  # published accuracies: which set
OWN_SET = "development test split"  # own rows: the run's test split (metrics.json)
OWN_EVALUATION_SET = "evaluation set: no labels"  # own rows of outputs on an unlabeled evaluation set
ROUNDED = {"k": 1_000, "M": 1_000_000}  # the official table prints counts as e.g. 345k, 3M


def _number(text: str, kind: type, path: str, line: int, column: str) -> Any:
    text = text.strip()
    if text == "":
        return None
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"{path}: line {line}: column '{column}' must be a number, got {text!r}") from None


def _count(text: str, path: str, line: int, column: str) -> tuple[int | None, bool]:
    """A parameter count: exact digits, or as the official table prints it ('345k', '3M'): (value, rounded)."""
    text = text.strip()
    if text[-1:] in ROUNDED:
        return int(_number(text[:-1], float, path, line, column) * ROUNDED[text[-1]]), True
    return _number(text, int, path, line, column), False


def load_published(name: str = "dcase2020_task1b") -> list[dict]:
    """The published rows of `name` as stored (empty cells are None: not on file, never zero).

    Numbers are parsed; `printed` keeps each numeric cell's text as stored (the official table's
    rounding: '345k', '483.5', '0') and `rounded` names the counts that are printed rounded.
    """
    if name not in PUBLISHED:
        raise UserError(f"unknown published leaderboard '{name}' (known: {', '.join(PUBLISHED)})")
    resource = resources.files("dcase_effdl.reporting") / PUBLISHED[name]
    text = resource.read_text(encoding="utf-8")
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    reader = csv.DictReader(io.StringIO("\n".join(lines[first:])))
    ints = ("rank", "official_rank")
    floats = ("eval_accuracy", "eval_logloss", "dev_accuracy", "dev_logloss", "sparsity", "size_kb")
    rows = []
    for i, raw in enumerate(reader, start=first + 2):
        row: dict[str, Any] = {k: (v or "").strip() for k, v in raw.items()}
        row["printed"] = {k: row[k] for k in (*ints, *floats, "n_params", "n_nonzero") if row[k]}
        row["rounded"] = []
        for key in ints:
            row[key] = _number(row[key], int, PUBLISHED[name], i, key)
        for key in floats:
            row[key] = _number(row[key], float, PUBLISHED[name], i, key)
        for key in ("n_params", "n_nonzero"):
            row[key], rounded = _count(row[key], PUBLISHED[name], i, key)
            if rounded:
                row["rounded"].append(key)
        rows.append(row)
    return rows


def published_rows(name: str = "dcase2020_task1b", accuracy: str = "eval") -> list[dict]:
    """Published rows in the leaderboard row format; `accuracy` 'eval' (official ranking) or 'dev'.

    A row without the chosen set's accuracy falls back to the other set and says so in `set`.
    Sparsity is the stored (printed) fraction, else computed from exact counts. `printed` carries
    the stored text of each number, so that tables show it as published.
    """
    if accuracy not in SETS:
        raise UserError(f"published accuracy must be one of {', '.join(SETS)}, got '{accuracy}'")
    other = "dev" if accuracy == "eval" else "eval"
    stored = load_published(name)  # checks the name
    policy, limit = RULE[name]
    out = []
    for r in stored:
        chosen = accuracy if r[f"{accuracy}_accuracy"] is not None else other
        n_params, n_nonzero, sparsity = r["n_params"], r["n_nonzero"], r["sparsity"]
        if sparsity is None and n_params and n_nonzero is not None:
            sparsity = (n_params - n_nonzero) / n_params
        printed = {"accuracy": r["printed"].get(f"{chosen}_accuracy"), "log_loss": r["printed"].get(f"{chosen}_logloss"),
                   **{k: r["printed"].get(k) for k in ("sparsity", "size_kb", *r["rounded"])}}  # exact counts: grouped digits
        out.append({
            "rank": None,
            "label": r["label"],
            "technical_report": r["technical_report"] or None,
            "official_rank": r["official_rank"],
            "published_rank": r["rank"],
            "accuracy": r[f"{chosen}_accuracy"],
            "log_loss": r[f"{chosen}_logloss"],
            "eval_accuracy": r["eval_accuracy"],
            "dev_accuracy": r["dev_accuracy"],
            "n_params": n_params,
            "n_nonzero": n_nonzero,
            "sparsity": sparsity,
            "size_kb": r["size_kb"],
            "complexity_management": r["complexity_management"] or None,
            "over_limit": r["size_kb"] is not None and r["size_kb"] > limit / KB,
            "policy": policy,
            "limit_bytes": limit,
            "origin": "published",
            "set": SETS[chosen] if r[f"{chosen}_accuracy"] is not None else None,
            "source": r["source"],
            "printed": {k: v for k, v in printed.items() if v},
            "rounded": list(r["rounded"]),
        })
    return out


def own_rows(run_dirs: list[str | Path]) -> list[dict]:
    """Rows of every finished variant of each run folder, marked as own results, with the data they are on.

    A variant's row scores its development test split (metrics.json). A variant that `evaluate` ran on
    an unlabeled evaluation set (`<variant>/evaluation/`) also gets a row for those outputs: its size,
    no accuracy or log loss (the set has no labels), so it is never ranked beside published
    evaluation-set accuracies with a development number.
    """
    rows = []
    for run_dir in run_dirs:
        for row in rows_from_run(run_dir):
            own = dict(row, label=row.get("label") or f"{row['run']}/{row['variant']}", technical_report=None,
                       official_rank=None, origin="own", set=OWN_SET)
            rows.append(own)
            if VariantDir(Path(run_dir) / row["variant"]).evaluation.finished:
                rows.append(dict(own, rank=None, accuracy=None, log_loss=None, set=OWN_EVALUATION_SET))
    return rows


def merged_rows(run_dirs: list[str | Path], published: str | None = None, accuracy: str = "eval") -> list[dict]:
    """Own rows (and the published ones when `published` names a table), ranked by accuracy."""
    rows = own_rows(run_dirs)
    if published:
        rows += published_rows(published, accuracy)
    if not rows:
        raise UserError("no rows: give at least one run folder or --published")
    return rank_rows(rows)


# ---------------------------------------------------------------- formatting


PUBLISHED_NOTE = ("Published rows: official DCASE results, numbers as printed there (empty cell = not on file, see "
                  "the data file's sources). Own rows: 'Accuracy on' says which data: the run's development test "
                  "split, or outputs on an unlabeled evaluation set (no labels, so no accuracy).")
ROUNDED_NOTE = "k, M: counts the official table prints rounded (345k = 345 thousand, 3M = 3 million)."


def format_leaderboard(rows: list[dict], fmt: str = "md") -> str:
    """The rows in the 2020 results table's columns; csv carries the over-limit verdict as a column."""
    notes = [PUBLISHED_NOTE] if any(r.get("origin") == "published" for r in rows) else []
    if any(r.get("rounded") for r in rows):
        notes.append(ROUNDED_NOTE)
    return format_rows(rows, TABLE_KEYS + (["over_limit"] if fmt == "csv" else []), fmt, notes)
