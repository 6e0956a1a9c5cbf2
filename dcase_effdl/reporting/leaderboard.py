"""Leaderboard rows from a run folder (one per variant), and the one formatter of such rows (text, md, csv, html)."""

from __future__ import annotations

import csv
import html
import io
from pathlib import Path
from typing import Any, Sequence

from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_write
from dcase_effdl.rundir import RunDir, VariantDir
from dcase_effdl.task import KB

# A row is a plain dict: the columns of the DCASE 2020 Task 1B results table plus where it came from.
# Its keys, their headers in files and tables, and what they hold:
HEADERS = {
    "rank": "Rank",  # 1 = highest accuracy, equal accuracies share a rank (set by `rank_rows`)
    "label": "Submission label",  # `VariantDir.label` (from `<label>.output.csv`), else None
    "technical_report": "Technical report",  # published rows only, like official_rank, origin and set
    "official_rank": "Official system rank",
    "accuracy": "Accuracy (%)",  # macro average of class-wise accuracy, percent
    "log_loss": "Logloss",  # over all clips
    "n_params": "Parameters",  # counted values (weights and biases)
    "n_nonzero": "Non-zero parameters",
    "sparsity": "Sparsity",  # fraction of the counted values that are zero, as the official table prints it
    "size_kb": "Size (KB)",  # KB = 1024 B, as the size policy counts it
    "complexity_management": "Complexity management",  # e.g. 'float16', 'pruning + float16'
    "run": "Run",  # run folder name
    "variant": "Variant",  # variant folder name
    "size_bytes": "Size (bytes)",  # size_bytes, limit_bytes (may be None), policy, over_limit: the policy's verdict
    "limit_bytes": "Limit (bytes)",
    "policy": "Size policy",
    "over_limit": "Over limit",
    "origin": "Origin",  # 'own' or 'published'
    "set": "Accuracy on",  # which data the accuracy is on
}
# leaderboard.csv: every key of an own row; the table printed after a run: the results table's columns.
COLUMNS = [(k, HEADERS[k]) for k in ("rank", "label", "accuracy", "log_loss", "n_params", "n_nonzero", "sparsity",
                                     "size_kb", "complexity_management", "run", "variant", "size_bytes",
                                     "limit_bytes", "policy", "over_limit")]
TEXT_KEYS = ["rank", "label", "accuracy", "log_loss", "n_params", "n_nonzero", "sparsity", "size_kb",
             "complexity_management", "variant"]
NUMERIC = {"rank", "official_rank", "accuracy", "log_loss", "n_params", "n_nonzero", "sparsity", "size_kb"}
# Digits after the point in files (csv) and in tables people read (text, md, html).
CSV_DIGITS = {"accuracy": 2, "log_loss": 4, "sparsity": 4, "size_kb": 2}
TABLE_DIGITS = {"accuracy": 1, "log_loss": 3, "sparsity": 3, "size_kb": 2}
OVER_MARK = "*"
FORMATS = ("text", "md", "csv", "html")


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
        "sparsity": (n_params - n_nonzero) / n_params if n_params else 0.0,
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
    """Rows sorted by accuracy (highest first, no accuracy last) with the official table's rank: equal
    accuracies share a rank, listed by label as the official table lists them, and the next rank follows
    on (1, 2, 2, 3); a row without accuracy has none."""
    ranked = sorted(rows, key=lambda r: (r["accuracy"] is None, -(r["accuracy"] or 0.0), r.get("label") or ""))
    out, rank, last = [], 0, None
    for row in ranked:
        if row["accuracy"] is not None and row["accuracy"] != last:
            rank, last = rank + 1, row["accuracy"]
        out.append(dict(row, rank=rank if row["accuracy"] is not None else None))
    return out


def write_leaderboard_csv(path: str | Path, rows: list[dict]) -> Path:
    """Write the ranked rows with the COLUMNS headers (comma-separated, empty cell for None)."""
    path = Path(path)
    if not rows:
        raise UserError(f"{path}: refusing to write a leaderboard without rows")
    atomic_write(path, format_rows(rank_rows(rows), [k for k, _ in COLUMNS], "csv"))
    return path


def format_table(rows: list[dict]) -> str:
    """The table printed after a run: ranked, aligned, sizes over their policy's limit marked with '*'."""
    return format_rows(rank_rows(rows), TEXT_KEYS, "text").rstrip("\n")


# ---------------------------------------------------------------- the one table formatter


def cell(key: str, row: dict, fmt: str) -> str:
    """One cell: '' when missing; a number a published row carries as printed (`row['printed']`) stays as
    printed ('345k', '483.5'); otherwise csv keeps plain numbers, the other formats round, group and mark."""
    value = row.get(key)
    if value is None or value == "":
        return ""
    printed = (row.get("printed") or {}).get(key)
    if fmt == "csv":
        if printed is not None:
            return printed
        return f"{value:.{CSV_DIGITS[key]}f}" if key in CSV_DIGITS else str(value)
    if printed is not None and key != "size_kb":
        return printed
    if key in TABLE_DIGITS:
        text = printed if printed is not None else f"{value:,.{TABLE_DIGITS[key]}f}"
        if key == "size_kb" and row.get("over_limit"):
            text += f" {OVER_MARK}"
        elif key == "size_kb" and fmt == "text":
            text += "  "  # room for the mark keeps the decimal points aligned
        return text
    if key in ("n_params", "n_nonzero"):
        return f"{value:,}"
    return str(value)


def format_rows(rows: list[dict], keys: list[str], fmt: str, notes: Sequence[str] = ()) -> str:
    """`rows` (in the given order) as a 'text' (aligned), 'md', 'csv' or 'html' table of columns `keys`.

    Displays (all but csv) end with the over-limit footnote, naming each policy's limit, then `notes`.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    headers = [HEADERS[k] for k in keys]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerows([headers] + [[cell(k, r, fmt) for k in keys] for r in rows])
        return buf.getvalue()
    over = sorted({(r.get("policy") or "?", r["limit_bytes"]) for r in rows if r.get("over_limit")})
    if over:
        limits = ", ".join(f"{policy}: {limit / KB:,.2f} KB" for policy, limit in over)
        notes = [f"{OVER_MARK} over the size limit ({limits})", *notes]
    if fmt == "md":
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if k in NUMERIC else "---" for k in keys) + "|"]
        for r in rows:
            cells = [cell(k, r, fmt).replace("|", "\\|") for k in keys]
            if r.get("origin") == "own" and "label" in keys:
                cells[keys.index("label")] = f"**{cells[keys.index('label')]}**"
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join([*lines, "", *notes]).rstrip() + "\n"
    if fmt == "html":
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = []
        for r in rows:  # CSS classes: own/published, over-limit
            classes = " ".join([r.get("origin", "own")] + (["over-limit"] if r.get("over_limit") else []))
            tds = "".join(f'<td class="{"num" if k in NUMERIC else "txt"}">{html.escape(cell(k, r, fmt))}</td>' for k in keys)
            body.append(f'<tr class="{classes}">{tds}</tr>')
        body, foot = "".join(body), "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
        return f'<div class="table-wrap"><table class="leaderboard"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{foot}\n'
    cells = [headers] + [[cell(k, r, fmt) or "-" for k in keys] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(keys))]

    def line(texts: list[str]) -> str:
        return "  ".join(t.rjust(w) if k in NUMERIC else t.ljust(w) for k, t, w in zip(keys, texts, widths)).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:]), *notes]) + "\n"
