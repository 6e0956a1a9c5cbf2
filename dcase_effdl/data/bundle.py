"""The tensors a training run needs, whatever their source (TAU audio features or images)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DataBundle:
    """Normalised inputs (N, C, F, T) float32 and int64 labels for the train/val/test splits.

    Normalisation uses training-fold statistics only; `normalization` holds them so that a finished
    run can normalise another dataset the same way. `y_test` is None for unlabeled evaluation sets.
    """

    classes: list[str]
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor | None
    test_filenames: list[str]
    normalization: dict = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, frequency bins, frames) of one example."""
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return len(self.classes)
