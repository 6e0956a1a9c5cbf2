"""Factorization: low-rank (SVD) dense / 1x1-conv layers and depthwise-separable convolutions, then fine-tuning.

Recipe steps:

    {method: lowrank, energy: 0.9, epochs: 5}     # keep 90 % of each layer's squared singular values
    {method: lowrank, rank: 16, layers: ["classifier.*"]}
    {method: separable, epochs: 10}               # k x k conv -> depthwise k x k + pointwise 1x1

`lowrank` replaces a Linear (out x in) by Linear(in -> r, no bias) then Linear(r -> out), and a 1x1
Conv2d the same way with two 1x1 convs, initialised from the truncated SVD W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T)
(the best rank-r approximation in Frobenius norm). A layer is only replaced when r (in + out) <
in x out, i.e. when it saves parameters. `separable` replaces a full k x k Conv2d (groups 1, k > 1)
by a depthwise k x k conv (one filter per input channel, no bias) and a pointwise 1x1 conv,
initialised per input channel c from the best rank-1 approximation of W[:, c] (out x k^2), which the
fine-tuning then improves. By default the output layer (lowrank) and the first conv (separable,
usually 1-3 input channels) are left alone; `layers` names layers by fnmatch pattern instead.

Both store which layers were replaced and their rank in the step's metadata, from which `rebuild`
recreates the same architecture before a variant file's tensors are loaded.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from dcase_effdl.compress.registry import StepConfig, register_method
from dcase_effdl.compress.storage import require_not
from dcase_effdl.compress.surgery import get_module, set_module, weight_layers
from dcase_effdl.errors import UserError
from dcase_effdl.training.loop import FineTune


def _is_pointwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and m.groups == 1 and tuple(m.dilation) == (1, 1)


def _matrix(m: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out, in) matrix."""
    return m.weight.detach().reshape(m.weight.shape[0], -1)


def choose_rank(singular_values: torch.Tensor, *, rank: int | None = None, energy: float | None = None) -> int:
    """`rank` (capped at the number of singular values) or the smallest r keeping `energy` of sum(s^2)."""
    if rank is not None:
        return max(1, min(rank, len(singular_values)))
    power = singular_values.double() ** 2
    cumulative = torch.cumsum(power, 0) / power.sum().clamp_min(1e-30)
    return int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64) - 1e-12).item()) + 1


def low_rank_pair(m: nn.Module, r: int) -> nn.Sequential:
    """Two layers computing the rank-r SVD approximation of Linear / 1x1 Conv2d `m`."""
    n_out, n_in = _matrix(m).shape
    has_bias = m.bias is not None
    if isinstance(m, nn.Linear):
        down, up = nn.Linear(n_in, r, bias=False), nn.Linear(r, n_out, bias=has_bias)
    else:
        down = nn.Conv2d(n_in, r, 1, stride=m.stride, padding=m.padding, bias=False, padding_mode=m.padding_mode)
        up = nn.Conv2d(r, n_out, 1, bias=has_bias)
    u, s, vh = torch.linalg.svd(_matrix(m).double(), full_matrices=False)
    root = s[:r].sqrt()
    with torch.no_grad():
        down.weight.copy_((root[:, None] * vh[:r]).reshape(down.weight.shape).float())
        up.weight.copy_((u[:, :r] * root[None, :]).reshape(up.weight.shape).float())
        if has_bias:
            up.bias.copy_(m.bias)
    return nn.Sequential(down, up).train(m.training)


def separable_pair(conv: nn.Conv2d) -> nn.Sequential:
    """Depthwise k x k (no bias) + pointwise 1x1 conv, initialised by a rank-1 SVD per input channel."""
    c_in, c_out = conv.in_channels, conv.out_channels
    depthwise = nn.Conv2d(c_in, c_in, conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                          groups=c_in, bias=False, padding_mode=conv.padding_mode)
    pointwise = nn.Conv2d(c_in, c_out, 1, bias=conv.bias is not None)
    w = conv.weight.detach().double()  # (out, in, kh, kw)
    with torch.no_grad():
        for c in range(c_in):
            u, s, vh = torch.linalg.svd(w[:, c].reshape(c_out, -1), full_matrices=False)
            root = s[0].sqrt()
            depthwise.weight[c, 0] = (root * vh[0]).reshape(conv.kernel_size).float()
            pointwise.weight[:, c, 0, 0] = (u[:, 0] * root).float()
        if conv.bias is not None:
            pointwise.bias.copy_(conv.bias)
    return nn.Sequential(depthwise, pointwise).train(conv.training)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def lowrank_candidates(model: nn.Module, patterns: list[str]) -> list[str]:
    layers = [(n, m) for n, m in weight_layers(model) if isinstance(m, nn.Linear) or _is_pointwise(m)]
    if patterns:
        return [n for n, _ in layers if _matches(n, patterns)]
    last = weight_layers(model)[-1][0] if weight_layers(model) else None
    return [n for n, _ in layers if n != last]  # the output layer is tiny and sensitive


