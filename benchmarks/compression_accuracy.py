"""Accuracy cost of each compression step on real audio (ambient3): macro accuracy vs the float32 parent.

    python benchmarks/compression_accuracy.py                       # ../shared/data/ambient3-development
    python benchmarks/compression_accuracy.py --epochs 40 --seeds 0 1 2 --data PATH

Trains the 2020 baseline CNN (16 kHz front end) once per seed through the normal pipeline, then
derives the variants float16, int8 (post-training), pruning to 50 % (+ fine-tuning) and 1-bit weights
(+ straight-through fine-tuning, batch-norm re-estimation). Prints, per variant, macro accuracy on the
evaluation fold, the difference from float32 in percentage points (target: >= -1.0 pp), log loss
and size under the dcase2020 rule. The ambient3 evaluation fold has 147 clips: one clip of the
smallest class moves its class accuracy by several points, so read small differences with care and
average over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET_PP = -1.0  # allowed accuracy change against the float32 parent, percentage points

VARIANTS = [
    {"name": "float32", "compress": []},
    {"name": "float16", "compress": [{"method": "float16"}]},
    {"name": "int8", "compress": [{"method": "int8"}]},
    {"name": "prune50", "compress": [{"method": "prune", "amount": 0.5, "epochs": 10, "lr": 0.0005}]},
    {"name": "binary", "compress": [{"method": "binary", "epochs": 10, "lr": 0.0005}]},
]


def write_recipe(path: Path, seed: int, epochs: int, features: Path, fine_tune_epochs: int) -> None:
    variants = json.loads(json.dumps(VARIANTS))
    for v in variants:
        for step in v["compress"]:
            if "epochs" in step:
                step["epochs"] = fine_tune_epochs
    recipe = {
        "name": f"compression_accuracy_seed{seed}",
        "seed": seed,
        "features": str(features),
        "dataset": {"root": "unused (--data)", "validation_fraction": 0.3},
        "model": {"name": "dcase2020_baseline"},
        "train": {"epochs": epochs, "batch_size": 16, "optimizer": "adam", "lr": 0.001},
        "variants": variants,
        "size_policy": "dcase2020",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "ambient3-development"))
    parser.add_argument("--features", default=str(REPO / "features" / "dcase2020_baseline_16k.yaml"))
    parser.add_argument("--epochs", type=int, default=30, help="training epochs of the float32 parent")
    parser.add_argument("--fine-tune-epochs", type=int, default=10, help="fine-tuning epochs of prune and binary")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="runs/bench_compression_accuracy")
    args = parser.parse_args(argv)

    from dcase_effdl.machine import describe
    from dcase_effdl.pipeline import run
    from dcase_effdl.rundir import VariantDir

    if not Path(args.data).is_dir():
        print(f"{args.data}: data folder not found (give --data)")
        return 2
    results: dict[str, list[dict]] = {}
    for seed in args.seeds:
        out = Path(args.out) / f"seed{seed}"
        recipe = out.parent / f"recipe_seed{seed}.yaml"
        write_recipe(recipe, seed, args.epochs, Path(args.features).resolve(), args.fine_tune_epochs)
        run(recipe, data=args.data, out=str(out))
        for v in VARIANTS:
            variant = VariantDir(out / v["name"])
            metrics, size = variant.metrics(), variant.size()
            results.setdefault(v["name"], []).append({"accuracy": metrics["accuracy"], "log_loss": metrics["log_loss"],
                                                      "size_kb": size["size_kb"]})

    parent = [r["accuracy"] for r in results["float32"]]
    print("\n" + describe())
    print(f"\nCompression accuracy cost on {args.data} ({len(args.seeds)} seed(s), {args.epochs} epochs, "
          f"fine-tuning {args.fine_tune_epochs} epochs); target: within {abs(TARGET_PP)} pp of float32")
    print(f"{'variant':<10} {'macro acc (%)':>14} {'vs float32 (pp)':>16} {'log loss':>9} {'size (KB)':>10}  target")
    for name, rows in results.items():
        acc = [r["accuracy"] for r in rows]
        delta = statistics.mean(a - p for a, p in zip(acc, parent))
        spread = f" +-{statistics.stdev(acc):.1f}" if len(acc) > 1 else ""
        ok = "-" if name == "float32" else ("met" if delta >= TARGET_PP else "MISSED")
        print(f"{name:<10} {statistics.mean(acc):>9.1f}{spread:<5} {delta:>+16.1f} {statistics.mean(r['log_loss'] for r in rows):>9.3f} "
              f"{rows[0]['size_kb']:>10.2f}  {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
