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

from typing import Sequence

import torch
import torch.nn as nn

from dcase_effdl.errors import UserError
from dcase_effdl.models import register


class SmallCNN(nn.Module):
    """Conv blocks (conv, BN, ReLU, optional 2x2 max-pool) + a dense classifier."""

    def __init__(self, *, n_classes, in_channels, n_mels, n_frames, channels, pool_after, hidden, dropout):
        super().__init__()
        blocks = []
        c, h, w = in_channels, n_mels, n_frames
        for i, out in enumerate(channels):
            layers: list[nn.Module] = [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            if i in pool_after:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            blocks.append(nn.Sequential(*layers))
            c = out
        self.features = nn.Sequential(*blocks)
        self.flatten_size = c * h * w
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(self.flatten_size, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)]
        else:
            head += [nn.Dropout(dropout), nn.Linear(self.flatten_size, n_classes)]
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, in_channels, height, width) -> logits (batch, n_classes)."""
        return self.classifier(self.features(x))


@register("digits_cnn")
def build_small_cnn(
    *,
    n_classes: int,
    in_channels: int,
    n_mels: int,
    n_frames: int,
    channels: Sequence[int] = (16, 32, 64),
    pool_after: Sequence[int] | None = None,
    hidden: int = 64,
    dropout: float = 0.2,
) -> SmallCNN:
    """Build the small CNN; bad knobs are UserErrors naming the knob."""
    where = "model 'digits_cnn'"
    channels = list(channels)
    if not channels or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels):
        raise UserError(f"{where}: channels must be a non-empty list of positive integers, got {channels}")
    pools = sorted(set(range(len(channels))[-2:] if pool_after is None else pool_after))
    if any(not isinstance(i, int) or not 0 <= i < len(channels) for i in pools):
        raise UserError(f"{where}: pool_after must list block indices 0..{len(channels) - 1}, got {pool_after}")
    if (n_mels >> len(pools)) == 0 or (n_frames >> len(pools)) == 0:
        raise UserError(f"{where}: input {n_mels} x {n_frames} is too small for {len(pools)} 2x2 max-pools")
    if not isinstance(hidden, int) or hidden < 0:
        raise UserError(f"{where}: hidden must be a non-negative integer, got {hidden!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"{where}: dropout must be in [0, 1), got {dropout!r}")
    return SmallCNN(
        n_classes=n_classes,
        in_channels=in_channels,
        n_mels=n_mels,
        n_frames=n_frames,
        channels=channels,
        pool_after=pools,
        hidden=hidden,
        dropout=float(dropout),
    )
