"""`dcase-effdl evaluate RUNDIR --data DIR`: score every variant of a finished run on another dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from dcase_effdl.config import FeatureConfig, Recipe, from_dict, read_yaml
from dcase_effdl.errors import UserError


def variant_dirs(run_dir: Path) -> list[Path]:
    """Variant subfolders of a run folder, in the recipe's order."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run folder (no config.yaml)")
    recipe = from_dict(Recipe, read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    dirs = [run_dir / v.name for v in recipe.variants if (run_dir / v.name / "model.safetensors").is_file()]
    if not dirs:
        raise UserError(f"{run_dir}: no finished variant (no <variant>/model.safetensors)")
    return dirs


def variant_label(vdir: Path) -> str:
    """The submission label a run gave this variant (from its `<label>.meta.yaml`)."""
    metas = sorted(vdir.glob("*.meta.yaml"))
    return metas[0].name[: -len(".meta.yaml")] if metas else vdir.name


def evaluate_run(run_dir: str | Path, data: str | Path, out: str | Path | None = None) -> dict:
    """Score every variant of a finished run on the dataset at `data`.

    A labelled set (with `evaluation_setup/fold1_evaluate.csv`) gives, per variant,
    {accuracy, log_loss, n_clips, class_wise} on that fold. An evaluation set without labels
    (`fold1_test.csv` only, e.g. `audio/0.wav` ...) gives no scores: each variant's predictions are
    written as `<label>.output.csv` under `out/<variant>/` (default `<run>/<variant>/evaluation/`),
    ready for `dcase-effdl submit`, and the result holds {n_clips, output}.
    """
    from dcase_effdl.compress import load_variant
    from dcase_effdl.data.dataset import check_layout, load_dataset
    from dcase_effdl.features.cache import extract_features
    from dcase_effdl.metrics import compute_metrics
    from dcase_effdl.pipeline import normalize
    from dcase_effdl.submission.files import write_output_csv
    from dcase_effdl.training.loop import predict

    run_dir, data = Path(run_dir), Path(data)
    recipe = from_dict(Recipe, read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    feat = from_dict(FeatureConfig, read_yaml(run_dir / "features.yaml"), str(run_dir / "features.yaml"))
    stats = json.loads((run_dir / "normalization.json").read_text())
    dirs = variant_dirs(run_dir)

    labelled = (data / "evaluation_setup" / "fold1_evaluate.csv").is_file()
    fold = "evaluate" if labelled else "test"
    ds = load_dataset(data, folds=(fold,))
    check_layout(ds, folds=(fold,))
    clips = ds.fold(fold)
    names = [c.filename for c in clips]
    store = extract_features(data, names, feat, Path(recipe.cache_dir),
                             workers=recipe.train.num_workers, on_bad_audio="stop")
    x = normalize(torch.from_numpy(np.asarray(store.load_many(names), dtype=np.float32)), stats)
    results = {}
    for vdir in dirs:
        variant = load_variant(vdir / "model.safetensors")
        run_classes = json.loads((vdir / "metrics.json").read_text())["classes"]
        if labelled and list(run_classes) != list(ds.classes):
            raise UserError(f"{data}: classes {ds.classes} differ from the run's {run_classes}")
        probs = predict(variant.module, x)
        if labelled:
            m = compute_metrics(ds.labels(clips), probs, ds.classes)
            results[vdir.name] = {k: m[k] for k in ("accuracy", "log_loss", "n_clips", "class_wise")}
        else:
            target = (Path(out) / vdir.name) if out else vdir / "evaluation"
            target.mkdir(parents=True, exist_ok=True)
            path = target / f"{variant_label(vdir)}.output.csv"
            write_output_csv(path, names, probs, run_classes)
            results[vdir.name] = {"n_clips": len(names), "output": str(path)}
    return results
