"""scikit-learn's 8x8 handwritten digits as a DataBundle, so image recipes run the audio pipeline.

`load_digits_bundle(seed, validation_fraction)` builds the same tensors a TAU run trains on:
inputs (N, 1, 8, 8) float32 normalised with training statistics, 10 classes '0'..'9'. The data
ship inside scikit-learn (1,797 images, no download). The test split (30 %, stratified) is fixed
whatever the seed, like TAU's fixed evaluation fold; the seed only chooses the validation images.
"""

from __future__ import annotations

import numpy as np
import torch

from dcase_effdl.data.bundle import DataBundle
from dcase_effdl.errors import UserError

TEST_FRACTION = 0.3  # of all 1,797 images, stratified by class
TEST_SPLIT_SEED = 0  # fixed: every seed is evaluated on the same test images
INPUT_SHAPE = (1, 8, 8)  # (channels, rows, columns) of one image, what a model is built for
N_CLASSES = 10


def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, taken) with round(fraction * n_c) of each class c taken."""
    kept, taken = [], []
    for label in np.unique(y):
        idx = np.flatnonzero(y == label)
        idx = idx[rng.permutation(len(idx))]
        n_taken = int(round(fraction * len(idx)))
        taken.append(idx[:n_taken])
        kept.append(idx[n_taken:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(taken))


def load_digits_bundle(seed: int = 0, validation_fraction: float = 0.3) -> DataBundle:
    """Digits as (N, 1, 8, 8) float32, normalised by the training images' mean and std (one scalar each).

    Pixels are images, not frequency bands, so one mean/std pair is used rather than per-row statistics.
    `test_filenames` are `digit_<index>` with the index into `sklearn.datasets.load_digits()`.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise UserError(f"dataset.validation_fraction must be in [0, 1), got {validation_fraction}")
    from sklearn.datasets import load_digits  # imported here: no work at import time

    digits = load_digits()
    images = digits.images.astype(np.float32)  # (1797, 8, 8), values 0..16
    labels = digits.target.astype(np.int64)
    train_idx, test_idx = _stratified_split(labels, TEST_FRACTION, np.random.default_rng(TEST_SPLIT_SEED))
    fit_rel, val_rel = _stratified_split(labels[train_idx], validation_fraction, np.random.default_rng(seed))
    fit_idx, val_idx = train_idx[fit_rel], train_idx[val_rel]

    mean = float(images[fit_idx].mean())
    std = float(images[fit_idx].std())

    def tensor(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy((images[idx] - mean) / std).unsqueeze(1).contiguous()

    return DataBundle(
        classes=[str(c) for c in range(N_CLASSES)],
        x_train=tensor(fit_idx),
        y_train=torch.from_numpy(labels[fit_idx]),
        x_val=tensor(val_idx),
        y_val=torch.from_numpy(labels[val_idx]),
        x_test=tensor(test_idx),
        y_test=torch.from_numpy(labels[test_idx]),
        test_filenames=[f"digit_{i:04d}" for i in test_idx],
        normalization={"kind": "global", "mean": mean, "std": std, "source": "sklearn.datasets.load_digits"},
    )
