"""The official DCASE 2020 Task 1B baseline CNN (two conv blocks + two dense layers), in PyTorch.

Port of the Keras model in toni-heittola/dcase2020_task1_baseline:task1b.yaml (learner `cnn`):

    Conv2D 32 (7x7, same) -> BN -> ReLU -> MaxPool 5x5   -> Dropout 0.3
    Conv2D 64 (7x7, same) -> BN -> ReLU -> MaxPool 4x100 -> Dropout 0.3
    Flatten (64 x 2 x 1 = 128 for a 40 x 500 input) -> Dense 100 ReLU -> Dropout 0.3 -> Dense n_classes

For 3 classes and one input channel this has 115,219 weights and biases (what the 2020 size rule
counts: 450.07 KB in float32) and 115,603 values with batch norm, counted like Keras: 4 per channel
(gamma, beta, moving mean, moving variance; in PyTorch: weight, bias, running_mean, running_var).

The forward pass returns logits; the softmax of the Keras output layer is applied outside (in the
loss and at evaluation), so the network can be trained with `nn.CrossEntropyLoss`.

Knobs (`model.params` in a recipe):
    conv_filters: output channels of each conv block, default [32, 64]; one block per entry.
    kernel_size: conv kernel size (square, stride 1, 'same' padding), default 7.
    pool_sizes: max-pool size (mel bins, frames) after each block, default [[5, 5], [4, 100]];
        one entry per conv block. Pooling floors like Keras 'valid' pooling.
    dense_units: width of the hidden dense layer, default 100.
    dropout: dropout rate after each conv block and the hidden dense layer, default 0.3.
    batch_norm: batch norm after each conv, default true (Keras defaults: momentum 0.99 -> torch
        momentum 0.01, epsilon 1e-3).
    dense_init: 'uniform' (the baseline's Keras 'uniform' = U(-0.05, 0.05), as in task1b.yaml) or
        'glorot_uniform' for the dense kernels. Conv kernels are always glorot_uniform, biases zero.
    bn_momentum: batch-norm running-statistics momentum (PyTorch convention, weight of the new batch),
        default 0.01 = Keras' 0.99. Short trainings need ~0.1: on ambient3 (a 16/32-channel 3x3 net,
        10 epochs of ~20 steps, seed 0) validation macro accuracy rose from 61.5 % (best epoch; 55.9 %
        last) to 66.6 % (66.5 % last), and the first four epochs sat at chance with 0.01.
    clip_norm: 'none' (default, the baseline) or 'band_mean': a first layer that subtracts each clip's
        mean over time per mel band (models/clip_norm.py), which removes recording-level differences.
    head: 'flatten' (default, the baseline: the last block's map flattened) or 'stats': its mean and
        standard deviation over the remaining frames per channel and mel bin (statistics pooling, as
        in x-vectors), so the dense layers see how each feature varies over the clip; needs a last
        pool that leaves at least two frames. On ambient3 neither it nor input_stats beat the flatten
        head (source-grouped CV, recipes/ambient3.yaml: 42.8 and 46.5 % against 55.7 %).
    input_stats: also feed the dense layers each input band's mean and standard deviation over time
        (2 x in_channels x n_mels values; what the logistic-regression reference of
        benchmarks/compression_accuracy.py sees), default false.

The data shape (n_classes, in_channels, n_mels, n_frames) comes from the dataset and the feature
definition; the flatten size is computed from it. Input: (batch, in_channels, n_mels, n_frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from dcase_effdl.errors import UserError
from dcase_effdl.models import register
from dcase_effdl.models.clip_norm import CLIP_NORMS, clip_norm_layer

# Keras BatchNormalization defaults (momentum is the weight of the old value there, of the new one here).
KERAS_BN_MOMENTUM = 0.01
KERAS_BN_EPS = 1e-3
# Keras 2 'uniform' initializer = RandomUniform(minval=-0.05, maxval=0.05).
KERAS_UNIFORM_LIMIT = 0.05
STATS_VAR_FLOOR = 1e-6  # added to a variance before its square root (normalised units)


@dataclass(frozen=True)
class BaselineConfig:
    """Knobs of the baseline CNN (see the module docstring)."""

    conv_filters: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 7
    pool_sizes: list[list[int]] = field(default_factory=lambda: [[5, 5], [4, 100]])
    dense_units: int = 100
    dropout: float = 0.3
    batch_norm: bool = True
    dense_init: Literal["uniform", "glorot_uniform"] = "uniform"
    clip_norm: Literal[CLIP_NORMS] = "none"
    bn_momentum: float = KERAS_BN_MOMENTUM
    head: Literal["flatten", "stats"] = "flatten"
    input_stats: bool = False

    def __post_init__(self):
        if not self.conv_filters or min(self.conv_filters) < 1:
            raise ValueError(f"conv_filters must be a non-empty list of positive integers, got {self.conv_filters}")
        if any(len(p) != 2 or min(p) < 1 for p in self.pool_sizes):
            raise ValueError(f"pool_sizes must be a list of [mel, frames] pairs of positive integers, got {self.pool_sizes}")
        if len(self.pool_sizes) != len(self.conv_filters):
            raise ValueError(f"pool_sizes has {len(self.pool_sizes)} entries but conv_filters has "
                             f"{len(self.conv_filters)}; give one pool per conv block")
        if self.kernel_size < 1 or self.dense_units < 1:
            raise ValueError(f"kernel_size and dense_units must be positive, got {self.kernel_size}, {self.dense_units}")
        if not 0.0 < self.bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {self.bn_momentum}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("dcase2020_baseline", BaselineConfig)
class BaselineCNN(nn.Module):
    """DCASE 2020 Task 1B baseline: conv blocks (conv, BN, ReLU, max-pool, dropout) + two dense layers."""

    def __init__(self, cfg: BaselineConfig, *, n_classes: int, in_channels: int, n_mels: int, n_frames: int):
        super().__init__()
        self.input_norm = clip_norm_layer(cfg.clip_norm)
        blocks = []
        channels, height, width = in_channels, n_mels, n_frames
        for i, (filters, (pool_h, pool_w)) in enumerate(zip(cfg.conv_filters, cfg.pool_sizes)):
            layers: list[nn.Module] = [nn.Conv2d(channels, filters, cfg.kernel_size, padding="same", bias=True)]
            if cfg.batch_norm:
                layers.append(nn.BatchNorm2d(filters, eps=KERAS_BN_EPS, momentum=cfg.bn_momentum))
            # In place: the same numbers bit for bit (batch norm's backward reads its input, not its output),
            # one 16 x 32 x 40 x 500 temporary less per block: 1.28x training steps/s, fp32, 2 threads.
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d((pool_h, pool_w)), nn.Dropout(cfg.dropout)]
            blocks.append(nn.Sequential(*layers))
            channels, height, width = filters, height // pool_h, width // pool_w
            if height == 0 or width == 0:  # pooling floors like Keras 'valid' pooling
                raise UserError(
                    f"model 'dcase2020_baseline': input {n_mels} mels x {n_frames} frames is too small for pool_sizes "
                    f"{cfg.pool_sizes} (nothing left after pool {i + 1})"
                )
        self.features = nn.Sequential(*blocks)
        if cfg.head == "stats" and width < 2:
            raise UserError(f"model 'dcase2020_baseline': head 'stats' needs at least two frames after the last pool, "
                            f"but pool_sizes {cfg.pool_sizes} leave {width} of {n_frames}")
        self.stats_head = TimeStats() if cfg.head == "stats" else None
        self.input_stats = TimeStats() if cfg.input_stats else None
        self.flatten_size = channels * height * (2 if cfg.head == "stats" else width) + (2 * in_channels * n_mels if cfg.input_stats else 0)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.flatten_size, cfg.dense_units),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.dense_units, n_classes),
        )
        self._init_keras(cfg.dense_init)

    def _init_keras(self, dense_init: str) -> None:
        # Match Keras initial weights: PyTorch's default (kaiming uniform, a=sqrt(5)) trains differently.
        for module in self.modules():
            if isinstance(module, nn.Conv2d) or (isinstance(module, nn.Linear) and dense_init == "glorot_uniform"):
                nn.init.xavier_uniform_(module.weight)
            elif isinstance(module, nn.Linear):
                nn.init.uniform_(module.weight, -KERAS_UNIFORM_LIMIT, KERAS_UNIFORM_LIMIT)
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_channels, n_mels, n_frames) -> logits (batch, n_classes)."""
        # Without the options the graph is the baseline's (conv blocks -> flatten -> dense), as channel
        # pruning and int8 find their layer chains in it with torch.fx.
        x = self.input_norm(x)
        z = self.features(x)
        if self.stats_head is not None:
            z = self.stats_head(z)
        if self.input_stats is not None:
            z = torch.cat([z.flatten(1), self.input_stats(x)], dim=1)
        return self.classifier(z)


class TimeStats(nn.Module):
    """(B, C, F, T) -> (B, 2 C F): mean and standard deviation over time per channel and band."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1)
        # The variance floor keeps the gradient of sqrt finite for a constant row (digital silence).
        std = (x - mean.unsqueeze(-1)).pow(2).mean(dim=-1).add(STATS_VAR_FLOOR).sqrt()
        return torch.cat([mean.flatten(1), std.flatten(1)], dim=1)
