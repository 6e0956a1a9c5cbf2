"""Plots of runs (matplotlib, Agg, PNG and SVG): accuracy vs model size, confusion matrices, training curves.

    dcase-effdl plot runs/quickstart runs/int8 --out plots/ [--published dcase2020_task1b]

`write_run_plots(run_dir)` is called by the pipeline at the end of every run and writes
`<run_dir>/plots/`; `write_comparison_plots(run_dirs, out_dir)` compares several runs.
"""

from __future__ import annotations

import math
from pathlib import Path

from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_open
from dcase_effdl.reporting.leaderboard import rows_from_run
from dcase_effdl.reporting.published import merged_rows
from dcase_effdl.rundir import RunDir
from dcase_effdl.task import KB, SIZE_LIMIT_KB

DPI = 150
OWN_COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
PUBLISHED_COLOR = "#7f7f7f"


def _pyplot():
    """pyplot on the non-interactive Agg backend (works without a display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, base: Path) -> list[Path]:
    """Write `base`.png and `base`.svg; returns both paths."""
    paths = [base.with_suffix(".png"), base.with_suffix(".svg")]
    with atomic_open(paths[0]) as f:
        fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight")
    # Text stays text in the SVG (searchable, small, sharp in the HTML report); no timestamp, so the
    # same run gives the same bytes.
    with _pyplot().rc_context({"svg.fonttype": "none", "svg.hashsalt": "dcase-effdl"}), atomic_open(paths[1]) as f:
        fig.savefig(f, format="svg", bbox_inches="tight", metadata={"Date": None})
    _pyplot().close(fig)
    return paths


def _short(label: str) -> str:
    """Koutini_CPJKU_task1b_2 -> Koutini_2 (lastname and index are enough to find the row)."""
    if not label:
        return "?"
    parts = label.split("_")
    if len(parts) == 4 and parts[2].startswith("task"):
        return f"{parts[0]}_{parts[3]}"
    return label.replace("DCASE2020_", "")


# Label positions tried around a point (offset in points, horizontal alignment), first free one wins.
_OFFSETS = [((7, 4), "left"), ((7, -11), "left"), ((-7, 4), "right"), ((-7, -11), "right"),
            ((7, 14), "left"), ((7, -21), "left"), ((-7, 14), "right"), ((-7, -21), "right")]


def _place_labels(ax, items: list[tuple[float, float, str, dict]]) -> None:
    """Annotate points without labels overlapping each other or the markers (greedy, in draw order)."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    taken = []
    for x, y, _text, _style in items:  # markers are obstacles too
        px, py = ax.transData.transform((x, y))
        taken.append((px - 6, py - 6, px + 6, py + 6))
    for x, y, text, style in items:
        for (dx, dy), ha in _OFFSETS:
            ann = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, **style)
            box = ann.get_window_extent(renderer)
            rect = (box.x0, box.y0, box.x1, box.y1)
            inside = ax.get_window_extent(renderer)
            fits = inside.x0 <= rect[0] and rect[2] <= inside.x1 and inside.y0 <= rect[1] and rect[3] <= inside.y1
            if fits and not any(rect[0] < t[2] and t[0] < rect[2] and rect[1] < t[3] and t[1] < rect[3] for t in taken):
                taken.append(rect)
                break
            ann.remove()
        else:  # no free place: keep the first position rather than drop the label
            ann = ax.annotate(text, (x, y), xytext=_OFFSETS[0][0], textcoords="offset points", ha="left", **style)
            box = ann.get_window_extent(renderer)
            taken.append((box.x0, box.y0, box.x1, box.y1))


# ---------------------------------------------------------------- accuracy vs size


