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


def evaluate_run(run_dir: str | Path, data: str | Path) -> dict:
    """{variant: {accuracy, log_loss, n_clips, class_wise}} on fold1_evaluate of the dataset at `data`."""
    from dcase_effdl.compress import load_variant
    from dcase_effdl.dataset import check_layout, load_dataset
    from dcase_effdl.feature_cache import extract_features
    from dcase_effdl.metrics import compute_metrics
    from dcase_effdl.pipeline import normalize
    from dcase_effdl.train import predict

    run_dir = Path(run_dir)
    recipe = from_dict(Recipe, read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    feat = from_dict(FeatureConfig, read_yaml(run_dir / "features.yaml"), str(run_dir / "features.yaml"))
    stats = json.loads((run_dir / "normalization.json").read_text())
    dirs = variant_dirs(run_dir)

    ds = load_dataset(data)
    check_layout(ds, folds=("evaluate",))
    clips = ds.fold("evaluate")
    store = extract_features(Path(data), [c.filename for c in clips], feat, Path(recipe.cache_dir),
                             workers=recipe.train.num_workers, on_bad_audio="stop")
    x = normalize(torch.from_numpy(np.asarray(store.load_many([c.filename for c in clips]), dtype=np.float32)), stats)
    results = {}
    for vdir in dirs:
        variant = load_variant(vdir / "model.safetensors")
        run_classes = json.loads((vdir / "metrics.json").read_text())["classes"]
        if list(run_classes) != list(ds.classes):
            raise UserError(f"{data}: classes {ds.classes} differ from the run's {run_classes}")
        probs = predict(variant.module, x)
        m = compute_metrics(ds.labels(clips), probs, ds.classes)
        results[vdir.name] = {k: m[k] for k in ("accuracy", "log_loss", "n_clips", "class_wise")}
    return results
