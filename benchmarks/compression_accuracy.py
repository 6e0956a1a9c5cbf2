"""Accuracy cost of each compression step on real audio (ambient3), each against a float32 row trained as long.

    python benchmarks/compression_accuracy.py --seeds 0 1 2                 # recipes/ambient3.yaml
    python benchmarks/compression_accuracy.py --recipe recipes/ambient3.yaml --data PATH --seeds 0 1 2

Runs the recipe once per seed (as `dcase-effdl run RECIPE --seeds ...`, into run folders
`<out>-seed<N>/`; `--jobs N` runs N seeds at a time, each in its own `dcase-effdl run` process
with `--set seed=N`, which gives the same numbers) and prints, per variant, macro accuracy on the
evaluation fold (mean +- sample std over the seeds, and per seed), the float32 row it is matched
with, the mean of the per-seed differences from it (target: >= -1.0 pp) and the size under the
recipe's size policy. A variant is matched with the float32 row that had the same extra training:
steps without fine-tuning (float16, int8 post-training) with the parent (the variant with no
steps); steps that fine-tune for E epochs (prune, binary, int8 qat_epochs) with the variant made of
one `finetune` step of E epochs (compress/finetune.py), which the recipe must declare. Beside the
CNN: a logistic regression on each clip's mean and standard deviation per mel band over time (the
same log-mel features, the same seed's location-disjoint split; C picked on the validation split, or
by source-grouped cross-validation over the training fold when the recipe trains on all of it),
so the table says whether the CNN beats a linear model of the clip's average spectrum. The ambient3
evaluation fold has 147 clips: one clip of the smallest class moves macro accuracy by ~2.6 pp, so
read small differences with the per-seed spread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET_PP = -1.0  # allowed accuracy change against the matched float32 row, percentage points
LR_C_GRID = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength of the logistic regression, picked on validation
LR_CV_FOLDS = 4  # without a validation split: C by source-grouped 4-fold CV over the training fold
FINE_TUNE_KEYS = ("epochs", "qat_epochs")  # the step fields that count extra training epochs


def fine_tune_epochs(steps: list[dict]) -> int:
    """Extra training epochs of a variant: the sum of its steps' `epochs` / `qat_epochs`."""
    return sum(int(step.get(key) or 0) for step in steps for key in FINE_TUNE_KEYS)


def matched_rows(variants: list[dict]) -> dict[str, str | None]:
    """Variant name -> the float32 row it is compared with (None: it is a float32 row itself).

    The parent is the variant without steps; a control is a variant of one `finetune` step. A
    variant that fine-tunes for E epochs needs a control of E epochs; one that does not, the parent.
    """
    parent = next((v["name"] for v in variants if not v.get("compress")), None)
    controls = {}
    for v in variants:
        steps = v.get("compress") or []
        if len(steps) == 1 and steps[0].get("method") == "finetune":
            controls.setdefault(fine_tune_epochs(steps), v["name"])
    matched: dict[str, str | None] = {}
    for v in variants:
        steps = v.get("compress") or []
        if v["name"] == parent or v["name"] in controls.values():
            matched[v["name"]] = None
            continue
        epochs = fine_tune_epochs(steps)
        match = controls.get(epochs) if epochs else parent
        if match is None:
            need = f"a variant of one 'finetune' step with epochs: {epochs}" if epochs else "a variant without compression steps"
            raise SystemExit(f"variant '{v['name']}' ({epochs} fine-tuning epochs) has no matched float32 row: the recipe needs {need}")
        matched[v["name"]] = match
    return matched


def clip_statistics(x) -> np.ndarray:
    """(N, C, F, T) features, read a batch at a time -> (N, 2 C F): per band mean and std over time."""
    rows = [np.zeros((0, 2 * int(np.prod(tuple(x.shape[1:-1])))))]  # an empty split: no rows
    for start in range(0, len(x), 64):
        batch = x[start : start + 64].double().numpy()
        rows.append(np.concatenate([batch.mean(-1).reshape(len(batch), -1), batch.std(-1).reshape(len(batch), -1)], axis=1))
    return np.concatenate(rows)


def _lr_model(c: float):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))


def out_of_fold_probs(c: float, x: np.ndarray, y: np.ndarray, folds: np.ndarray, n_classes: int) -> np.ndarray:
    """Each clip's probabilities from a model fit on the clips of the other folds (`folds`: a fold index per clip,
    `data.dataset.grouped_folds`)."""
    probs = np.zeros((len(y), n_classes))
    for f in np.unique(folds):
        held = folds == f
        probs[held] = _lr_model(c).fit(x[~held], y[~held]).predict_proba(x[held])
    return probs


