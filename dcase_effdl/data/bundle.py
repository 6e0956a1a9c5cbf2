"""The inputs a training run needs, whatever their source (packed TAU audio features read per batch, or images)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Clips per chunk of the statistics pass: 16 clips of 2 x 256 x 431 are 28 MB as float64.
STATS_CHUNK = 16


class Features:
    """A split's normalised features, read from a packed cache (`features.packed`) a batch at a time.

    Indexing reads only the rows asked for and returns a float32 tensor: `x[idx]` (index tensor or
    array), `x[a:b]`, `x[i]`; `len(x)` and `x.shape` cost nothing. Nothing of the split is held in
    memory. The normalisation is the one the in-memory path applied to the whole split, (x - mean)
    / std in float32 per element, so each batch has the same bits as before (float16 -> float32 is
    exact).
    """

    dtype = torch.float32

    def __init__(self, packed, stats: dict):
        self.packed = packed
        self.mean = torch.tensor(stats["mean"], dtype=torch.float32)[:, :, None]
        self.std = torch.tensor(stats["std"], dtype=torch.float32)[:, :, None]

    def __len__(self) -> int:
        return len(self.packed)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.packed), *self.packed.row_shape))

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self[[index]][0]
        rows = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index, dtype=np.int64)
        x = torch.from_numpy(self.packed.read(rows)).float()
        return (x - self.mean) / self.std


def even_batches(x, sections: int):
    """`x` (a tensor or `Features`) in `sections` consecutive slices as `torch.tensor_split` cuts them (the
    first len(x) % sections one row longer), each read only when it is reached."""
    size, longer = divmod(len(x), sections)
    bounds = np.cumsum([0] + [size + (i < longer) for i in range(sections)])
    return (x[int(a) : int(b)] for a, b in zip(bounds[:-1], bounds[1:]))


def normalization_stats(packed) -> dict:
    """Per-channel, per-band mean and std (unbiased) over clips and frames of the training fold, in one
    streaming pass: float64 chunk moments merged with Chan et al.'s pairwise update (exact in exact
    arithmetic, no cancellation of a sum-of-squares formula)."""
    count, mean, m2 = 0, None, None
    for start in range(0, len(packed), STATS_CHUNK):
        x = packed.read(np.arange(start, min(start + STATS_CHUNK, len(packed)))).astype(np.float64)
        n = x.shape[0] * x.shape[3]
        chunk_mean = x.mean(axis=(0, 3))
        chunk_m2 = ((x - chunk_mean[None, :, :, None]) ** 2).sum(axis=(0, 3))
        if mean is None:
            count, mean, m2 = n, chunk_mean, chunk_m2
            continue
        delta, total = chunk_mean - mean, count + n
        mean = mean + delta * (n / total)
        m2 = m2 + chunk_m2 + delta**2 * (count * n / total)
        count = total
    std = np.maximum(np.sqrt(m2 / max(count - 1, 1)), 1e-8)
    return {"mean": mean.tolist(), "std": std.tolist()}


@dataclass
class DataBundle:
    """Inputs (N, C, F, T) float32 (tensors, or `Features` read per batch) and int64 labels per split.

    Normalisation uses training-fold statistics only; `normalization` holds them so that a finished
    run can normalise another dataset the same way. `y_test` is None for unlabeled evaluation sets.
    Readers index or slice the inputs a batch at a time (`batches`), never the whole split.
    """

    classes: list[str]
    x_train: torch.Tensor | Features
    y_train: torch.Tensor
    x_val: torch.Tensor | Features
    y_val: torch.Tensor
    x_test: torch.Tensor | Features
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
