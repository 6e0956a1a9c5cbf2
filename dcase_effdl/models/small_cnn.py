"""A small image CNN ('digits_cnn') for the image side of the compression recipes (8x8 digits).

    [Conv 3x3 (same) -> BN -> ReLU (-> MaxPool 2x2)] per entry of `channels`
    Flatten -> Dense `hidden` ReLU -> Dropout -> Dense n_classes

With the defaults on 1 x 8 x 8 inputs and 10 classes: channels 16, 32, 64, max-pooling after the
second and third block (8x8 -> 4x4 -> 2x2), flatten 256, hidden 64: 40,394 weights and biases.
It has what each technique needs: 3x3 convolutions (1-bit, depthwise-separable replacement,
channel pruning) and dense layers (low-rank replacement). Returns logits.

Knobs (`model.params`): channels (list of ints), pool_after (block indices followed by a 2x2
max-pool, default the last two), hidden (0 = no hidden dense layer), dropout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from dcase_effdl.errors import UserError
from dcase_effdl.models import register


@dataclass(frozen=True)
class SmallCNNConfig:
    """Knobs of the small CNN (see the module docstring); `pool_after` None = the last two blocks."""

    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    pool_after: Optional[list[int]] = None
    hidden: int = 64
    dropout: float = 0.2

    def __post_init__(self):
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty list of positive integers, got {self.channels}")
        if any(not 0 <= i < len(self.channels) for i in self.pool_after or ()):
            raise ValueError(f"pool_after must list block indices 0..{len(self.channels) - 1}, got {self.pool_after}")
        if self.hidden < 0:
            raise ValueError(f"hidden must be a non-negative integer, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@register("digits_cnn", SmallCNNConfig)
class SmallCNN(nn.Module):
    """Conv blocks (conv, BN, ReLU, optional 2x2 max-pool) + a dense classifier."""

    def __init__(self, cfg: SmallCNNConfig, *, n_classes: int, in_channels: int, n_mels: int, n_frames: int):
        super().__init__()
        pool_after = set(range(len(cfg.channels))[-2:] if cfg.pool_after is None else cfg.pool_after)
        if (n_mels >> len(pool_after)) == 0 or (n_frames >> len(pool_after)) == 0:
            raise UserError(f"model 'digits_cnn': input {n_mels} x {n_frames} is too small for {len(pool_after)} 2x2 max-pools")
        blocks = []
        c, h, w = in_channels, n_mels, n_frames
        for i, out in enumerate(cfg.channels):
            layers: list[nn.Module] = [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            blocks.append(nn.Sequential(*layers))
            c = out
        self.features = nn.Sequential(*blocks)
        self.flatten_size = c * h * w
        head: list[nn.Module] = [nn.Flatten()]
        if cfg.hidden:
            head += [nn.Linear(self.flatten_size, cfg.hidden), nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, n_classes)]
        else:
            head += [nn.Dropout(cfg.dropout), nn.Linear(self.flatten_size, n_classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_channels, height, width) -> logits (batch, n_classes)."""
        return self.classifier(self.features(x))
