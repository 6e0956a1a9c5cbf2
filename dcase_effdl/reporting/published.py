"""Published DCASE leaderboard rows (package data) merged with own rows, as a markdown, CSV, HTML or text table.

    dcase-effdl leaderboard runs/quickstart [RUNDIR...] --published dcase2020_task1b --format md

Published rows come from `dcase_effdl/reporting/<name>_results.csv` (sources in its header); own rows
from run folders (`leaderboard.rows_from_run`). Both use the row keys of `dcase_effdl.reporting.leaderboard`
plus `origin` ('published' or 'own'), `set` (which data the accuracy is on), `technical_report` and
`official_rank`. Rows are ranked by accuracy; rows over the size limit are marked.
"""

from __future__ import annotations

import csv
import html
import io
from importlib import resources
from pathlib import Path
from typing import Any

from dcase_effdl.errors import UserError
from dcase_effdl.reporting.leaderboard import CSV_DIGITS, OVER_MARK, TABLE_DIGITS, rank_rows, rows_from_run

PUBLISHED = {"dcase2020_task1b": "dcase2020_task1b_results.csv"}
LIMIT_KB = {"dcase2020_task1b": 500.0}  # KB = 1024 B; the task's model size limit

# The 2020 results table's columns, then where each row comes from.
TABLE_COLUMNS: list[tuple[str, str]] = [
    ("rank", "Rank"),
    ("label", "Submission label"),
    ("technical_report", "Technical report"),
    ("official_rank", "Official system rank"),
    ("accuracy", "Accuracy (%)"),
    ("log_loss", "Logloss"),
    ("n_params", "Parameters"),
    ("n_nonzero", "Non-zero parameters"),
    ("sparsity", "Sparsity (%)"),
    ("size_kb", "Size (KB)"),
    ("complexity_management", "Complexity management"),
    ("origin", "Origin"),
    ("set", "Accuracy on"),
]
SETS = {"eval": "eval", "dev": "dev"}  # published: official evaluation set / development set
OWN_SET = "own test"  # own rows: the run's test split


def _number(text: str, kind: type, path: str, line: int, column: str) -> Any:
    text = text.strip()
    if text == "":
        return None
    try:
        return kind(text)
    except ValueError:
        raise UserError(f"{path}: line {line}: column '{column}' must be a number, got {text!r}") from None


def load_published(name: str = "dcase2020_task1b") -> list[dict]:
    """The published rows of `name` as stored (empty cells are None: not verified, never zero)."""
    if name not in PUBLISHED:
        raise UserError(f"unknown published leaderboard '{name}' (known: {', '.join(PUBLISHED)})")
    resource = resources.files("dcase_effdl.reporting") / PUBLISHED[name]
    text = resource.read_text(encoding="utf-8")
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    reader = csv.DictReader(io.StringIO("\n".join(lines[first:])))
    ints = ("official_rank", "n_params", "n_nonzero")
    floats = ("eval_accuracy", "eval_logloss", "dev_accuracy", "dev_logloss", "size_kb")
    rows = []
    for i, raw in enumerate(reader, start=first + 2):
        row: dict[str, Any] = {k: (v or "").strip() for k, v in raw.items()}
        for key in ints:
            row[key] = _number(row[key], int, PUBLISHED[name], i, key)
        for key in floats:
            row[key] = _number(row[key], float, PUBLISHED[name], i, key)
        rows.append(row)
    return rows


def published_rows(name: str = "dcase2020_task1b", accuracy: str = "eval") -> list[dict]:
    """Published rows in the leaderboard row format; `accuracy` 'eval' (official ranking) or 'dev'.

    A row without the chosen set's accuracy falls back to the other set and says so in `set`.
    """
    if accuracy not in SETS:
        raise UserError(f"published accuracy must be one of {', '.join(SETS)}, got '{accuracy}'")
    other = "dev" if accuracy == "eval" else "eval"
    stored = load_published(name)  # checks the name
    limit = LIMIT_KB[name]
    out = []
    for r in stored:
        chosen = accuracy if r[f"{accuracy}_accuracy"] is not None else other
        n_params, n_nonzero = r["n_params"], r["n_nonzero"]
        out.append({
            "rank": None,
            "label": r["label"],
            "technical_report": r["technical_report"] or None,
            "official_rank": r["official_rank"],
            "accuracy": r[f"{chosen}_accuracy"],
            "log_loss": r[f"{chosen}_logloss"],
            "eval_accuracy": r["eval_accuracy"],
            "dev_accuracy": r["dev_accuracy"],
            "n_params": n_params,
            "n_nonzero": n_nonzero,
            "sparsity": 100.0 * (n_params - n_nonzero) / n_params if n_params and n_nonzero is not None else None,
            "size_kb": r["size_kb"],
            "complexity_management": r["complexity_management"] or None,
            "over_limit": r["size_kb"] is not None and r["size_kb"] > limit,
            "limit_kb": limit,
            "origin": "published",
            "set": SETS[chosen] if r[f"{chosen}_accuracy"] is not None else None,
            "source": r["source"],
        })
    return out


