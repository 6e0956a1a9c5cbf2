"""1-bit weights (BinaryConnect / McDonnell 2020): sign x scale, trained with a straight-through estimator.

Recipe step:

    {method: binary, scale: fixed, epochs: 10}     # McDonnell: fixed per-layer scale sqrt(2 / (k^2 C_in))
    {method: binary, scale: learned, keep_first: false}

Each selected Conv2d / Linear becomes a `BinaryConv2d` / `BinaryLinear` whose forward uses
`sign(w) * scale` (sign(0) = +1). While fine-tuning from the float parent, `w` is a latent float
weight and the gradient passes straight through the sign (identity STE). After training the latent
weights are replaced by their signs (exact +-1 values: the variant file packs them 1 bit each, and
the dcase2020 size rule counts 1 bit per weight), so the trained module, the stored file and the
loaded module compute exactly the same. `scale: fixed` is McDonnell's per-layer constant
sqrt(2 / fan_in), fan_in = k_h k_w C_in / groups (one value per layer); `scale: learned` is a
per-output-channel scale, trained, initialised to the mean |w| of each filter. Scales are stored in
float32 with role 'scale' (not counted as parameters, like quantisation scales). Biases stay float32.

The first and last weight layers stay in float32 by default (`keep_first`, `keep_last`): they are
small and the most sensitive. After training, batch-norm running statistics are re-estimated on the
training data with the binary weights (`bn_reestimate`); without it, measured accuracy fell to chance.
"""

from __future__ import annotations

import fnmatch
import math
import typing
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcase_effdl.compress.registry import StepConfig, register_method
from dcase_effdl.compress.storage import require_not
from dcase_effdl.compress.surgery import get_module, set_module, weight_layers
from dcase_effdl.data.bundle import even_batches
from dcase_effdl.errors import UserError
from dcase_effdl.training.schedules import reestimate_batchnorm
from dcase_effdl.training.loop import FineTune


def binarize(w: torch.Tensor) -> torch.Tensor:
    """+1 where w >= 0, -1 elsewhere (sign with sign(0) = +1, so every weight is one bit)."""
    return torch.where(w >= 0, 1.0, -1.0).to(w.dtype)


def binarize_ste(w: torch.Tensor) -> torch.Tensor:
    """sign(w) in the forward pass, identity gradient in the backward pass (straight-through estimator)."""
    return w + (binarize(w) - w).detach()


def fixed_scale(module: nn.Module) -> float:
    """McDonnell's per-layer scale sqrt(2 / fan_in) (He initialisation's std for that layer)."""
    if isinstance(module, nn.Conv2d):
        fan_in = module.in_channels // module.groups * math.prod(module.kernel_size)
    else:
        fan_in = module.in_features
    return math.sqrt(2.0 / fan_in)


class _BinaryWeight:
    """Shared parts of the 1-bit layers: `weight` holds latent floats while training, +-1 afterwards."""

    storage_formats = {"weight": "binary"}  # read by compress.storage (valid once the weights are +-1)
    tensor_roles = {"weight_scale": "scale"}

    def _init_scale(self, scale: str, source: nn.Module | None) -> None:
        n_out = self.weight.shape[0]
        if scale == "learned":
            init = torch.ones(n_out)
            if source is not None:
                init = source.weight.detach().abs().reshape(n_out, -1).mean(dim=1).clamp_min(1e-8)
            self.weight_scale = nn.Parameter(init.clone())
        else:
            self.register_buffer("weight_scale", torch.full((1,), fixed_scale(self)))
        self.scale_kind = scale

    def binary_weight(self) -> torch.Tensor:
        """sign(w) x scale, scale broadcast over each output channel."""
        signs = binarize_ste(self.weight) if self.training and torch.is_grad_enabled() else binarize(self.weight)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        return signs * self.weight_scale.reshape(shape)

    @torch.no_grad()
    def freeze(self) -> None:
        """Replace the latent weights by their signs (what is stored)."""
        self.weight.copy_(binarize(self.weight))


class BinaryConv2d(_BinaryWeight, nn.Conv2d):
    """Conv2d computing with sign(weight) x scale."""

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, scale: str) -> "BinaryConv2d":
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
            dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode,
        )
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        new._init_scale(scale, conv)
        return new.train(conv.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.binary_weight(), self.bias)


