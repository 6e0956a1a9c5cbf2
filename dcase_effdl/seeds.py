"""One recipe over several training seeds: a run folder per seed, then mean +- std per variant and a spread leaderboard.

    dcase-effdl run recipes/quickstart.yaml --seeds 0 1 2 3 4

Seed N runs the recipe with `seed=N` (batch order, augmentation, initial weights and the
location-disjoint validation split; the dataset, a synthetic one included, stays the same) into
`<run folder>-seed<N>/`, where the run folder is `--out` or `<out_dir>/<recipe name>`: each one is an
ordinary run folder (leaderboard, plots and submit work on it), and one that has finished is reused,
so adding a seed trains only that seed. The spread over the seeds goes to `<run folder>-seeds.csv`,
one row per variant: mean and sample standard deviation (n - 1) of macro accuracy, log loss and
size, the number of seeds, the seeds and the per-seed accuracies.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Sequence

from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_write
from dcase_effdl.reporting.leaderboard import CSV_DIGITS, TABLE_DIGITS, rows_from_run

# (key, header) of the spread CSV; `<metric>_mean` / `<metric>_std` for each metric in METRICS.
METRICS = ("accuracy", "log_loss", "size_kb")
COLUMNS: list[tuple[str, str]] = [
    ("rank", "Rank"),
    ("variant", "Variant"),
    ("label", "Submission label"),
    ("accuracy_mean", "Accuracy mean (%)"),
    ("accuracy_std", "Accuracy std (pp)"),
    ("log_loss_mean", "Logloss mean"),
    ("log_loss_std", "Logloss std"),
    ("size_kb_mean", "Size mean (KB)"),
    ("size_kb_std", "Size std (KB)"),
    ("n_params", "Parameters"),
    ("n_seeds", "Seeds (n)"),
    ("seeds", "Seeds"),
    ("accuracies", "Accuracy per seed (%)"),
    ("complexity_management", "Complexity management"),
]


def seed_run_dir(base: str | Path, seed: int) -> Path:
    """The run folder of `seed`: `<base>-seed<seed>` beside the single-seed run folder `base`."""
    base = Path(base)
    return base.with_name(f"{base.name}-seed{seed}")


def spread_csv_path(base: str | Path) -> Path:
    base = Path(base)
    return base.with_name(f"{base.name}-seeds.csv")


def check_seeds(seeds: Sequence[int], overrides: Sequence[str] = ()) -> list[int]:
    """The seeds as given, refusing an empty list, repeats and a `--set seed=` that would contradict them."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise UserError("--seeds: give at least one seed, e.g. --seeds 0 1 2")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise UserError(f"--seeds: seed {repeated[0]} given twice; each seed is one run")
    if any(o.split("=", 1)[0].strip() == "seed" for o in overrides):
        raise UserError("--seeds sets the recipe's seed for each run; drop --set seed=...")
    return seeds


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; NaN for one value) of `values`."""
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return mean, std


def aggregate(run_dirs: dict[int, Path]) -> list[dict]:
    """One spread row per variant from finished run folders {seed: run folder}, ranked by mean accuracy.

    Every variant must have finished in every run folder: a mean over fewer seeds than the header
    says would be a different number.
    """
    per_seed = {seed: {r["variant"]: r for r in rows_from_run(d)} for seed, d in run_dirs.items()}
    seeds = list(run_dirs)
    names = list(per_seed[seeds[0]])
    for seed in seeds:
        have = per_seed[seed]
        missing = [n for n in names if n not in have] or [n for n in have if n not in names]
        if missing:
            raise UserError(f"{run_dirs[seed]}: variant '{missing[0]}' is not in every seed's run folder; rerun that seed")
    rows = []
    for name in names:
        runs = [per_seed[seed][name] for seed in seeds]
        row = {"variant": name, "n_seeds": len(seeds), "seeds": seeds, "accuracies": [r["accuracy"] for r in runs]}
        for key in METRICS:
            values = [r[key] for r in runs]
            if any(v is None for v in values):
                row[f"{key}_mean"] = row[f"{key}_std"] = None
            else:
                row[f"{key}_mean"], row[f"{key}_std"] = mean_std(values)
        labels = {r["label"] for r in runs}
        row["label"] = labels.pop() if len(labels) == 1 else None
        row["n_params"] = runs[0]["n_params"]
        row["complexity_management"] = runs[0]["complexity_management"]
        rows.append(row)
    ranked = sorted(rows, key=lambda r: (r["accuracy_mean"] is None, -(r["accuracy_mean"] or 0.0), r["size_kb_mean"] or 0.0))
    return [dict(r, rank=i + 1) for i, r in enumerate(ranked)]


def _digits(key: str, table: bool) -> int | None:
    """Digits of a spread column: those of its metric in the leaderboard (a std like its mean)."""
    metric = "accuracy" if key == "accuracies" else key.removesuffix("_mean").removesuffix("_std")
    return (TABLE_DIGITS if table else CSV_DIGITS).get(metric)


def _cell(key: str, value, table: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-" if table else ""
    if key == "seeds":
        return " ".join(str(s) for s in value)
    if key == "accuracies":
        return " ".join(f"{v:.{_digits(key, table)}f}" for v in value)
    digits = _digits(key, table)
    return f"{value:.{digits}f}" if digits is not None and isinstance(value, float) else str(value)


def write_spread_csv(path: str | Path, rows: list[dict]) -> Path:
    """The spread rows as CSV with the COLUMNS headers (empty cell for None; std empty for one seed)."""
    path = Path(path)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([header for _, header in COLUMNS])
    for row in rows:
        writer.writerow([_cell(key, row.get(key)) for key, _ in COLUMNS])
    atomic_write(path, text.getvalue())
    return path


def format_spread(rows: list[dict]) -> str:
    """One line per variant: macro accuracy, log loss and size as mean +- std over the seeds."""
    lines = []
    width = max(len(r["variant"]) for r in rows)
    for r in rows:
        acc = f"{_cell('accuracy_mean', r['accuracy_mean'], True)} +- {_cell('accuracy_std', r['accuracy_std'], True)} %"
        loss = f"{_cell('log_loss_mean', r['log_loss_mean'], True)} +- {_cell('log_loss_std', r['log_loss_std'], True)}"
        size = f"{_cell('size_kb_mean', r['size_kb_mean'], True)} +- {_cell('size_kb_std', r['size_kb_std'], True)} KB"
        lines.append(f"{r['variant']:<{width}}  macro accuracy {acc}  log loss {loss}  size {size}  "
                     f"({r['n_seeds']} seeds: {_cell('seeds', r['seeds'])}; per seed {_cell('accuracies', r['accuracies'], True)})")
    return "\n".join(lines)


def run_seeds(recipe_path: str | Path, seeds: Sequence[int], data: str | None = None, out: str | None = None,
              overrides: Sequence[str] = (), resume: bool = False, restart: bool = False) -> Path:
    """Run the recipe once per seed (pipeline.run), then write and print the spread; returns the CSV path."""
    from dcase_effdl.config import load_recipe
    from dcase_effdl.pipeline import log, run

    seeds = check_seeds(seeds, overrides)
    recipe, _ = load_recipe(recipe_path, overrides)  # a bad recipe stops here, before the first seed
    base = Path(out) if out else Path(recipe.out_dir) / recipe.name
    run_dirs = {}
    for i, seed in enumerate(seeds):
        log(f"[seeds] seed {seed} ({i + 1} of {len(seeds)}) -> {seed_run_dir(base, seed)}")
        run_dirs[seed] = run(recipe_path, data=data, out=str(seed_run_dir(base, seed)),
                             overrides=[*overrides, f"seed={seed}"], resume=resume, restart=restart)
    path = spread_csv_path(base)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 alone writes (see training/distributed.py)
        return path
    rows = aggregate(run_dirs)
    write_spread_csv(path, rows)
    log(f"\nover {len(seeds)} seeds (mean +- sample std):")
    log(format_spread(rows))
    log(f"\nspread: {path}")
    return path
