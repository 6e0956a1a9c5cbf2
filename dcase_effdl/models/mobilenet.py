"""MobileNetV2-style networks of inverted-residual blocks (Hu et al.'s Mobnet, DCASE 2020 Task 1B).

Port of MihawkHu/DCASE2020_task1:task1b/train/mobnet.py (`model_mobnet`) from Keras to PyTorch,
with its hard-coded numbers turned into knobs:

    split the mel axis into a low and a high half (optional); on each half:
        Conv 3x3 stride 2 (+bias) -> BN -> ReLU                              # `first_filters`
        for each stage (channels c, n blocks, stride s):
            inverted residual: Conv 1x1 to t*C_in (+bias) -> BN -> ReLU
                               -> depthwise Conv 3x3 stride s (+bias) -> BN -> ReLU
                               -> Conv 1x1 to c (+bias) -> BN  (linear bottleneck)
            the first block of a stage has stride s and no shortcut, the others add their input
        Conv 1x1 (+bias) -> last_channels -> BN -> ReLU
    concatenate the two paths along the mel axis (Keras `concatenate(axis=1)` in channels-last)
    BN (no affine) -> ReLU -> Conv 1x1 -> head_channels -> Dropout
    BN (no affine) -> Conv 1x1 -> n_classes -> BN (no affine) -> global average pool -> logits

Knobs (`model.params` in a recipe):
    alpha: width multiplier for the block outputs, default 1.0 (first_filters = make_divisible(32 alpha, 8)).
    expansion: expansion factor t of the inverted residuals, default 2 (MobileNetV2 used 6).
    stage_channels: output channels per stage before alpha, default [32, 40, 48].
    blocks_per_stage: default [3, 3, 3]; stage_strides: default [2, 2, 2].
    last_channels: channels of the 1x1 conv ending each path, default 56 (make_divisible(80 alpha, 8)
        when alpha > 1, as in the original).
    head_channels: default 48 (2 x num_filters in the original); dropout: default 0.3.
    split_frequency: two paths on the low/high mel halves, default true.
    bn_momentum: batch-norm running-statistics momentum (PyTorch convention, weight of the new
        batch), default 0.01 = Keras' 0.99; short trainings need ~0.1 or the statistics lag behind.

Published configuration: 3 classes, 6 input channels (stereo log-mel + deltas + delta-deltas),
128 mel bands -> `mobnet` with the defaults (int8 after post-training quantisation in 2020).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcase_effdl.errors import UserError
from dcase_effdl.models import register

# Keras BatchNormalization defaults, as in the original (momentum 0.99 of the old value, eps 1e-3).
KERAS_BN_MOMENTUM = 0.01
BN_EPS = 1e-3


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10 % below `v` (MobileNetV2)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def conv_bn_relu(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=True),
        nn.BatchNorm2d(c_out, eps=BN_EPS),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear); residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, expansion: int, stride: int, residual: bool):
        super().__init__()
        hidden = c_in * expansion
        self.expand = conv_bn_relu(c_in, hidden, 1)
        self.depthwise = conv_bn_relu(hidden, hidden, 3, stride=stride, groups=hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, c_out, 1, bias=True), nn.BatchNorm2d(c_out, eps=BN_EPS))
        self.residual = residual and stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


def mobile_path(in_channels, first_filters, stage_channels, blocks_per_stage, stage_strides, expansion, alpha, last_channels) -> nn.Sequential:
    layers = [conv_bn_relu(in_channels, first_filters, 3, stride=2)]
    c = first_filters
    for channels, n, stride in zip(stage_channels, blocks_per_stage, stage_strides):
        c_out = int(channels * alpha)
        for b in range(n):
            layers.append(InvertedResidual(c, c_out, expansion, stride if b == 0 else 1, residual=b > 0))
            c = c_out
    layers.append(conv_bn_relu(c, last_channels, 1))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class MobNetConfig:
    """Knobs of Mobnet (see the module docstring); `last_channels` None = the original's rule."""

    alpha: float = 1.0
    expansion: int = 2
    stage_channels: list[int] = field(default_factory=lambda: [32, 40, 48])
    blocks_per_stage: list[int] = field(default_factory=lambda: [3, 3, 3])
    stage_strides: list[int] = field(default_factory=lambda: [2, 2, 2])
    last_channels: Optional[int] = None
    head_channels: int = 48
    dropout: float = 0.3
    split_frequency: bool = True
    bn_momentum: float = KERAS_BN_MOMENTUM

    def __post_init__(self):
        if not (len(self.stage_channels) == len(self.blocks_per_stage) == len(self.stage_strides)):
            raise ValueError(
                "stage_channels, blocks_per_stage and stage_strides need the same length, got "
                f"{len(self.stage_channels)}, {len(self.blocks_per_stage)}, {len(self.stage_strides)}"
            )
        if (self.alpha <= 0 or self.expansion < 1 or any(n < 1 for n in self.blocks_per_stage)
                or any(s not in (1, 2) for s in self.stage_strides)):
            raise ValueError("alpha > 0, expansion >= 1, blocks_per_stage >= 1 and strides 1 or 2 are required")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in (0, 1], got {self.bn_momentum}")


@register("mobnet", MobNetConfig)
class MobNet(nn.Module):
    """Input (batch, in_channels, n_mels, n_frames) -> logits (batch, n_classes)."""

    def __init__(self, cfg: MobNetConfig, *, n_classes: int, in_channels: int, n_mels: int, n_frames: int):
        super().__init__()
        if cfg.split_frequency and n_mels % 2:
            raise UserError(f"model 'mobnet': split_frequency needs an even number of mel bands, got {n_mels}")
        c = cfg.last_channels
        if c is None:
            c = make_divisible(80 * cfg.alpha, 8) if cfg.alpha > 1.0 else 56
        self.split_frequency = cfg.split_frequency
        self.paths = nn.ModuleList(
            mobile_path(in_channels, make_divisible(32 * cfg.alpha, 8), cfg.stage_channels, cfg.blocks_per_stage,
                        cfg.stage_strides, cfg.expansion, cfg.alpha, c)
            for _ in range(2 if cfg.split_frequency else 1)
        )  # fmt: skip
        self.bn_head = nn.BatchNorm2d(c, affine=False, eps=BN_EPS)
        self.conv_head = nn.Conv2d(c, cfg.head_channels, 1, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.bn_out = nn.BatchNorm2d(cfg.head_channels, affine=False, eps=BN_EPS)
        self.conv_out = nn.Conv2d(cfg.head_channels, n_classes, 1, bias=False)
        self.bn_logits = nn.BatchNorm2d(n_classes, affine=False, eps=BN_EPS)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = cfg.bn_momentum
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_frequency:
            half = x.shape[2] // 2
            y = torch.cat([self.paths[0](x[:, :, :half]), self.paths[1](x[:, :, half:])], dim=2)
        else:
            y = self.paths[0](x)
        y = self.dropout(self.conv_head(F.relu(self.bn_head(y))))
        y = self.conv_out(F.relu(self.bn_out(y)))
        return self.bn_logits(y).mean(dim=(2, 3))