def grouped_cv_accuracy(c: float, x: np.ndarray, y: np.ndarray, folds: np.ndarray, classes: list[str]) -> float:
    """Macro accuracy of out-of-fold predictions: each training clip predicted once, by a model that never saw
    its source (source-grouped `folds`)."""
    from dcase_effdl.metrics import compute_metrics

    return compute_metrics(y, out_of_fold_probs(c, x, y, folds, len(classes)), classes)["accuracy"]


def logistic_regression_reference(bundle, folds: np.ndarray | None = None) -> dict:
    """Multinomial L2 logistic regression on standardised clip statistics, classes weighted by frequency
    (macro accuracy is the metric); C picked by validation macro accuracy, or without validation clips by
    `grouped_cv_accuracy` over the training clips' source-grouped `folds`. Returns test metrics and C."""
    from dcase_effdl.metrics import compute_metrics

    train, val, test = (clip_statistics(x) for x in (bundle.x_train, bundle.x_val, bundle.x_test))
    y_train = bundle.y_train.numpy()
    if not len(val) and folds is None:
        raise ValueError("no validation clips: pass the training clips' folds to pick C by cross-validation")
    best = None
    for c in LR_C_GRID:
        if len(val):
            score = compute_metrics(bundle.y_val.numpy(), _lr_model(c).fit(train, y_train).predict_proba(val), bundle.classes)["accuracy"]
        else:
            score = grouped_cv_accuracy(c, train, y_train, folds, bundle.classes)
        if best is None or score > best[0]:
            best = (score, c)
    c = best[1]
    metrics = compute_metrics(bundle.y_test.numpy(), _lr_model(c).fit(train, y_train).predict_proba(test), bundle.classes)
    return {"accuracy": metrics["accuracy"], "log_loss": metrics["log_loss"], "C": c}


def seed_reference(recipe_path: str, data: str, seed: int, overrides: list[str]) -> dict:
    """The logistic-regression reference on the features and split the recipe's run of `seed` used."""
    from dcase_effdl.config import load_recipe
    from dcase_effdl.pipeline import prepare_data

    from dcase_effdl.data.dataset import grouped_folds, load_dataset, validation_split

    recipe, feat = load_recipe(recipe_path, [*overrides, f"seed={seed}"])
    bundle = prepare_data(recipe, feat, data)
    train_clips, _ = validation_split(load_dataset(Path(data)).fold("train"), recipe.dataset.validation_fraction, seed)
    if len(train_clips) != len(bundle.x_train):  # clips dropped as unreadable: their order is no longer the split's
        raise SystemExit(f"{data}: {len(train_clips) - len(bundle.x_train)} training clip(s) unreadable; the reference needs them all")
    return logistic_regression_reference(bundle, grouped_folds(train_clips, LR_CV_FOLDS, seed))


def format_table(results: dict[str, list[dict]], matched: dict[str, str | None], reference: list[dict]) -> str:
    """The printed table: one row per variant, then the logistic-regression reference."""
    lines = [f"{'variant':<12} {'macro acc (%)':>14}  {'per seed (%)':<20} {'matched with':<12} {'vs matched (pp)':>15}  "
             f"{'per seed (pp)':<20} {'size (KB)':>9}  target"]
    for name, rows in results.items():
        acc = [r["accuracy"] for r in rows]
        spread = f" +-{statistics.stdev(acc):.1f}" if len(acc) > 1 else ""
        per_seed = ", ".join(f"{a:.1f}" for a in acc)
        size = max(r["size_kb"] for r in rows)
        if matched[name] is None:
            lines.append(f"{name:<12} {statistics.mean(acc):>8.1f}{spread:<6}  {per_seed:<20} {'-':<12} {'':>15}  {'':<20} "
                         f"{size:>9.2f}  -")
            continue
        deltas = [a - r["accuracy"] for a, r in zip(acc, results[matched[name]])]
        delta = statistics.mean(deltas)
        ok = "met" if delta >= TARGET_PP else "MISSED"
        lines.append(f"{name:<12} {statistics.mean(acc):>8.1f}{spread:<6}  {per_seed:<20} {matched[name]:<12} {delta:>+15.1f}  "
                     f"{', '.join(f'{d:+.1f}' for d in deltas):<20} {size:>9.2f}  {ok}")
    acc = [r["accuracy"] for r in reference]
    spread = f" +-{statistics.stdev(acc):.1f}" if len(acc) > 1 else ""
    c_values = ", ".join(f"{r['C']:g}" for r in reference)
    lines.append(f"{'logreg':<12} {statistics.mean(acc):>8.1f}{spread:<6}  {', '.join(f'{a:.1f}' for a in acc):<20} "
                 f"(per-clip band mean/std; C per seed: {c_values})")
    return "\n".join(lines)