def separable_candidates(model: nn.Module, patterns: list[str]) -> list[str]:
    all_layers = weight_layers(model)
    layers = [(n, m) for n, m in all_layers if isinstance(m, nn.Conv2d) and m.groups == 1 and math.prod(m.kernel_size) > 1]
    if patterns:
        return [n for n, _ in layers if _matches(n, patterns)]
    first = all_layers[0][0] if all_layers else None
    return [n for n, _ in layers if n != first]  # the input conv has 1-3 channels: nothing to separate


def factorize_lowrank(model: nn.Module, names: list[str], *, rank: int | None = None, energy: float | None = None) -> dict[str, int]:
    """Replace the named layers in place where that saves parameters; returns {layer: rank} of those replaced."""
    done = {}
    for name in names:
        m = get_module(model, name)
        n_out, n_in = _matrix(m).shape
        r = choose_rank(torch.linalg.svdvals(_matrix(m).double()), rank=rank, energy=energy)
        if r * (n_in + n_out) >= n_in * n_out:
            continue
        set_module(model, name, low_rank_pair(m, r))
        done[name] = r
    return done


def factorize_separable(model: nn.Module, names: list[str]) -> list[str]:
    for name in names:
        set_module(model, name, separable_pair(get_module(model, name)))
    return list(names)


@dataclass
class LowRankConfig(StepConfig):
    rank: Optional[int] = None  # rank of every replaced layer
    energy: Optional[float] = None  # or: per layer, the smallest rank keeping this fraction of sum(s^2)
    layers: list[str] = field(default_factory=list)  # fnmatch patterns; empty: all Linear/1x1 conv but the output
    epochs: int = 0  # fine-tuning epochs after the replacement
    lr: Optional[float] = None

    def __post_init__(self):
        if (self.rank is None) == (self.energy is None):
            raise ValueError("give exactly one of rank or energy")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.energy is not None and not 0.0 < self.energy <= 1.0:
            raise ValueError(f"energy must be in (0, 1], got {self.energy}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")


def _rebuild_lowrank(model: nn.Module, cfg: LowRankConfig, meta: dict) -> nn.Module:
    for name, r in (meta.get("ranks") or {}).items():
        m = get_module(model, name, cfg.where)
        if not (isinstance(m, nn.Linear) or _is_pointwise(m)) or not isinstance(r, int) or r < 1:
            raise UserError(f"{cfg.where}: cannot rebuild low-rank layer '{name}' (rank {r!r}) on {type(m).__name__}")
        set_module(model, name, low_rank_pair(m, r), cfg.where)
    return model


@register_method("lowrank", LowRankConfig, label="low-rank factorization", rebuild=_rebuild_lowrank)
def apply_lowrank(model: nn.Module, cfg: LowRankConfig, ctx):
    require_not(model, {"int8", "uint8", "binary", "float16", "bfloat16"}, cfg.where, "lowrank (put it before quantisation)")
    names = lowrank_candidates(model, cfg.layers)
    if not names:
        raise UserError(f"{cfg.where}: no Linear or 1x1 Conv2d layer to factorize (layers: {cfg.layers})")
    before = sum(p.numel() for p in model.parameters())
    ranks = factorize_lowrank(model, names, rank=cfg.rank, energy=cfg.energy)
    after = sum(p.numel() for p in model.parameters())
    kept = ", ".join(f"{n}: rank {r}" for n, r in ranks.items()) or "none (no layer would shrink)"
    ctx.log(f"lowrank: {before:,} -> {after:,} parameters; {kept}")
    if cfg.epochs > 0 and ranks:
        ctx.need_fine_tune(cfg.where, "lowrank with epochs > 0")(model, FineTune(cfg.epochs, cfg.lr))
    return model, {"ranks": ranks}


@dataclass
class SeparableConfig(StepConfig):
    layers: list[str] = field(default_factory=list)  # fnmatch patterns; empty: every k x k conv but the first
    epochs: int = 0
    lr: Optional[float] = None

    def __post_init__(self):
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")


def _rebuild_separable(model: nn.Module, cfg: SeparableConfig, meta: dict) -> nn.Module:
    for name in meta.get("layers") or []:
        m = get_module(model, name, cfg.where)
        if not isinstance(m, nn.Conv2d):
            raise UserError(f"{cfg.where}: cannot rebuild separable layer '{name}' on {type(m).__name__}")
        set_module(model, name, separable_pair(m), cfg.where)
    return model


@register_method("separable", SeparableConfig, label="depthwise-separable convolutions", rebuild=_rebuild_separable)
def apply_separable(model: nn.Module, cfg: SeparableConfig, ctx):
    require_not(model, {"int8", "uint8", "binary", "float16", "bfloat16"}, cfg.where, "separable (put it before quantisation)")
    names = separable_candidates(model, cfg.layers)
    if not names:
        raise UserError(f"{cfg.where}: no full k x k Conv2d layer to make depthwise-separable (layers: {cfg.layers})")
    before = sum(p.numel() for p in model.parameters())
    factorize_separable(model, names)
    after = sum(p.numel() for p in model.parameters())
    ctx.log(f"separable: {before:,} -> {after:,} parameters ({', '.join(names)})")
    if cfg.epochs > 0:
        ctx.need_fine_tune(cfg.where, "separable with epochs > 0")(model, FineTune(cfg.epochs, cfg.lr))
    return model, {"layers": names}
