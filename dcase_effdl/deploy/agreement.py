"""Does an exported model predict what the PyTorch variant predicts? Compared on the run's own test features."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcase_effdl.errors import UserError
from dcase_effdl.rundir import RunDir

MIN_AGREEMENT = 0.99  # share of test clips whose argmax class must match (issue 15)


def _test_clips(run: RunDir) -> tuple[Path, list[str]]:
    """(dataset root, test-fold file names) of a run on audio (fold1_evaluate of `dataset.root`)."""
    from dcase_effdl.data.dataset import check_layout, load_dataset

    root = Path(run.recipe().dataset.root)
    ds = load_dataset(root, folds=("evaluate",))
    check_layout(ds, folds=("evaluate",))
    return root, [c.filename for c in ds.fold("evaluate")]


def run_test_audio(run: RunDir, n: int) -> tuple[np.ndarray, list[str]]:
    """(audio (n, C, samples) float32 as the feature extractor reads it, names) of the first `n` test clips."""
    from dcase_effdl.features.audio import load_audio

    if run.recipe().dataset.kind == "digits":
        raise UserError(f"{run.path}: an image run has no audio front end to export")
    root, names = _test_clips(run)
    feat = run.features()
    names = names[:n]
    return np.stack([load_audio(root / name, feat) for name in names]), names


def max_db_diff(reference: np.ndarray, features: np.ndarray, cfg) -> float:
    """Largest difference of two feature arrays in dB (log features: difference x dB per unit; linear: ratio)."""
    from dcase_effdl.deploy.frontend import db_scale

    if cfg.log == "none":
        ratio = (features.astype(np.float64) + cfg.log_eps) / (reference.astype(np.float64) + cfg.log_eps)
        return float(np.abs(20.0 / cfg.power * np.log10(ratio)).max())
    return float(np.abs(features.astype(np.float64) - reference.astype(np.float64)).max() * db_scale(cfg))


def run_test_features(run: RunDir):
    """The normalised test-fold features (N, C, F, T) float32 the run scored its variants on (a tensor, or
    `data.bundle.Features` read a batch at a time).

    Rebuilt as the pipeline builds them: the recipe's dataset (fold1_evaluate of `dataset.root`,
    recorded absolute in config.yaml) and feature definition, through the feature cache (packed),
    normalised with the run's normalization.json; the digits set from its seed.
    """
    recipe = run.recipe()
    if recipe.dataset.kind == "digits":
        from dcase_effdl.data.digits import load_digits_bundle

        return load_digits_bundle(recipe.seed, recipe.dataset.validation_fraction).x_test
    from dcase_effdl.features.cache import extract_features

    root, names = _test_clips(run)
    store = extract_features(root, names, run.features(), Path(recipe.cache_dir), workers=recipe.train.num_workers,
                             on_bad_audio=recipe.dataset.on_bad_audio)
    bad = {name for name, _ in getattr(store, "problems", []) or []}  # dropped by the run as well
    names = [n for n in names if n not in bad]
    if not names:
        raise UserError(f"{root}: no readable test clip to compare the exported model on")
    from dcase_effdl.data.bundle import Features
    from dcase_effdl.features.packed import pack

    return Features(pack(store, names), run.normalization())


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