def own_rows(run_dirs: list[str | Path]) -> list[dict]:
    """Rows of every finished variant of each run folder, marked as own results."""
    rows = []
    for run_dir in run_dirs:
        for row in rows_from_run(run_dir):
            limit = row.get("limit_bytes")
            rows.append(dict(
                row,
                label=row.get("label") or f"{row['run']}/{row['variant']}",
                technical_report=None,
                official_rank=None,
                origin="own",
                set=OWN_SET,
                limit_kb=None if limit is None else limit / 1024,
            ))
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


def _cell(key: str, row: dict, digits: dict[str, int] = TABLE_DIGITS, mark: bool = True) -> str:
    value = row.get(key)
    if value is None or value == "":
        return ""
    if key in digits:
        text = f"{value:.{digits[key]}f}"
        if key == "size_kb" and mark and row.get("over_limit"):
            text += f" {OVER_MARK}"
        return text
    if key in ("n_params", "n_nonzero") and mark:
        return f"{value:,}"
    return str(value)


def _footnotes(rows: list[dict]) -> list[str]:
    notes = []
    if any(r.get("over_limit") for r in rows):
        limits = sorted({f"{r['limit_kb']:.0f} KB" for r in rows if r.get("over_limit") and r.get("limit_kb")})
        notes.append(f"{OVER_MARK} over the size limit ({', '.join(limits) or 'policy limit'}, KB = 1024 B)")
    if any(r.get("origin") == "published" for r in rows):
        notes.append("Published rows: official DCASE results (empty cell = not verified, see the data file's "
                     "sources); own rows: accuracy on the run's own test split, not the official evaluation set.")
    return notes


def format_markdown(rows: list[dict]) -> str:
    header = "| " + " | ".join(h for _, h in TABLE_COLUMNS) + " |"
    align = "|" + "|".join("---:" if k in ("rank", "official_rank", "accuracy", "log_loss", "n_params",
                                            "n_nonzero", "sparsity", "size_kb") else "---" for k, _ in TABLE_COLUMNS) + "|"
    body = []
    for r in rows:
        cells = [_cell(k, r).replace("|", "\\|") for k, _ in TABLE_COLUMNS]
        if r.get("origin") == "own":
            cells[1] = f"**{cells[1]}**"
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, align, *body, "", *_footnotes(rows)]).rstrip() + "\n"


def format_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([h for _, h in TABLE_COLUMNS] + ["Over limit"])
    for r in rows:
        writer.writerow([_cell(k, r, CSV_DIGITS, mark=False) for k, _ in TABLE_COLUMNS] + [str(bool(r.get("over_limit")))])
    return buf.getvalue()


def format_html(rows: list[dict]) -> str:
    """A <table> element (no page around it), own rows and over-limit sizes get CSS classes."""
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in TABLE_COLUMNS)
    body = []
    for r in rows:
        classes = [r.get("origin", "own")] + (["over-limit"] if r.get("over_limit") else [])
        cells = "".join(
            f'<td class="{"num" if k in TABLE_DIGITS or k in ("rank", "official_rank", "n_params", "n_nonzero") else "txt"}">'
            f"{html.escape(_cell(k, r))}</td>" for k, _ in TABLE_COLUMNS
        )
        body.append(f'<tr class="{" ".join(classes)}">{cells}</tr>')
    notes = "".join(f"<p class=\"note\">{html.escape(n)}</p>" for n in _footnotes(rows))
    return (f'<div class="table-wrap"><table class="leaderboard"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{notes}')


def format_text(rows: list[dict]) -> str:
    cells = [[h for _, h in TABLE_COLUMNS]] + [[_cell(k, r) or "-" for k, _ in TABLE_COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + _footnotes(rows)) + "\n"


FORMATS = {"md": format_markdown, "csv": format_csv, "html": format_html, "text": format_text}


def format_leaderboard(rows: list[dict], fmt: str = "md") -> str:
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}' (known: {', '.join(FORMATS)})")
    return FORMATS[fmt](rows)