class BinaryLinear(_BinaryWeight, nn.Linear):
    """Linear computing with sign(weight) x scale."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, scale: str) -> "BinaryLinear":
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        new._init_scale(scale, linear)
        return new.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.binary_weight(), self.bias)


def to_binary(module: nn.Module, scale: str) -> nn.Module:
    if isinstance(module, nn.Conv2d):
        return BinaryConv2d.from_conv(module, scale)
    return BinaryLinear.from_linear(module, scale)


def select_layers(model: nn.Module, keep_first: bool, keep_last: bool, skip: typing.Sequence[str] = ()) -> list[str]:
    """Names of the Conv2d / Linear layers to binarize (first/last in registration order optionally kept)."""
    names = [n for n, _ in weight_layers(model)]
    chosen = names[1 if keep_first else 0 : len(names) - 1 if keep_last else len(names)]
    return [n for n in chosen if not any(fnmatch.fnmatchcase(n, p) for p in skip)]


def binarize_layers(model: nn.Module, names: typing.Sequence[str], scale: str = "fixed") -> nn.Module:
    """Swap the named layers for their 1-bit versions in place (latent weights = the float weights)."""
    for name in names:
        set_module(model, name, to_binary(get_module(model, name), scale))
    return model


def freeze_binary(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _BinaryWeight):
            m.freeze()


# Batch-norm re-estimation batches hold at most 256 rows and this much float32 input. Activations
# set the memory: measured, the forward of the 2020 baseline CNN on 2 x 256 x 431 inputs (883 KB
# each) peaks 28.7 MB per row above its input (459 MB for 16 rows), so 256 rows held ~7 GB; 16 MiB
# allows 19 rows (~0.55 GB), and 209 of the baseline's 1 x 40 x 501.
BN_BATCH_BYTES = 16 * 1024**2


def bn_rows(x) -> int:
    """Rows per batch-norm re-estimation batch for inputs like `x` (a tensor or `data.bundle.Features`)."""
    example_bytes = 4 * math.prod(tuple(x.shape[1:]))
    return int(min(256, max(2, BN_BATCH_BYTES // max(example_bytes, 1))))


@dataclass
class BinaryConfig(StepConfig):
    scale: typing.Literal["fixed", "learned"] = "fixed"  # fixed: McDonnell sqrt(2 / fan_in) per layer
    keep_first: bool = True  # first weight layer stays float32
    keep_last: bool = True  # last weight layer stays float32
    skip: list[str] = field(default_factory=list)  # more layer-name patterns (fnmatch) kept in float32
    epochs: int = 10  # STE fine-tuning epochs from the float parent (0: binarize without training)
    lr: Optional[float] = None  # None: the recipe's train.lr
    bn_reestimate: bool = True  # recompute batch-norm statistics with the binary weights

    def __post_init__(self):
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")


def _rebuild(model: nn.Module, cfg: BinaryConfig, meta: dict) -> nn.Module:
    return binarize_layers(model, list(meta.get("layers") or []), cfg.scale)


@register_method("binary", BinaryConfig, label="1-bit weights", rebuild=_rebuild)
def apply_binary(model: nn.Module, cfg: BinaryConfig, ctx):
    require_not(model, {"int8", "uint8", "binary", "float16", "bfloat16"}, cfg.where, "binary")
    names = select_layers(model, cfg.keep_first, cfg.keep_last, cfg.skip)
    if not names:
        raise UserError(f"{cfg.where}: no Conv2d or Linear layer left to binarize (keep_first/keep_last/skip keep them all)")
    binarize_layers(model, names, cfg.scale)
    if cfg.epochs > 0:
        ctx.need_fine_tune(cfg.where, "binary with epochs > 0")(model, FineTune(cfg.epochs, cfg.lr))
    freeze_binary(model)
    n_bn = 0
    if cfg.bn_reestimate:
        x = ctx.need_data(cfg.where, "batch-norm re-estimation").x_train
        n_bn = reestimate_batchnorm(model, even_batches(x, max(1, math.ceil(len(x) / bn_rows(x)))))
    n_bits = sum(get_module(model, n).weight.numel() for n in names)
    ctx.log(f"binary: {len(names)} layers, {n_bits:,} one-bit weights ({cfg.scale} scale); {n_bn} batch-norm layers re-estimated")
    return model.eval(), {"layers": names}
