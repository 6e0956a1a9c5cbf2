"""One self-contained HTML page per run (or for a comparison of runs): leaderboard, plots, size tables.

    dcase-effdl report runs/quickstart                   # -> runs/quickstart/report.html
    dcase-effdl report runs/a runs/b --out compare.html  # comparison of several runs

Plots are inlined as SVG and nothing is loaded from elsewhere, so the page reads offline and can be
mailed as one file. The pipeline calls `write_report(run_dir)` at the end of every run.
"""

from __future__ import annotations

import datetime
import html
import re
import tempfile
from pathlib import Path
from typing import Any

from dcase_effdl import __version__
from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_write
from dcase_effdl.reporting.leaderboard import rows_from_run
from dcase_effdl.reporting.plots import compares_with_published, write_comparison_plots, write_run_plots
from dcase_effdl.reporting.published import format_leaderboard, merged_rows
from dcase_effdl.rundir import RunDir
from dcase_effdl.task import KB

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; margin: 24px auto;
       max-width: 1150px; padding: 0 16px; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { margin-top: 1.6em; border-bottom: 2px solid #ddd; }
h3 { margin-top: 1.2em; }
.meta { color: #555; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.86em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.own td { background: #fff5d6; font-weight: 600; }
tr.over-limit td { color: #b00020; }
tr.not-counted td { color: #888; }
p.note { font-size: 0.85em; color: #555; margin: 0.2em 0; }
figure { margin: 0.8em 0; } figure svg { max-width: 100%; height: auto; }
figure.wide svg { width: 100%; }
.table-wrap { overflow-x: auto; }
figcaption { font-size: 0.85em; color: #555; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; } .grid figure { flex: 1 1 420px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px; font-size: 0.9em; }
dt { color: #555; } dd { margin: 0; }
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def inline_svg(path: Path) -> str:
    """The <svg> element of a matplotlib SVG file, ready to sit inside HTML (no XML prolog, no DOCTYPE)."""
    text = path.read_text(encoding="utf-8")
    start = text.find("<svg")
    if start < 0:
        raise UserError(f"{path}: not an SVG file")
    svg = text[start:]
    # Several figures on one page: make their element ids unique so clip paths do not collide.
    prefix = re.sub(r"\W", "_", path.stem) + "_"
    svg = re.sub(r'id="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{prefix}{m.group(1)})", svg)
    svg = re.sub(r'xlink:href="#([^"]+)"', lambda m: f'xlink:href="#{prefix}{m.group(1)}"', svg)
    svg = re.sub(r'(?<!xlink:)href="#([^"]+)"', lambda m: f'href="#{prefix}{m.group(1)}"', svg)
    return svg


def _figure(path: Path, caption: str, wide: bool = False) -> str:
    if not path.is_file():
        return ""
    cls = ' class="wide"' if wide else ""
    return f"<figure{cls}>{inline_svg(path)}<figcaption>{_esc(caption)}</figcaption></figure>"


def _table(headers: list[str], rows: list[list[Any]], numeric: set[int] = frozenset(), row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = "".join(f'<td class="{"num" if j in numeric else "txt"}">{_esc(v)}</td>' for j, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _fmt(value: Any, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def size_table(size: dict) -> str:
    """The per-tensor size table of a size.json (what counts, with how many bits, and why not)."""
    rows = size.get("rows") or []
    table = _table(
        ["Tensor", "Parameters", "Non-zero", "Bits", "Size (bytes)", "Counted", "Why not counted"],
        [[r.get("name"), f"{r.get('n_params', 0):,}", f"{r.get('n_nonzero', 0):,}", r.get("bits"),
          f"{r.get('size_bytes', 0):,}", "yes" if r.get("counted") else "no", r.get("reason") or ""] for r in rows],
        numeric={1, 2, 3, 4},
        row_classes=["" if r.get("counted") else "not-counted" for r in rows],
    ) if rows else ""
    table = f'<div class="table-wrap">{table}</div>' if table else ""
    limit = size.get("limit_bytes")
    verdict = ""
    if limit:
        over = size.get("size_bytes", 0) > limit
        verdict = (f" — {'OVER' if over else 'within'} the limit of {limit:,} bytes "
                   f"({limit / KB:,.2f} KB, policy {_esc(size.get('policy'))})")
    total = (f"<p class=\"note\">Total: {size.get('n_params', 0):,} parameters, {size.get('n_nonzero', 0):,} non-zero, "
             f"{size.get('size_bytes', 0):,} bytes = {size.get('size_kb', 0):,.2f} KB (KB = 1024 B){verdict}.</p>")
    return table + total


def class_table(metrics: dict) -> str:
    cw = metrics.get("class_wise") or {}
    rows = [[cls, _fmt(m.get("accuracy"), 1), _fmt(m.get("log_loss"), 3), m.get("n_clips")] for cls, m in cw.items()]
    rows.append(["macro average", _fmt(metrics.get("accuracy"), 1), _fmt(metrics.get("log_loss_macro"), 3), metrics.get("n_clips")])
    return _table(["Class", "Accuracy (%)", "Logloss", "Clips"], rows, numeric={1, 2, 3}) + (
        f"<p class=\"note\">Overall log loss {_fmt(metrics.get('log_loss'), 3)}; "
        f"plain accuracy {_fmt(metrics.get('plain_accuracy'), 1)} %.</p>")


def deploy_table(deploy: dict) -> str:
    """deploy.json (benchmarks/deploy.py) as a table: per variant and runtime, file, latency, memory, MACs."""
    rows = [[r["variant"], r["runtime"], f"{r.get('file_bytes', 0) / KB:,.1f}", f"{r.get('macs', 0) / 1e6:,.1f}",
             _fmt(r.get("batch1", {}).get("median_ms"), 2), _fmt(r.get("batch1", {}).get("p90_ms"), 2),
             _fmt(r.get("batch64", {}).get("median_ms"), 1), _fmt(r.get("peak_rss_mb"), 0), r.get("storage", "")]
            for r in deploy["rows"]]
    table = _table(["Variant", "Runtime", "File (KB)", "MACs (M)", "Batch 1 median (ms)", "Batch 1 p90 (ms)",
                    "Batch 64 median (ms)", "Peak RSS (MB)", "Stored as"], rows, numeric={2, 3, 4, 5, 6, 7})
    m = deploy.get("machine") or {}
    return (f'<div class="table-wrap">{table}</div><p class="note">Measured by <code>{_esc(deploy.get("command"))}</code> '
            f"on {_esc(m.get('cpu'))} ({_esc(m.get('cores'))} cores); one process per row.</p>")


def _page(title: str, body: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_esc(title)}</title>"
        f"<style>{CSS}</style></head><body>\n<h1>{_esc(title)}</h1>\n"
        f"<p class=\"meta\">Written by dcase-effdl {_esc(__version__)} on {stamp}.</p>\n{body}\n</body></html>\n"
    )


def _run_summary(run: RunDir) -> str:
    recipe, env, history = run.recipe(), run.environment(), run.history(optional=True)
    items = [
        ("Run folder", str(run.path)),
        ("Recipe", recipe.name),
        ("Model", recipe.model.name),
        ("Dataset", recipe.dataset.root),
        ("Epochs", recipe.train.epochs),
        ("Seed", recipe.seed),
        ("Size policy", recipe.size_policy),
        ("Best epoch", history.get("best_epoch") if history else None),
        ("Git commit", env.get("git_commit")),
        ("torch", env.get("torch")),
    ]
    return "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items if v not in (None, "")) + "</dl>"


def _leaderboard(run_dirs: list[Path], published: str | None) -> str:
    return format_leaderboard(merged_rows(run_dirs, published), "html")


def _variant_sections(run_dir: Path, plots_dir: Path, prefix: str = "") -> str:
    parts = []
    for row in rows_from_run(run_dir):
        variant = row["variant"]
        vdir = RunDir(run_dir).variant(variant)
        metrics, size = vdir.metrics(), vdir.size()
        title = f"{prefix}{variant}" + (f" ({row['label']})" if row.get("label") else "")
        steps = row.get("complexity_management") or "none"
        confusion = "confusion_" + prefix.replace("/", "_") + f"{variant}.svg"
        parts.append(
            f"<h3>{_esc(title)}</h3><p class=\"note\">Compression: {_esc(steps)}. "
            f"Macro accuracy {_fmt(row.get('accuracy'), 1)} %, log loss {_fmt(row.get('log_loss'), 3)}, "
            f"{_fmt(row.get('size_kb'), 2)} KB.</p>"
            f"<div class=\"grid\"><div>{class_table(metrics)}</div>"
            f"{_figure(plots_dir / confusion, f'Confusion matrix: {prefix}{variant}')}</div>"
            f"{size_table(size)}"
        )
    return "\n".join(parts)


def write_report(run_dir: str | Path, published: str | None = "dcase2020_task1b", out: str | Path | None = None) -> Path:
    """`<run_dir>/report.html`: run summary, leaderboard beside published rows, plots, per-variant tables."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    plots = run_dir / "plots"
    if published and not compares_with_published(run_dir):
        published = None  # e.g. an image run: DCASE rows beside it would mislead
    if not (plots / "accuracy_vs_size.svg").is_file():
        write_run_plots(run_dir, published)
    body = [
        "<h2>Run</h2>", _run_summary(RunDir(run_dir)),
        "<h2>Leaderboard</h2>", _leaderboard([run_dir], published),
        _figure(plots / "accuracy_vs_size.svg", "Accuracy vs model size; the dashed line is the size limit.", wide=True),
        "<h2>Training</h2>", _figure(plots / "training_curves.svg", "Loss and validation macro accuracy per epoch.", wide=True)
        or "<p class=\"note\">No training history in this run folder.</p>",
        "<h2>Variants</h2>", _variant_sections(run_dir, plots),
    ]
    deploy = RunDir(run_dir).deploy(optional=True)
    if deploy:
        body += ["<h2>Deployment</h2>", deploy_table(deploy)]
    path = Path(out) if out else run_dir / "report.html"
    atomic_write(path, _page(f"dcase-effdl run report: {run_dir.name}", "\n".join(body)))
    return path


def write_comparison_report(run_dirs: list[str | Path], out: str | Path, published: str | None = "dcase2020_task1b") -> Path:
    """One page comparing runs: merged leaderboard, accuracy vs size of all variants, curves, per-run tables."""
    run_dirs = [Path(p) for p in run_dirs]
    for p in run_dirs:
        if not p.is_dir():
            raise UserError(f"{p}: run folder not found")
    names = [p.name for p in run_dirs]
    if len(set(names)) != len(names):
        names = [str(p) for p in run_dirs]
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        plots = Path(tmp)
        write_comparison_plots(run_dirs, plots, published)
        body = [
            "<h2>Leaderboard</h2>", _leaderboard(run_dirs, published),
            _figure(plots / "accuracy_vs_size.svg", "Accuracy vs model size of every variant; the dashed line is the size limit.", wide=True),
            "<h2>Training</h2>", _figure(plots / "training_curves.svg", "Loss and validation macro accuracy per epoch, one colour per run.", wide=True),
        ]
        for name, run_dir in zip(names, run_dirs):
            body += [f"<h2>Run {_esc(name)}</h2>", _run_summary(RunDir(run_dir)), _variant_sections(run_dir, plots, prefix=f"{name}/")]
        text = _page("dcase-effdl comparison: " + ", ".join(names), "\n".join(body))
    atomic_write(out, text)
    return out
