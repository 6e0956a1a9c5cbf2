"""`dcase-effdl evaluate RUNDIR --data DIR`: score every variant of a finished run on another dataset."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from dcase_effdl.errors import UserError
from dcase_effdl.rundir import EvaluationDir, RunDir


def evaluate_run(run_dir: str | Path, data: str | Path, out: str | Path | None = None) -> dict:
    """Score every variant of a finished run on the dataset at `data`.

    A labelled set (with `evaluation_setup/fold1_evaluate.csv`) gives, per variant,
    {accuracy, log_loss, n_clips, class_wise} on that fold. An evaluation set without labels
    (`fold1_test.csv` only, e.g. `audio/0.wav` ...) gives no scores: each variant's predictions are
    written as `<label>.output.csv` with `evaluation.json` (`rundir.EvaluationDir`) under
    `out/<variant>/`, by default `<run>/<variant>/evaluation/`, where `dcase-effdl submit` packages
    them; the result holds {n_clips, output}.
    """
    run, data = RunDir(run_dir), Path(data)
    labelled = (data / "evaluation_setup" / "fold1_evaluate.csv").is_file()
    with contextlib.ExitStack() as stack:
        if not labelled and out is None:  # writes <run>/<variant>/evaluation/: not while a run rewrites the folder
            stack.enter_context(run.lock(lambda message: print(message, file=sys.stderr)))
        recipe, feat, stats, variants = run.recipe(), run.features(), run.normalization(), run.variants()
        return _evaluate(recipe, feat, stats, variants, data, labelled, out)


def _evaluate(recipe, feat, stats, variants, data: Path, labelled: bool, out) -> dict:
    """The scores or the written outputs of `evaluate_run` (see there)."""
    from dcase_effdl.compress import load_variant
    from dcase_effdl.data.bundle import Features
    from dcase_effdl.data.dataset import check_layout, load_dataset
    from dcase_effdl.features.cache import extract_features
    from dcase_effdl.features.packed import pack
    from dcase_effdl.metrics import compute_metrics
    from dcase_effdl.training.loop import predict

    fold = "evaluate" if labelled else "test"
    ds = load_dataset(data, folds=(fold,))
    check_layout(ds, folds=(fold,))
    clips = ds.fold(fold)
    names = [c.filename for c in clips]
    store = extract_features(data, names, feat, Path(recipe.cache_dir),
                             workers=recipe.train.num_workers, on_bad_audio="stop")
    x = Features(pack(store, names), stats)  # read a batch at a time by `predict`
    results = {}
    for vdir in variants:
        variant = load_variant(vdir.model_path)
        run_classes = vdir.metrics()["classes"]
        if labelled and list(run_classes) != list(ds.classes):
            raise UserError(f"{data}: classes {ds.classes} differ from the run's {run_classes}")
        probs = predict(variant.module, x, recipe.train.batch_size)  # memory: one training batch
        if labelled:
            m = compute_metrics(ds.labels(clips), probs, ds.classes)
            results[vdir.name] = {k: m[k] for k in ("accuracy", "log_loss", "n_clips", "class_wise")}
        else:
            target = EvaluationDir(Path(out) / vdir.name) if out else vdir.evaluation
            path = target.write(vdir.label or vdir.name, names, probs, run_classes, data, vdir.model_path)
            results[vdir.name] = {"n_clips": len(names), "output": str(path)}
    return results
