"""Training throughput (clips per second per epoch) on cached features, and how much of it is data loading.

    python benchmarks/train_throughput.py                          # quickstart recipe (2020 baseline), 2 threads
    python benchmarks/train_throughput.py --recipe recipes/hu_fast.yaml --epochs 3 --threads 2
    python benchmarks/train_throughput.py --set train.mixup_alpha=0.4 --set train.spec_augment={}

The features are extracted (or read from the cache) first and are not timed. Then `train.fit` runs
the recipe's training for a few epochs; each epoch's mini-batch loop is split into data time
(reading the batch's rows from the packed feature cache, normalising, augmentation, copies to the
device) and compute time (forward, backward, optimiser step). Validation is excluded. Rows are read
in the training process (positioned reads served by the page cache), so there are no loader worker
processes to wait for: the data share shows whether anything but the model's compute is on the
critical path. Numbers are medians over the epochs
after the first (warm-up).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dcase_effdl.config import load_recipe
from dcase_effdl.machine import describe
from dcase_effdl.pipeline import prepare_data, resolve
from dcase_effdl.training.loop import FineTune, fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--data", default=None, help="dataset root (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=4, help="timed epochs (+1 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    recipe, feat = load_recipe(args.recipe, args.set)
    spec = resolve(recipe, feat, args.recipe).spec
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    bundle = prepare_data(recipe, feat, args.data)
    prep = time.perf_counter() - start
    torch.manual_seed(recipe.seed)
    model = spec.build()
    cfg = recipe.train
    cfg.device = "cpu"
    history = fit(model, bundle, cfg, seed=recipe.seed, tune=FineTune(epochs=args.epochs + 1), desc="benchmark")
    rows = history.epochs[1:]  # the first epoch warms up allocators and kernels
    n = len(bundle.x_train)
    train_s = statistics.median(r["train_seconds"] for r in rows)
    data_s = statistics.median(r["data_seconds"] for r in rows)
    print(describe())
    print(f"recipe {args.recipe}: model {spec.family}, input {tuple(bundle.input_shape)}, batch {cfg.batch_size}, "
          f"{n} training clips, {args.threads} threads (features ready in {prep:.1f} s, not timed)")
    print(f"{'epoch':>5} {'clips/s':>9} {'train s':>8} {'data s':>7} {'data %':>7}")
    for r in rows:
        print(f"{r['epoch']:5d} {n / r['train_seconds']:9.1f} {r['train_seconds']:8.2f} {r['data_seconds']:7.3f} "
              f"{100 * r['data_seconds'] / r['train_seconds']:6.1f}%")
    print(f"median: {n / train_s:.1f} clips/s per epoch; data loading {100 * data_s / train_s:.1f} % "
          f"of the loop, compute {100 * (1 - data_s / train_s):.1f} %")


if __name__ == "__main__":
    main()
