"""Source-grouped k-fold cross-validation of a recipe over its training fold: the numbers behind recipes/ambient3.yaml.

    python benchmarks/grouped_cv.py --set train.balanced_batches=true          # recipes/ambient3.yaml
    python benchmarks/grouped_cv.py --recipe R --data PATH --k 4 --seed 0 --every 5 --set KEY=VALUE ...

The training fold is cut into k folds by `data.dataset.grouped_folds` (every clip of a location in one
fold, each class spread evenly; fold seed 1234, fixed, so settings are compared on the same folds).
For each fold the recipe's network trains on the other k - 1 for train.epochs (last epoch: no
validation split, no best-epoch choice) and predicts the held-out fold, so each training clip is
predicted once by a network that never heard its source. Prints the macro accuracy (and class-wise)
of these out-of-fold predictions, with `--every N` also at every N-th epoch, and the logistic
regression of benchmarks/compression_accuracy.py on the same folds (C = 1) for scale.
fold1_evaluate is not used.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
FOLD_SEED = 1234  # the folds do not depend on --seed: every setting is compared on the same folds


class _EveryN:
    """Hook: predictions of the held-out clips after every `every`-th epoch."""

    def __init__(self, x, every: int):
        self.x, self.every, self.probs = x, every, {}

    def on_epoch_end(self, epoch, model):
        from dcase_effdl.training.loop import predict

        if epoch % self.every == 0:
            self.probs[epoch] = predict(model, self.x)
            model.train()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "ambient3.yaml"))
    parser.add_argument("--data", help="dataset root (default: the recipe's dataset.root)")
    parser.add_argument("--k", type=int, default=4, help="folds")
    parser.add_argument("--seed", type=int, default=0, help="training seed (fold f trains with seed + 100 f)")
    parser.add_argument("--every", type=int, default=0, help="also score the out-of-fold predictions every N epochs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override, as in dcase-effdl run")
    args = parser.parse_args(argv)

    from dcase_effdl.config import load_recipe
    from dcase_effdl.data.bundle import DataBundle
    from dcase_effdl.data.dataset import grouped_folds, load_dataset, validation_split
    from dcase_effdl.errors import UserError
    from dcase_effdl.machine import training_threads
    from dcase_effdl.metrics import compute_metrics
    from dcase_effdl.pipeline import prepare_data, resolve
    from dcase_effdl.training.loop import FineTune, fit, predict, seed_everything

    try:
        recipe, feat = load_recipe(args.recipe, [*args.set, f"seed={args.seed}", "dataset.validation_fraction=0"])
        spec = resolve(recipe, feat, args.recipe).spec  # model and train options checked before any extraction
        data = args.data if args.data is not None else recipe.dataset.root
        torch.set_num_threads(training_threads(recipe.train.threads))
        with contextlib.redirect_stdout(io.StringIO()):
            bundle = prepare_data(recipe, feat, data)
        clips, _ = validation_split(load_dataset(Path(data)).fold("train"), 0.0, args.seed)
        if len(clips) != len(bundle.x_train):
            raise UserError(f"{data}: {len(clips) - len(bundle.x_train)} training clip(s) unreadable; the folds need them all")
        folds = grouped_folds(clips, args.k, FOLD_SEED)
    except UserError as exc:
        print(f"error: {exc}")
        return 2
    x, y = bundle.x_train[:], bundle.y_train
    oof = np.zeros((len(y), bundle.n_classes))
    curves: dict[int, np.ndarray] = {}
    for f in range(args.k):
        fit_idx, held = np.where(folds != f)[0], np.where(folds == f)[0]
        fold_bundle = DataBundle(bundle.classes, x[fit_idx], y[fit_idx], x[:0], y[:0], x[held], y[held], [], bundle.normalization)
        seed_everything(args.seed + 100 * f)
        model = spec.build()
        hook = _EveryN(x[held], args.every) if args.every else None
        fit(model, fold_bundle, recipe.train, seed=args.seed + 100 * f, tune=FineTune(hooks=(hook,) if hook else ()), desc=f"fold {f}")
        oof[held] = predict(model, x[held])
        for epoch, probs in (hook.probs.items() if hook else ()):
            curves.setdefault(epoch, np.zeros_like(oof))[held] = probs

    def line(probs) -> str:
        m = compute_metrics(y.numpy(), probs, bundle.classes)
        cw = " / ".join(f"{v['accuracy']:.1f}" for v in m["class_wise"].values())
        return f"{m['accuracy']:.1f} % ({cw})"

    spec_lr = importlib.util.spec_from_file_location("compression_accuracy", REPO / "benchmarks" / "compression_accuracy.py")
    bench = importlib.util.module_from_spec(spec_lr)
    spec_lr.loader.exec_module(bench)
    lr = bench.out_of_fold_probs(1.0, bench.clip_statistics(x), y.numpy(), folds, bundle.n_classes)
    print(f"\n{args.k}-fold source-grouped CV of {args.recipe} over fold1_train ({len(y)} clips), seed {args.seed}, "
          f"overrides {args.set or 'none'}; out-of-fold macro accuracy ({' / '.join(bundle.classes)}):")
    print(f"CNN, last epoch ({recipe.train.epochs}): {line(oof)}")
    for epoch, probs in sorted(curves.items()):
        print(f"  after epoch {epoch}: {line(probs)}")
    print(f"logistic regression (C = 1): {line(lr)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
