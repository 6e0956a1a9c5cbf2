"""Leaderboard rows from a run folder (one per variant), written as CSV and printed as a ranked table.

A row is a plain dict with the columns of the DCASE 2020 Task 1B results table plus where it came
from. Keys (and the headers used in files and tables, see COLUMNS):

    rank                   Rank                   1 = highest accuracy (set by `rank_rows`)
    label                  Submission label       `VariantDir.label` (from `<label>.output.csv`), else None
    accuracy               Accuracy (%)           macro average of class-wise accuracy, percent
    log_loss               Logloss                over all clips
    n_params               Parameters             counted values (weights and biases)
    n_nonzero              Non-zero parameters
    sparsity               Sparsity (%)           100 * zeros / n_params
    size_kb                Size (KB)              KB = 1024 B, as the size policy counts it
    complexity_management  Complexity management  e.g. 'float16', 'pruning + float16'
    run, variant           Run, Variant           run folder name, variant folder name
    size_bytes, limit_bytes, policy, over_limit   the size policy's verdict (limit_bytes may be None)
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_write
from dcase_effdl.rundir import RunDir, VariantDir

COLUMNS: list[tuple[str, str]] = [
    ("rank", "Rank"),
    ("label", "Submission label"),
    ("accuracy", "Accuracy (%)"),
    ("log_loss", "Logloss"),
    ("n_params", "Parameters"),
    ("n_nonzero", "Non-zero parameters"),
    ("sparsity", "Sparsity (%)"),
    ("size_kb", "Size (KB)"),
    ("complexity_management", "Complexity management"),
    ("run", "Run"),
    ("variant", "Variant"),
    ("size_bytes", "Size (bytes)"),
    ("limit_bytes", "Limit (bytes)"),
    ("policy", "Size policy"),
    ("over_limit", "Over limit"),
]

# Digits after the point in leaderboard.csv and in the printed table.
CSV_DIGITS = {"accuracy": 2, "log_loss": 4, "sparsity": 2, "size_kb": 2}
TABLE_DIGITS = {"accuracy": 1, "log_loss": 3, "sparsity": 1, "size_kb": 2}
_TABLE_KEYS = ["rank", "label", "accuracy", "log_loss", "n_params", "n_nonzero", "sparsity", "size_kb",
               "complexity_management", "variant"]
OVER_MARK = "*"


def _need(data: dict, key: str, path: Path) -> Any:
    if key not in data:
        raise UserError(f"{path}: missing key '{key}'")
    return data[key]


def row_from_variant(run_dir: str | Path, variant_name: str) -> dict:
    """The leaderboard row of `<run_dir>/<variant_name>` from its metrics.json and size.json."""
    run_dir = Path(run_dir)
    variant = VariantDir(run_dir / variant_name)
    metrics, size = variant.metrics(), variant.size()
    metrics_path, size_path = variant.metrics_path, variant.path / "size.json"
    n_params = int(_need(size, "n_params", size_path))
    n_nonzero = int(_need(size, "n_nonzero", size_path))
    size_kb = float(_need(size, "size_kb", size_path))
    size_bytes = size.get("size_bytes")
    limit_bytes = size.get("limit_bytes")
    accuracy, log_loss = _need(metrics, "accuracy", metrics_path), _need(metrics, "log_loss", metrics_path)
    return {
        "rank": None,
        "label": variant.label,
        "accuracy": None if accuracy is None else float(accuracy),
        "log_loss": None if log_loss is None else float(log_loss),
        "n_params": n_params,
        "n_nonzero": n_nonzero,
        "sparsity": 100.0 * (n_params - n_nonzero) / n_params if n_params else 0.0,
        "size_kb": size_kb,
        "complexity_management": size.get("complexity_management") or "",
        "run": run_dir.name,
        "variant": variant_name,
        "size_bytes": None if size_bytes is None else int(size_bytes),
        "limit_bytes": None if limit_bytes is None else int(limit_bytes),
        "policy": size.get("policy"),
        "over_limit": bool(size_bytes is not None and limit_bytes is not None and size_bytes > limit_bytes),
    }


def rows_from_run(run_dir: str | Path) -> list[dict]:
    """Rows of every finished variant (a folder with metrics.json) of a run, ranked by accuracy."""
    return rank_rows([row_from_variant(run_dir, v.name) for v in RunDir(run_dir).variants()])


def rank_rows(rows: list[dict]) -> list[dict]:
    """Rows sorted by accuracy (highest first; smaller size breaks ties; no accuracy last), ranks set."""
    ranked = sorted(
        rows,
        key=lambda r: (r["accuracy"] is None, -(r["accuracy"] or 0.0), r["size_kb"] or 0.0),
    )
    return [dict(row, rank=i + 1) for i, row in enumerate(ranked)]


def write_leaderboard_csv(path: str | Path, rows: list[dict]) -> Path:
    """Write the ranked rows with the COLUMNS headers (comma-separated, empty cell for None)."""
    path = Path(path)
    if not rows:
        raise UserError(f"{path}: refusing to write a leaderboard without rows")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([header for _, header in COLUMNS])
    for row in rank_rows(rows):
        writer.writerow([_csv_cell(key, row.get(key)) for key, _ in COLUMNS])
    atomic_write(path, buf.getvalue())
    return path


def _csv_cell(key: str, value: Any) -> str:
    if value is None:
        return ""
    if key in CSV_DIGITS:
        return f"{value:.{CSV_DIGITS[key]}f}"
    return str(value)


def _table_cell(key: str, row: dict) -> str:
    value = row.get(key)
    if value is None or value == "":
        return "-"
    if key in TABLE_DIGITS:
        text = f"{value:,.{TABLE_DIGITS[key]}f}"
        if key == "size_kb":  # the mark (or room for it) keeps the decimal points aligned
            text += f" {OVER_MARK}" if row.get("over_limit") else "  "
        return text
    if key in ("n_params", "n_nonzero"):
        return f"{value:,}"
    return str(value)


def format_table(rows: list[dict]) -> str:
    """Aligned plain-text table ranked by accuracy; sizes over their policy's limit marked with '*'."""
    rows = rank_rows(rows)
    headers = dict(COLUMNS)
    cells = [[headers[k] for k in _TABLE_KEYS]] + [[_table_cell(k, r) for k in _TABLE_KEYS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_TABLE_KEYS))]
    numeric = {"rank", "accuracy", "log_loss", "n_params", "n_nonzero", "sparsity", "size_kb"}

    def fmt(line: list[str]) -> str:
        parts = [
            text.rjust(w) if key in numeric else text.ljust(w) for key, text, w in zip(_TABLE_KEYS, line, widths)
        ]
        return "  ".join(parts).rstrip()

    lines = [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(line) for line in cells[1:]]
    over = sorted({(r.get("policy") or "?", r["limit_bytes"]) for r in rows if r.get("over_limit")})
    if over:
        limits = ", ".join(f"{policy}: {limit / 1024:,.2f} KB" for policy, limit in over)
        lines.append(f"{OVER_MARK} over the size limit ({limits})")
    return "\n".join(lines)