def run_parallel(recipe: str, seeds: list[int], data: str | None, out: str, overrides: list[str], jobs: int) -> dict[int, dict]:
    """Each seed in its own `dcase-effdl run` process, `jobs` at a time, each with cores // jobs threads.
    Returns {seed: {wall_min, cpu_min}}: CPU time (user + system) does not depend on the other load."""
    from dcase_effdl.errors import UserError
    from dcase_effdl.seeds import check_seeds, seed_run_dir

    check_seeds(seeds, overrides)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    # The pipeline sets torch's threads from train.threads (0: every physical core), not from OMP_NUM_THREADS;
    # train.threads is not hashed, so this changes neither the run folder nor the numbers' recipe.
    if not any(o.split("=", 1)[0].strip() == "train.threads" for o in overrides):
        overrides = [*overrides, f"train.threads={threads}"]
    pending, running, times = list(seeds), {}, {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                seed = pending.pop(0)
                log = Path(f"{seed_run_dir(out, seed)}.log")
                log.parent.mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, "-m", "dcase_effdl", "run", recipe, "--out", str(seed_run_dir(out, seed)),
                       *(["--data", data] if data is not None else []),
                       *[a for o in [*overrides, f"seed={seed}"] for a in ("--set", o)]]
                print(f"[seeds] seed {seed} -> {seed_run_dir(out, seed)} (log: {log})", flush=True)
                with log.open("w") as sink:
                    proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
                running[proc.pid] = (seed, log, time.perf_counter())
            pid, status, usage = os.wait4(-1, 0)  # the next of our processes to end, with its CPU time
            if pid not in running:
                continue
            seed, log, started = running.pop(pid)
            times[seed] = {"wall_min": (time.perf_counter() - started) / 60, "cpu_min": (usage.ru_utime + usage.ru_stime) / 60}
            if os.waitstatus_to_exitcode(status) != 0:
                tail = log.read_text().strip().splitlines()[-1:] or ["(no output)"]
                raise UserError(f"seed {seed}: dcase-effdl run failed ({tail[0]}); see {log}")
    finally:
        for pid in running:  # a failed seed stops the others: their numbers would not be reported
            os.kill(pid, 15)
            os.waitpid(pid, 0)
    return times

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "ambient3.yaml"))
    parser.add_argument("--data", help="dataset root (default: the recipe's dataset.root)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench_compression_accuracy", help="run folders <out>-seed<N>/")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at a time, each in its own process")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, as in dcase-effdl run")
    args = parser.parse_args(argv)

    from dcase_effdl.config import load_recipe, to_dict
    from dcase_effdl.errors import UserError
    from dcase_effdl.machine import describe
    from dcase_effdl.rundir import VariantDir
    from dcase_effdl.seeds import run_seeds, seed_run_dir

    try:
        recipe, _ = load_recipe(args.recipe, args.set)
        variants = [to_dict(v) for v in recipe.variants]
        matched = matched_rows(variants)
        data = args.data if args.data is not None else recipe.dataset.root
        start = time.perf_counter()
        times = {}
        if args.jobs > 1:
            times = run_parallel(args.recipe, args.seeds, args.data, args.out, args.set, args.jobs)
        else:
            run_seeds(args.recipe, args.seeds, data=args.data, out=args.out, overrides=args.set)
        minutes = (time.perf_counter() - start) / 60
        reference = [seed_reference(args.recipe, data, seed, args.set) for seed in args.seeds]
    except UserError as exc:
        print(f"error: {exc}")
        return 2
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        for v in variants:
            variant = VariantDir(seed_run_dir(args.out, seed) / v["name"])
            metrics, size = variant.metrics(), variant.size()
            results.setdefault(v["name"], []).append({"accuracy": metrics["accuracy"], "size_kb": size["size_kb"]})

    print("\n" + describe())
    print(f"\nCompression accuracy cost: recipe {args.recipe}, data {data}, {len(args.seeds)} seed(s) "
          f"({', '.join(map(str, args.seeds))}), {minutes:.1f} min; macro accuracy on the evaluation fold; "
          f"target: within {abs(TARGET_PP)} pp of the matched float32 row")
    print(format_table(results, matched, reference))
    for seed, t in sorted(times.items()):
        print(f"seed {seed}: one dcase-effdl run process, {t['wall_min']:.1f} min wall, {t['cpu_min']:.1f} min CPU (user + system)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
