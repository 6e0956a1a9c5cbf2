"""CP-ResNet (Koutini et al.): a ResNet whose receptive field is bounded by rho, optionally frequency-damped.

Port of kkoutini/cpjku_dcase20:models/cp_resnet_freq_damp.py and cp_resnet_df_prune.py (the 2020
Task 1B winner) as one configurable family:

    in_c:   Conv 5x5 stride 2 (padding 1) -> BN -> ReLU
    stage1: n_blocks[0] basic blocks at `width` channels, 2x2 max-pool after blocks 1, 2 and 4
    stage2: n_blocks[1] basic blocks at 2 x width (a stage with 0 blocks is removed)
    stage3: n_blocks[2] basic blocks at 4 x width
    head:   Conv 1x1 -> n_classes, BN, global average pool -> logits

A basic block is conv(k1) -> BN -> ReLU -> conv(k2) -> BN, plus the input (1x1 conv + BN when the
width changes), then ReLU. Padding is k // 3 as in the original (so a 3x3 conv keeps the size).

Receptive-field regularisation: `rho` picks which of the block kernels are 3x3 and which are 1x1, so
that the receptive field of the whole network stays within a bound (Koutini et al., EUSIPCO 2019:
"The Receptive Field as a Regularizer"). rho 5-9 gives receptive fields like VGG-style CNNs; small
rho restricts it. The kernel table is `kernel_sizes(rho)` below, identical to the original's
`get_model_based_on_rho`.

Frequency damping (Koutini et al., DCASE 2020 workshop): every conv kernel is multiplied by a fixed
mask that falls linearly along the frequency axis from 1 at the centre row to `damping_min` at the
edge rows (1xk kernels are untouched). The mask is not a parameter (a non-persistent buffer), so it
changes neither the parameter count nor the state dict.

Knobs (`model.params` in a recipe):
    rho: receptive-field parameter, default 4 (the 2020 submissions used rho 3-4).
    width: channels of stage 1 ('--width' of the original, default 128; the 2020 sub2/sub3 used 64/48).
    n_blocks: blocks per stage, default [4, 4, 4] (the original's `depth_restriction "a,b,c"`
        removes a, b, c trailing blocks: n_blocks = [4 - a, 4 - b, 4 - c]).
    frequency_damping: multiply conv kernels by the frequency-damping mask, default false.
    damping_min: mask value at the outermost frequency row, default 0.1 (cp_resnet_df_prune; the
        cp_resnet_freq_damp module used 0.01).
    init: 'fixup' (the original's weight_init: He init scaled by 1/sqrt(number of blocks), second
        conv of each block and the head conv zero) or 'kaiming' (He normal everywhere).

Published sizes (3 classes, stereo input, 2020 rule: conv weights counted, batch norm not):
    sub3 `--rho 4 --width 48 --depth_restriction "0,1,3"`: 242,592 conv weights = 473.81 KB in float16,
        the official 242k / 473.8 KB (the README's "247,316 trainable parameters" matches no count of
        it: 242,592 + 3,366 batch norm = 245,958); sub2 `--rho 4 --width 64 --depth_restriction "0,2,4"` then
    magnitude-pruned to 247,562 non-zero (see recipes/koutini.yaml).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcase_effdl.errors import UserError
from dcase_effdl.models import register

MAXPOOL_AFTER_STAGE1_BLOCKS = (1, 2, 4)


def kernel_sizes(rho: int) -> dict[str, tuple[list[int], list[int]]]:
    """Kernel sizes (k1s, k2s) of the four blocks of each stage for a given rho (Koutini's table)."""
    e = rho - 7  # "extra kernel receptive field": negative shrinks stage 1, positive grows stages 2-3
    return {
        "stage1": (
            [3, 3 - (-e > 6) * 2, 3 - (-e > 4) * 2, 3 - (-e > 2) * 2],
            [1, 3 - (-e > 5) * 2, 3 - (-e > 3) * 2, 3 - (-e > 1) * 2],
        ),
        "stage2": (
            [3 - (-e > 0) * 2, 1 + (e > 1) * 2, 1 + (e > 3) * 2, 1 + (e > 5) * 2],
            [1 + (e > 0) * 2, 1 + (e > 2) * 2, 1 + (e > 4) * 2, 1 + (e > 6) * 2],
        ),
        "stage3": (
            [1 + (e > 7) * 2, 1 + (e > 9) * 2, 1 + (e > 11) * 2, 1 + (e > 13) * 2],
            [1 + (e > 8) * 2, 1 + (e > 10) * 2, 1 + (e > 12) * 2, 1 + (e > 14) * 2],
        ),
    }


def damping_mask(kernel_freq: int, kernel_time: int, min_scale: float) -> torch.Tensor:
    """(1, 1, kf, kt) mask: 1 at the centre frequency row, falling linearly to min_scale at the edges."""
    mask = torch.ones(1, 1, kernel_freq, kernel_time)
    centre = (kernel_freq - 1) / 2
    if centre >= 1:
        for i in range(kernel_freq):
            mask[:, :, i, :] *= 1.0 - (1.0 - min_scale) * abs(i - centre) / centre
    return mask


class DampedConv2d(nn.Conv2d):
    """A Conv2d whose kernel is multiplied by a fixed frequency-damping mask in forward.

    Still an nn.Conv2d (compression steps that rewrite `weight` keep working); the mask is a
    non-persistent buffer, so state dicts are those of a plain Conv2d.
    """

    def __init__(self, *args, damping_min: float = 0.1, **kwargs):
        super().__init__(*args, **kwargs)
        kf, kt = self.kernel_size
        self.register_buffer("damper", damping_mask(kf, kt, damping_min), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.damper.to(self.weight.dtype), self.bias)


class _ConvFactory:
    def __init__(self, damping: bool, damping_min: float):
        self.damping, self.damping_min = damping, damping_min

    def __call__(self, c_in: int, c_out: int, k: int, stride: int = 1, padding: int | None = None) -> nn.Conv2d:
        padding = k // 3 if padding is None else padding
        if self.damping:
            return DampedConv2d(c_in, c_out, k, stride=stride, padding=padding, bias=False, damping_min=self.damping_min)
        return nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, k1: int, k2: int, conv: _ConvFactory):
        super().__init__()
        self.conv1 = conv(c_in, c_out, k1)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = conv(c_out, c_out, k2)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if c_in != c_out:
            self.shortcut = nn.Sequential(conv(c_in, c_out, 1), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


def output_size(n_mels: int, n_frames: int) -> tuple[int, int]:
    """Feature-map size after the stem (5x5 stride 2, padding 1) and the three 2x2 max-pools."""
    f, t = (n_mels - 3) // 2 + 1, (n_frames - 3) // 2 + 1
    for _ in MAXPOOL_AFTER_STAGE1_BLOCKS:
        f, t = f // 2, t // 2
    return f, t


@dataclass(frozen=True)
class CPResNetConfig:
    """Knobs of CP-ResNet (see the module docstring)."""

    rho: int = 4
    width: int = 128
    n_blocks: list[int] = field(default_factory=lambda: [4, 4, 4])
    frequency_damping: bool = False
    damping_min: float = 0.1
    init: Literal["fixup", "kaiming"] = "fixup"

    def __post_init__(self):
        if len(self.n_blocks) != 3 or any(not 0 <= n <= 4 for n in self.n_blocks):
            raise ValueError(f"n_blocks must be three integers 0-4, got {self.n_blocks}")
        if self.n_blocks[0] < max(MAXPOOL_AFTER_STAGE1_BLOCKS):
            raise ValueError(f"stage 1 needs 4 blocks (its max-pools follow blocks 1, 2, 4), got {self.n_blocks[0]}")
        if self.width < 1:
            raise ValueError(f"width must be a positive integer, got {self.width}")
        if not 0.0 <= self.damping_min <= 1.0:
            raise ValueError(f"damping_min must be in [0, 1], got {self.damping_min}")


@register("cp_resnet", CPResNetConfig)
class CPResNet(nn.Module):
    """Receptive-field-regularised ResNet; input (batch, in_channels, n_mels, n_frames) -> logits."""

    def __init__(self, cfg: CPResNetConfig, *, n_classes: int, in_channels: int, n_mels: int, n_frames: int):
        super().__init__()
        if min(output_size(n_mels, n_frames)) < 1:
            raise UserError(
                f"model 'cp_resnet': input {n_mels} mel bands x {n_frames} frames is too small "
                "(the stem and three 2x2 max-pools need at least 19 x 19)"
            )
        conv = _ConvFactory(cfg.frequency_damping, cfg.damping_min)
        kernels = kernel_sizes(cfg.rho)
        width = cfg.width
        channels = [width, 2 * width, 4 * width]
        self.in_c = nn.Sequential(conv(in_channels, width, 5, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        stages, c_in = [], width
        for s, (n, c_out) in enumerate(zip(cfg.n_blocks, channels)):
            k1s, k2s = kernels[f"stage{s + 1}"]
            stage = nn.Sequential()
            for b in range(n):
                stage.add_module(f"block{b + 1}", BasicBlock(c_in, c_out, k1s[b], k2s[b], conv))
                c_in = c_out
                if s == 0 and b + 1 in MAXPOOL_AFTER_STAGE1_BLOCKS:
                    stage.add_module(f"maxpool{b + 1}", nn.MaxPool2d(2, 2))
            stages.append(stage)
        self.stage1, self.stage2, self.stage3 = stages
        self.head = nn.Sequential(conv(c_in, n_classes, 1), nn.BatchNorm2d(n_classes))
        self._init(cfg.init, n_blocks=sum(cfg.n_blocks))

    def _init(self, init: str, n_blocks: int) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if init == "fixup":
            # Fixup (Zhang et al. 2019) as in the original: residual branches start as identity.
            nn.init.zeros_(self.head[0].weight)
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    fan = m.conv1.kernel_size[0] * m.conv1.kernel_size[1] * m.conv1.out_channels
                    nn.init.normal_(m.conv1.weight, 0.0, n_blocks**-0.5 * math.sqrt(2.0 / fan))
                    nn.init.zeros_(m.conv2.weight)
                    if len(m.shortcut):
                        sc = m.shortcut[0]
                        fan = sc.kernel_size[0] * sc.kernel_size[1] * sc.out_channels
                        nn.init.normal_(sc.weight, 0.0, math.sqrt(2.0 / fan))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.in_c(x))))
        return self.head(x).mean(dim=(2, 3))