def plot_accuracy_vs_size(rows: list[dict], base: Path, *, title: str | None = None, limit_kb: float = SIZE_LIMIT_KB) -> list[Path]:
    """Accuracy (%) over model size (KB, log axis) with the size limit drawn; published vs own markers.

    rows: leaderboard rows (`accuracy`, `size_kb`, `label`, `origin` 'published'|'own', optional
    `variant`, `run`). Rows without accuracy or size are left out (they cannot be placed).
    """
    plt = _pyplot()
    points = [r for r in rows if r.get("accuracy") is not None and r.get("size_kb")]
    if not points:
        raise UserError(f"{base}: no row has both an accuracy and a size to plot")
    published = [r for r in points if r.get("origin") == "published"]
    own = [r for r in points if r.get("origin") != "published"]

    fig, ax = plt.subplots(figsize=(9, 5.5))
    sizes = [r["size_kb"] for r in points]
    lo, hi = min(sizes + [limit_kb]) / 2.5, max(sizes + [limit_kb]) * 2.5
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.axvspan(limit_kb, hi, color="#d62728", alpha=0.06, lw=0)
    ax.axvline(limit_kb, color="#d62728", lw=1.5, ls="--")
    ax.text(limit_kb * 1.04, 0.02, f"{limit_kb:.0f} KB limit", color="#d62728", fontsize=9,
            transform=ax.get_xaxis_transform(), va="bottom")

    labels: list[tuple] = []
    own_labels: list[tuple] = []
    if published:
        ax.scatter([r["size_kb"] for r in published], [r["accuracy"] for r in published], s=40, marker="o",
                   facecolor="white", edgecolor=PUBLISHED_COLOR, lw=1.5, zorder=3,
                   label="published (DCASE 2020 Task 1B)")
        for r in published:
            labels.append((r["size_kb"], r["accuracy"], _short(r["label"]), {"fontsize": 7.5, "color": "#555555"}))
    runs = sorted({r.get("run") or "" for r in own})
    for i, r in enumerate(own):
        color = OWN_COLORS[runs.index(r.get("run") or "") % len(OWN_COLORS)] if len(runs) > 1 else OWN_COLORS[i % len(OWN_COLORS)]
        marker = "X" if r.get("over_limit") else "*"
        name = r.get("variant") or _short(r.get("label") or "")
        if len(runs) > 1:
            name = f"{r.get('run')}/{name}"
        ax.scatter([r["size_kb"]], [r["accuracy"]], s=160, marker=marker, color=color, edgecolor="black",
                   lw=0.6, zorder=4, label=f"own: {name}")
        own_labels.append((r["size_kb"], r["accuracy"], name, {"fontsize": 9, "fontweight": "bold", "color": color}))

    accs = [r["accuracy"] for r in points]
    span = max(accs) - min(accs)
    ax.set_ylim(min(accs) - max(2.0, 0.12 * span), max(accs) + max(2.0, 0.12 * span))
    ax.set_xlabel("model size (KB, log scale; non-zero parameters, KB = 1024 B)")
    ax.set_ylabel("macro accuracy (%)")
    ax.set_title(title or "Accuracy vs model size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, framealpha=0.9)
    fig.tight_layout()
    _place_labels(ax, own_labels + labels)  # own rows first: they get the best places
    if published and own:
        fig.text(0.01, -0.03, "Published rows: official evaluation-set accuracy. Own rows: accuracy on the run's test split.",
                 fontsize=8, color="#555555")
    return _save(fig, base)


# ---------------------------------------------------------------- confusion matrix


def plot_confusion_matrix(metrics: dict, base: Path, *, title: str | None = None) -> list[Path]:
    """Row-normalised confusion matrix (% of each true class) with the clip counts in the cells."""
    plt = _pyplot()
    import numpy as np

    cm = np.asarray(metrics.get("confusion_matrix") or [], dtype=float)
    classes = list(metrics.get("classes") or [])
    if cm.ndim != 2 or cm.shape != (len(classes), len(classes)) or not classes:
        raise UserError(f"{base}: metrics need 'confusion_matrix' (C x C) and 'classes' to plot a confusion matrix")
    totals = cm.sum(axis=1, keepdims=True)
    pct = np.divide(100 * cm, totals, out=np.zeros_like(cm), where=totals > 0)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * n, 1.2 + 1.2 * n))
    im = ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{pct[i, j]:.1f} %\n({int(cm[i, j])})", ha="center", va="center", fontsize=9,
                    color="white" if pct[i, j] > 60 else "black")
    ax.set_xticks(range(n), classes, rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = metrics.get("accuracy")
    ax.set_title((title or "Confusion matrix") + (f"\nmacro accuracy {acc:.1f} %" if acc is not None else ""), fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of true class")
    return _save(fig, base)


# ---------------------------------------------------------------- training curves


def plot_training_curves(histories: dict[str, dict], base: Path, *, title: str | None = None) -> list[Path]:
    """Loss (train solid, validation dashed) and validation macro accuracy per epoch, one colour per run.

    histories: run name -> `RunDir.history()` ({best_epoch, epochs}).
    """
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, history) in enumerate(histories.items()):
        epochs, best = history["epochs"], history.get("best_epoch")
        color = OWN_COLORS[i % len(OWN_COLORS)]
        # NaN (JSON NaN: no validation clips) and missing values are left out of the lines.
        epochs = [{k: v for k, v in e.items() if not (isinstance(v, float) and not math.isfinite(v))} for e in epochs]
        x = [e["epoch"] for e in epochs]
        prefix = f"{name}: " if len(histories) > 1 else ""
        for key, style, what in (("train_loss", "-", "train"), ("val_loss", "--", "validation")):
            pts = [(xx, e.get(key)) for xx, e in zip(x, epochs) if e.get(key) is not None]
            if pts:
                ax_loss.plot(*zip(*pts), style, color=color, lw=1.6, label=f"{prefix}{what} loss")
        pts = [(xx, e.get("val_accuracy")) for xx, e in zip(x, epochs) if e.get("val_accuracy") is not None]
        if pts:
            ax_acc.plot(*zip(*pts), "-o", color=color, lw=1.6, ms=3, label=f"{prefix}validation")
        if best is not None and any(e["epoch"] == best and e.get("val_accuracy") is not None for e in epochs):
            acc = next(e["val_accuracy"] for e in epochs if e["epoch"] == best)
            ax_acc.scatter([best], [acc], s=120, marker="*", color=color, edgecolor="black", zorder=5,
                           label=f"{prefix}best epoch {best} ({acc:.1f} %)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_title("loss")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("macro accuracy (%)")
    ax_acc.set_title("validation accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no validation data", transform=ax.transAxes, ha="center", color="#777777")
    fig.suptitle(title or "Training curves")
    fig.tight_layout()
    return _save(fig, base)


# ---------------------------------------------------------------- run folders


def _confusion_plots(run: RunDir, out: Path, name: str, prefix: str) -> list[Path]:
    """A confusion matrix per finished variant whose metrics have one."""
    written = []
    for variant in run.variants():
        metrics = variant.metrics()
        if metrics.get("confusion_matrix") and metrics.get("classes"):
            written += plot_confusion_matrix(metrics, out / f"confusion_{prefix}{variant.name}", title=f"{name} / {variant.name}")
    return written


def write_run_plots(run_dir: str | Path, published: str | None = "dcase2020_task1b") -> list[Path]:
    """Every plot of one run into `<run_dir>/plots/`: training curves, accuracy vs size, confusion matrices."""
    run = RunDir(run_dir)
    name, out = run.path.name, run.path / "plots"
    written: list[Path] = []
    history = run.history(optional=True)
    if history is not None:
        written += plot_training_curves({name: history}, out / "training_curves", title=f"Training curves: {name}")
    written += _confusion_plots(run, out, name, "")
    rows = rows_from_run(run.path)
    limit = next((r["limit_bytes"] / KB for r in rows if r.get("limit_bytes")), SIZE_LIMIT_KB)
    use_published = published if compares_with_published(run.path) else None
    all_rows = merged_rows([run.path], use_published)
    if any(r.get("accuracy") is not None and r.get("size_kb") for r in all_rows):
        written += plot_accuracy_vs_size(all_rows, out / "accuracy_vs_size",
                                         title=f"Accuracy vs model size: {name}", limit_kb=limit)
    return written


def compares_with_published(run_dir: Path) -> bool:
    """Published DCASE 2020 Task 1B rows belong beside a scene run under the 2020 size rule only."""
    policies = {r.get("policy") for r in rows_from_run(run_dir)}
    return RunDir(run_dir).recipe().dataset.kind == "tau" and policies <= {"dcase2020", None}


def write_comparison_plots(run_dirs: list[str | Path], out_dir: str | Path, published: str | None = "dcase2020_task1b") -> list[Path]:
    """Plots comparing runs: accuracy vs size of all their variants, training curves side by side."""
    runs = [RunDir(p) for p in run_dirs]
    out_dir = Path(out_dir)
    names = [r.path.name for r in runs]
    if len(set(names)) != len(names):
        names = [str(r.path) for r in runs]
    written = plot_accuracy_vs_size(merged_rows([r.path for r in runs], published), out_dir / "accuracy_vs_size",
                                    title="Accuracy vs model size: " + ", ".join(names))
    histories = {name: h for name, r in zip(names, runs) if (h := r.history(optional=True)) is not None}
    if histories:
        written += plot_training_curves(histories, out_dir / "training_curves", title="Training curves")
    for name, run in zip(names, runs):
        written += _confusion_plots(run, out_dir, name, name.replace("/", "_") + "_")
    return written
