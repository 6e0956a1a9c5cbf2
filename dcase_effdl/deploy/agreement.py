"""Does an exported model predict what the PyTorch variant predicts? Compared on the run's own test features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dcase_effdl.errors import UserError
from dcase_effdl.rundir import RunDir

MIN_AGREEMENT = 0.99  # share of test clips whose argmax class must match (issue 15)


def run_test_features(run: RunDir) -> torch.Tensor:
    """The normalised test-fold features (N, C, F, T) float32 the run scored its variants on.

    Rebuilt as the pipeline builds them: the recipe's dataset (fold1_evaluate of `dataset.root`,
    recorded absolute in config.yaml) and feature definition, through the feature cache, normalised
    with the run's normalization.json; the digits set from its seed.
    """
    from dcase_effdl.pipeline import normalize

    recipe = run.recipe()
    if recipe.dataset.kind == "digits":
        from dcase_effdl.data.digits import load_digits_bundle

        return load_digits_bundle(recipe.seed, recipe.dataset.validation_fraction).x_test
    from dcase_effdl.data.dataset import check_layout, load_dataset
    from dcase_effdl.features.cache import extract_features

    root = Path(recipe.dataset.root)
    ds = load_dataset(root, folds=("evaluate",))
    check_layout(ds, folds=("evaluate",))
    names = [c.filename for c in ds.fold("evaluate")]
    store = extract_features(root, names, run.features(), Path(recipe.cache_dir), workers=recipe.train.num_workers,
                             on_bad_audio=recipe.dataset.on_bad_audio)
    bad = {name for name, _ in getattr(store, "problems", []) or []}  # dropped by the run as well
    names = [n for n in names if n not in bad]
    if not names:
        raise UserError(f"{root}: no readable test clip to compare the exported model on")
    x = torch.from_numpy(np.asarray(store.load_many(names), dtype=np.float32))
    return normalize(x, run.normalization())


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def agreement(reference_probs: np.ndarray, probs: np.ndarray) -> dict:
    """{n_clips, argmax_agreement (0..1), n_disagree, max_prob_diff} of two (N, n_classes) probability arrays."""
    if reference_probs.shape != probs.shape:
        raise UserError(f"exported model gives probabilities shaped {probs.shape}, PyTorch {reference_probs.shape}")
    same = reference_probs.argmax(axis=1) == probs.argmax(axis=1)
    return {"n_clips": int(len(same)), "argmax_agreement": float(same.mean()) if len(same) else 1.0,
            "n_disagree": int((~same).sum()),
            "max_prob_diff": float(np.abs(reference_probs - probs).max()) if len(same) else 0.0}
