"""McDonnell's pre-activation ResNet: two frequency-split paths, no frequency downsampling, 1-bit ready.

Port of McDonnell-Lab/DCASE2020_Task1b:Source/NNets.py (`model_resnet_DCASE2020_Task1b`, the
2020 Task 1B 1-bit system) from Keras to PyTorch:

    split the mel axis into a low and a high half; on each half separately:
        BN (affine) -> Conv 3x3 width, stride (1, 2)                    # no ReLU before the first conv
        4 stacks x 2 pre-activation blocks: BN (no affine) -> ReLU -> Conv 3x3, twice, plus shortcut;
        the first block of stacks 2-4 halves time (stride (1, 2)) and doubles channels; its shortcut
        is 3x3 average pooling with stride (1, 2) and zero channel padding (no weights)
    add the two paths
    BN (no affine) -> ReLU -> Conv 3x3 -> head_channels
    BN (no affine) -> ReLU -> Conv 1x1 -> n_classes
    BN (affine) -> global average pool -> logits

Strides are (1 along frequency, 2 along time): frequency is never downsampled. Channels double
after stacks 1-3 only (width, 2w, 4w, 8w). All convs are plain `nn.Conv2d` without bias and all
norms plain `nn.BatchNorm2d`, so the 1-bit compression step can replace each conv weight by
sign(w) x sqrt(2 / (k^2 C_in)) and leave the batch norms (not counted in 2020) in float32.
Keras 'same' padding with stride 2 pads only on the right; here padding is symmetric (1 on each
side), which gives the same output size.

Knobs (`model.params` in a recipe):
    width: channels of the first stack, default 26 (the submission; 24 in the 2020 Task 1A net).
    n_stacks: number of stacks, default 4; blocks_per_stack: default 2.
    head_channels: channels of the 3x3 conv after the paths are added, default 192.
    split_frequency: two paths on the low/high halves of the mel axis (default true);
        false = one path over all bands (a plain pre-activation ResNet).
    bn_eps: batch-norm epsilon, default 1e-5 (as in the Keras code).

Published size: 3 classes, stereo 256-mel input -> 3,987,000 conv weights (3,987,000 bits =
486.69 KB at 1 bit each; DCASE 2020 results table, McDonnell_USA_task1b_3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcase_effdl.errors import UserError
from dcase_effdl.models import register

TIME_STRIDE = (1, 2)  # (frequency, time)


def _conv(c_in: int, c_out: int, k: int, stride=1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False)


class PreActBlock(nn.Module):
    """BN -> ReLU -> conv, twice; identity shortcut, or avg-pool + zero channels when downsampling."""

    def __init__(self, c_in: int, c_out: int, downsample: bool, bn_eps: float):
        super().__init__()
        stride = TIME_STRIDE if downsample else 1
        self.bn1 = nn.BatchNorm2d(c_in, affine=False, eps=bn_eps)
        self.conv1 = _conv(c_in, c_out, 3, stride)
        self.bn2 = nn.BatchNorm2d(c_out, affine=False, eps=bn_eps)
        self.conv2 = _conv(c_out, c_out, 3)
        self.downsample = downsample
        self.pad_channels = c_out - c_in
        if self.pad_channels < 0:
            raise ValueError("channels never shrink in this network")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        shortcut = x
        if self.downsample:
            # Keras AveragePooling2D(3, strides=(1, 2), padding='same') averages only real cells.
            shortcut = F.avg_pool2d(x, 3, stride=TIME_STRIDE, padding=1, count_include_pad=False)
        if self.pad_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad_channels))
        return y + shortcut


class Path(nn.Module):
    """One frequency band's ResNet: input BN + stride-(1,2) conv, then the stacks of blocks."""

    def __init__(self, in_channels: int, width: int, n_stacks: int, blocks_per_stack: int, bn_eps: float):
        super().__init__()
        self.bn_in = nn.BatchNorm2d(in_channels, eps=bn_eps)
        self.conv_in = _conv(in_channels, width, 3, TIME_STRIDE)
        blocks, c = [], width
        for stack in range(n_stacks):
            c_out = c * 2 if 0 < stack else c
            for b in range(blocks_per_stack):
                first = b == 0 and stack > 0
                blocks.append(PreActBlock(c, c_out if first else c, downsample=first, bn_eps=bn_eps))
                c = c_out if first else c
        self.blocks = nn.Sequential(*blocks)
        self.out_channels = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.conv_in(self.bn_in(x)))


@dataclass(frozen=True)
class PreActResNetConfig:
    """Knobs of the pre-activation ResNet (see the module docstring)."""

    width: int = 26
    n_stacks: int = 4
    blocks_per_stack: int = 2
    head_channels: int = 192
    split_frequency: bool = True
    bn_eps: float = 1e-5

    def __post_init__(self):
        for name in ("width", "n_stacks", "blocks_per_stack", "head_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.bn_eps <= 0:
            raise ValueError(f"bn_eps must be > 0, got {self.bn_eps}")


@register("preact_resnet", PreActResNetConfig)
class PreActResNet(nn.Module):
    """Input (batch, in_channels, n_mels, n_frames) -> logits (batch, n_classes)."""

    def __init__(self, cfg: PreActResNetConfig, *, n_classes: int, in_channels: int, n_mels: int, n_frames: int):
        super().__init__()
        if cfg.split_frequency and n_mels % 2:
            raise UserError(f"model 'preact_resnet': split_frequency needs an even number of mel bands, got {n_mels}")
        self.split_frequency = cfg.split_frequency
        self.paths = nn.ModuleList(Path(in_channels, cfg.width, cfg.n_stacks, cfg.blocks_per_stack, cfg.bn_eps)
                                   for _ in range(2 if cfg.split_frequency else 1))
        c = self.paths[0].out_channels
        self.bn_head = nn.BatchNorm2d(c, affine=False, eps=cfg.bn_eps)
        self.conv_head = _conv(c, cfg.head_channels, 3)
        self.bn_out = nn.BatchNorm2d(cfg.head_channels, affine=False, eps=cfg.bn_eps)
        self.conv_out = _conv(cfg.head_channels, n_classes, 1)
        self.bn_logits = nn.BatchNorm2d(n_classes, eps=cfg.bn_eps)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")  # Keras he_normal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split_frequency:
            half = x.shape[2] // 2
            y = self.paths[0](x[:, :, :half]) + self.paths[1](x[:, :, half:])
        else:
            y = self.paths[0](x)
        y = self.conv_head(F.relu(self.bn_head(y)))
        y = self.conv_out(F.relu(self.bn_out(y)))
        return self.bn_logits(y).mean(dim=(2, 3))
