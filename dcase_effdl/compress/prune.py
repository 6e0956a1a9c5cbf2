"""Magnitude pruning (one-shot or gradual, global or per layer, with a per-layer cap) and channel pruning.

Recipe steps:

    {method: prune, amount: 0.5}                  # zero 50 % of the conv/dense weights, global magnitude
    {method: prune, n_nonzero: 240000, epochs: 20, schedule: linear}   # Koutini-style ramp while fine-tuning
    {method: prune_channels, amount: 0.5, epochs: 5}                   # fewer conv channels: smaller and faster

`prune` zeroes weights of Conv2d and Linear layers (biases and batch norm are never pruned). The
target is `amount` (fraction of the prunable weights) or `n_nonzero` (non-zero weights and biases
left in all Conv2d/Linear layers, what the dcase2020 size rule counts). `scope: global` ranks all
weights together, `scope: layer` prunes each layer by the same fraction. No layer loses more than
`max_layer_sparsity` of its weights: plain global magnitude pruning of a fresh network can remove a
whole layer (measured), which disconnects the network. With `epochs > 0` the model is fine-tuned
while the sparsity ramps from 0 to the target over the first `ramp_fraction` of the epochs
(`schedule: linear | cubic`; `oneshot` prunes fully before fine-tuning); masks are re-applied after
every optimizer step. Of the epochs that end at the target sparsity, the one with the best
validation macro accuracy is kept (fit's best-epoch rule, told by the hook which epochs qualify),
and the final masks are applied once more.
The zeros are stored as the variant file chooses (values + 1-bit mask when that is smaller).

`prune_channels` removes whole output channels of convolutions (smallest filter L1 norm, or smallest
batch-norm |gamma| with `criterion: bn`) and the matching inputs of the next conv or dense layer, so
the network really shrinks. It handles chains conv -> [batch norm, activation, pooling, dropout] ->
conv | flatten -> dense (found by tracing the model with torch.fx); other convs are left whole.
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
from dcase_effdl.compress.surgery import build_layer, get_module, layer_spec, set_module, weight_layers
from dcase_effdl.errors import UserError
from dcase_effdl.training.loop import FineTune

# ---------------------------------------------------------------- unstructured magnitude pruning


def prunable_layers(model: nn.Module, skip: typing.Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """Conv2d and Linear layers whose weights may be pruned (names matching a `skip` pattern excluded)."""
    return [(n, m) for n, m in weight_layers(model) if not any(fnmatch.fnmatchcase(n, p) for p in skip)]


def zeros_for_target(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    *,
    amount: float | None = None,
    n_nonzero: int | None = None,
    where: str = "prune",
) -> int:
    """Number of prunable weights to set to zero for `amount` (fraction) or `n_nonzero` (values left)."""
    n_prunable = sum(m.weight.numel() for _, m in layers)
    if amount is not None:
        return int(round(amount * n_prunable))
    if n_nonzero is None:
        raise UserError(f"{where}: give amount or n_nonzero")
    pruned_names = {n for n, _ in layers}
    fixed = 0  # non-zero values pruning does not touch: biases and weights of skipped layers
    for name, module in weight_layers(model):
        if module.bias is not None:
            fixed += int((module.bias != 0).sum())
        if name not in pruned_names:
            fixed += int((module.weight != 0).sum())
    budget = n_nonzero - fixed
    if budget < 1:
        raise UserError(f"{where}: n_nonzero {n_nonzero:,} is below the {fixed:,} non-zero biases and skipped weights pruning keeps")
    return max(0, n_prunable - budget)


def _layer_counts_global(mags: list[torch.Tensor], k: int, caps: list[int]) -> list[int]:
    """Zeros per layer: the k smallest magnitudes overall, except that no layer exceeds its cap.

    Water-filling: select globally among the layers still open; a layer that would exceed its cap
    is fixed at the cap and the rest of the budget is selected again among the others.
    """
    counts = [0] * len(mags)
    open_layers = list(range(len(mags)))
    remaining = k
    while remaining > 0 and open_layers:
        flat = torch.cat([mags[i].reshape(-1) for i in open_layers])
        owner = torch.cat([torch.full((mags[i].numel(),), i, dtype=torch.long) for i in open_layers])
        order = torch.sort(flat, stable=True).indices[:remaining]
        chosen = torch.bincount(owner[order], minlength=len(mags))
        over = [i for i in open_layers if int(chosen[i]) > caps[i]]
        if not over:
            for i in open_layers:
                counts[i] = int(chosen[i])
            return counts
        for i in over:
            counts[i] = caps[i]
            remaining -= caps[i]
            open_layers.remove(i)
    return counts


def _layer_counts_uniform(sizes: list[int], k: int) -> list[int]:
    """Zeros per layer for the same fraction everywhere, summing to exactly k (largest remainders)."""
    total = sum(sizes)
    exact = [k * n / total for n in sizes]
    counts = [int(math.floor(e)) for e in exact]
    for i in sorted(range(len(sizes)), key=lambda i: exact[i] - counts[i], reverse=True)[: k - sum(counts)]:
        counts[i] += 1
    return counts


def magnitude_masks(
    layers: list[tuple[str, nn.Module]],
    n_zeros: int,
    *,
    scope: str = "global",
    max_layer_sparsity: float = 0.9,
    where: str = "prune",
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks (layer name -> mask shaped like its weight) zeroing `n_zeros` smallest weights."""
    mags = [m.weight.detach().abs() for _, m in layers]
    sizes = [w.numel() for w in mags]
    caps = [int(math.floor(max_layer_sparsity * n)) for n in sizes]
    if n_zeros > sum(caps):
        raise UserError(
            f"{where}: pruning {n_zeros:,} of {sum(sizes):,} weights needs more than max_layer_sparsity "
            f"{max_layer_sparsity} in some layers (at most {sum(caps):,} can go)"
        )
    if scope == "global":
        counts = _layer_counts_global(mags, n_zeros, caps)
    else:
        counts = _layer_counts_uniform(sizes, n_zeros)
        for (name, _), c, cap, n in zip(layers, counts, caps, sizes):
            if c > cap:
                raise UserError(f"{where}: scope layer prunes {c / n:.3f} of '{name}', above max_layer_sparsity {max_layer_sparsity}")
    masks = {}
    for (name, _), w, c in zip(layers, mags, counts):
        keep = torch.ones(w.numel(), dtype=torch.bool)
        keep[torch.sort(w.reshape(-1), stable=True).indices[:c]] = False
        masks[name] = keep.reshape(w.shape)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    for name, keep in masks.items():
        model.get_submodule(name).weight.mul_(keep)


def sparsity_table(model: nn.Module) -> list[dict]:
    """Per Conv2d/Linear layer: weight n_params, n_nonzero and sparsity (fraction of zeros)."""
    rows = []
    for name, module in weight_layers(model):
        n = module.weight.numel()
        nnz = int((module.weight != 0).sum())
        rows.append({"layer": name, "n_params": n, "n_nonzero": nnz, "sparsity": round(1 - nnz / n, 6)})
    return rows


def ramp_fraction_at(epoch: int, ramp_epochs: int, schedule: str) -> float:
    """Fraction of the final number of zeros to reach at the start of `epoch` (1-based)."""
    if schedule == "oneshot":
        return 1.0
    progress = min(1.0, epoch / max(1, ramp_epochs))
    if schedule == "cubic":  # Zhu & Gupta 2017: fast early, gentle near the target
        return 1.0 - (1.0 - progress) ** 3
    return progress


class GradualPruning:
    """fit() hook: at each epoch start prune to the scheduled sparsity; after each step re-apply the masks.

    `eligible(epoch)` is fit's best-epoch rule: only epochs that end at the full target sparsity
    may be kept (an earlier, less sparse epoch is never chosen).
    """

    def __init__(self, skip, n_zeros, *, epochs, schedule="linear", ramp_fraction=0.5, scope="global", max_layer_sparsity=0.9,
                 where="prune"):
        self.skip, self.n_zeros, self.schedule, self.scope = list(skip), n_zeros, schedule, scope
        self.max_layer_sparsity, self.where = max_layer_sparsity, where
        self.ramp_epochs = 1 if schedule == "oneshot" else max(1, math.ceil(ramp_fraction * epochs))
        self.masks: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []

    def eligible(self, epoch: int) -> bool:
        return epoch >= self.ramp_epochs

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        layers = prunable_layers(model, self.skip)
        zeros = int(round(self.n_zeros * ramp_fraction_at(epoch, self.ramp_epochs, self.schedule)))
        self.masks = magnitude_masks(layers, zeros, scope=self.scope, max_layer_sparsity=self.max_layer_sparsity, where=self.where)
        apply_masks(model, self.masks)
        n = sum(m.weight.numel() for _, m in layers)
        self.history.append({"epoch": epoch, "n_zeros": zeros, "sparsity": round(zeros / n, 6)})

    def after_step(self, model: nn.Module) -> None:
        apply_masks(model, self.masks)


def prune_magnitude(
    model: nn.Module,
    *,
    amount: float | None = None,
    n_nonzero: int | None = None,
    scope: str = "global",
    max_layer_sparsity: float = 0.9,
    skip: typing.Sequence[str] = (),
    where: str = "prune",
) -> dict[str, torch.Tensor]:
    """One-shot magnitude pruning in place; returns the keep-masks."""
    layers = prunable_layers(model, skip)
    if not layers:
        raise UserError(f"{where}: no Conv2d or Linear layer left to prune (skip: {list(skip)})")
    n_zeros = zeros_for_target(model, layers, amount=amount, n_nonzero=n_nonzero, where=where)
    masks = magnitude_masks(layers, n_zeros, scope=scope, max_layer_sparsity=max_layer_sparsity, where=where)
    apply_masks(model, masks)
    return masks


@dataclass
class PruneConfig(StepConfig):
    amount: Optional[float] = None  # fraction of the prunable weights set to zero, in [0, 1)
    n_nonzero: Optional[int] = None  # or: non-zero weights + biases left in all Conv2d/Linear layers
    scope: typing.Literal["global", "layer"] = "global"
    max_layer_sparsity: float = 0.9  # no layer loses more than this fraction of its weights
    epochs: int = 0  # fine-tuning epochs (0: one-shot pruning, no training)
    lr: Optional[float] = None  # fine-tuning learning rate (None: the recipe's train.lr)
    schedule: typing.Literal["linear", "cubic", "oneshot"] = "linear"
    ramp_fraction: float = 0.5  # the sparsity reaches its target after this fraction of the epochs
    skip: list[str] = field(default_factory=list)  # layer-name patterns (fnmatch) never pruned

    def __post_init__(self):
        if (self.amount is None) == (self.n_nonzero is None):
            raise ValueError("give exactly one of amount (fraction of weights) or n_nonzero (values left)")
        if self.amount is not None and not 0.0 <= self.amount < 1.0:
            raise ValueError(f"amount must be in [0, 1) (a fraction of the weights), got {self.amount}")
        if self.n_nonzero is not None and self.n_nonzero < 1:
            raise ValueError(f"n_nonzero must be a positive number of parameters, got {self.n_nonzero}")
        if not 0.0 < self.max_layer_sparsity <= 1.0:
            raise ValueError(f"max_layer_sparsity must be in (0, 1], got {self.max_layer_sparsity}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if not 0.0 < self.ramp_fraction <= 1.0:
            raise ValueError(f"ramp_fraction must be in (0, 1], got {self.ramp_fraction}")


@register_method("prune", PruneConfig, label="pruning")
def apply_prune(model: nn.Module, cfg: PruneConfig, ctx):
    require_not(model, {"int8", "uint8", "binary"}, cfg.where, "prune")
    layers = prunable_layers(model, cfg.skip)
    if not layers:
        raise UserError(f"{cfg.where}: no Conv2d or Linear layer left to prune (skip: {cfg.skip})")
    n_zeros = zeros_for_target(model, layers, amount=cfg.amount, n_nonzero=cfg.n_nonzero, where=cfg.where)
    # Check feasibility before any training time is spent.
    magnitude_masks(layers, n_zeros, scope=cfg.scope, max_layer_sparsity=cfg.max_layer_sparsity, where=cfg.where)
    ramp = []
    if cfg.epochs > 0:
        fine_tune = ctx.need_fine_tune(cfg.where, "prune with epochs > 0")
        hook = GradualPruning(
            cfg.skip, n_zeros, epochs=cfg.epochs, schedule=cfg.schedule, ramp_fraction=cfg.ramp_fraction,
            scope=cfg.scope, max_layer_sparsity=cfg.max_layer_sparsity, where=cfg.where,
        )
        history = fine_tune(model, FineTune(cfg.epochs, cfg.lr, hooks=(hook,), eligible=hook.eligible))
        ramp, scores = hook.history, {r["epoch"]: r["val_accuracy"] for r in history.epochs}
        for row in ramp:  # the validation score of each epoch that could be kept
            if hook.eligible(row["epoch"]) and not math.isnan(scores.get(row["epoch"], math.nan)):
                row["val_accuracy"] = round(scores[row["epoch"]], 3)
        best = history.best_epoch if any("val_accuracy" in r for r in ramp) else None
        ctx.log("prune: sparsity ramp " + " ".join(f"{r['sparsity']:.2f}" for r in ramp)
                + (f"; best full-sparsity epoch {best} (validation macro accuracy {scores[best]:.1f} %)" if best else ""))
    # The final masks again: the restored best epoch may come from before the ramp's end, and
    # biases that were zero before fine-tuning may not be any more (n_nonzero counts them).
    prune_magnitude(model, amount=cfg.amount, n_nonzero=cfg.n_nonzero, scope=cfg.scope,
                    max_layer_sparsity=cfg.max_layer_sparsity, skip=cfg.skip, where=cfg.where)
    table = sparsity_table(model)
    for row in table:
        ctx.log(f"prune: {row['layer']}: {row['n_nonzero']:,} of {row['n_params']:,} non-zero (sparsity {row['sparsity']:.3f})")
    return model, {"sparsity": table, "ramp": ramp}


# ---------------------------------------------------------------- structured channel pruning

_PASS_THROUGH = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Sigmoid, nn.Tanh,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d, nn.Identity,
)
_PASS_FUNCTIONS = (F.relu, torch.relu, F.relu6, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.max_pool2d, F.avg_pool2d, F.dropout)


@dataclass
class ChannelGroup:
    """A conv whose output channels can be removed, with the layers that see those channels."""

    conv: str
    batch_norm: str | None
    consumer: str  # the next Conv2d or Linear
    consumer_kind: str  # 'conv' | 'linear'


def channel_groups(model: nn.Module, where: str = "prune_channels") -> list[ChannelGroup]:
    """Convs followed (through BN / activation / pooling / dropout) by exactly one conv or flatten -> dense."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # fx raises many types for untraceable control flow
        raise UserError(f"{where}: cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}); channel pruning needs a traceable model") from None
    modules = dict(model.named_modules())
    groups = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d) or modules[node.target].groups != 1:
            continue
        bn, cur = None, node
        while True:
            users = list(cur.users)
            if len(users) != 1:
                break
            user = users[0]
            mod = modules.get(user.target) if user.op == "call_module" else None
            if isinstance(mod, nn.BatchNorm2d) and bn is None:
                bn, cur = user.target, user
            elif isinstance(mod, _PASS_THROUGH) or (user.op == "call_function" and user.target in _PASS_FUNCTIONS):
                cur = user
            elif isinstance(mod, nn.Conv2d) and mod.groups == 1:
                groups.append(ChannelGroup(node.target, bn, user.target, "conv"))
                break
            elif isinstance(mod, nn.Flatten) or (user.op == "call_function" and user.target is torch.flatten):
                nxt = list(user.users)
                dense = modules.get(nxt[0].target) if len(nxt) == 1 and nxt[0].op == "call_module" else None
                if isinstance(dense, nn.Linear) and dense.in_features % modules[node.target].out_channels == 0:
                    groups.append(ChannelGroup(node.target, bn, nxt[0].target, "linear"))
                break
            else:
                break
    return groups


def _take(old: nn.Module, spec_changes: dict, copies: dict[str, torch.Tensor]) -> nn.Module:
    spec = {**layer_spec(old), **spec_changes}
    new = build_layer(spec).train(old.training)
    with torch.no_grad():
        for name, value in copies.items():
            getattr(new, name).copy_(value)
    return new


@torch.no_grad()
def prune_channels(
    model: nn.Module,
    amount: float,
    *,
    criterion: str = "l1",
    skip: typing.Sequence[str] = (),
    min_channels: int = 1,
    where: str = "prune_channels",
) -> dict[str, dict]:
    """Remove `amount` of the output channels of each prunable conv in place; returns {layer: layer_spec} of new layers."""
    changed: dict[str, None] = {}  # rebuilt layer names, in order
    for g in channel_groups(model, where):
        if any(fnmatch.fnmatchcase(g.conv, p) for p in skip):
            continue
        conv = get_module(model, g.conv)
        n_out = conv.out_channels
        n_keep = max(min_channels, int(round((1.0 - amount) * n_out)))
        if n_keep >= n_out:
            continue
        bn = get_module(model, g.batch_norm) if g.batch_norm else None
        if criterion == "bn" and bn is not None and bn.affine:
            importance = bn.weight.abs()
        else:
            importance = conv.weight.abs().sum(dim=(1, 2, 3))
        keep = torch.sort(torch.topk(importance, n_keep, sorted=False).indices).values

        copies = {"weight": conv.weight[keep]}
        if conv.bias is not None:
            copies["bias"] = conv.bias[keep]
        set_module(model, g.conv, _take(conv, {"out_channels": n_keep}, copies))
        changed[g.conv] = None
        if bn is not None:
            copies = {"running_mean": bn.running_mean[keep], "running_var": bn.running_var[keep], "num_batches_tracked": bn.num_batches_tracked}
            if bn.affine:
                copies.update(weight=bn.weight[keep], bias=bn.bias[keep])
            set_module(model, g.batch_norm, _take(bn, {"num_features": n_keep}, copies))
            changed[g.batch_norm] = None
        consumer = get_module(model, g.consumer)
        if g.consumer_kind == "conv":
            copies = {"weight": consumer.weight[:, keep]}
            changes = {"in_channels": n_keep}
        else:  # flatten of (channels, h, w): channel c owns inputs c*hw .. (c+1)*hw - 1
            hw = consumer.in_features // n_out
            cols = (keep[:, None] * hw + torch.arange(hw)[None, :]).reshape(-1)
            copies = {"weight": consumer.weight[:, cols]}
            changes = {"in_features": n_keep * hw}
        if consumer.bias is not None:
            copies["bias"] = consumer.bias
        set_module(model, g.consumer, _take(consumer, changes, copies))
        changed[g.consumer] = None
    return {name: layer_spec(get_module(model, name)) for name in changed}


@dataclass
class PruneChannelsConfig(StepConfig):
    amount: float = 0.5  # fraction of each prunable conv's output channels removed, in [0, 1)
    criterion: typing.Literal["l1", "bn"] = "l1"  # filter L1 norm, or |gamma| of the following batch norm
    min_channels: int = 1
    epochs: int = 0  # fine-tuning epochs after the cut
    lr: Optional[float] = None
    skip: list[str] = field(default_factory=list)  # conv-name patterns (fnmatch) left whole

    def __post_init__(self):
        if not 0.0 <= self.amount < 1.0:
            raise ValueError(f"amount must be in [0, 1) (a fraction of the channels), got {self.amount}")
        if self.min_channels < 1:
            raise ValueError(f"min_channels must be >= 1, got {self.min_channels}")
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")


def _rebuild_channels(model: nn.Module, cfg: PruneChannelsConfig, meta: dict) -> nn.Module:
    for name, spec in (meta.get("layers") or {}).items():
        set_module(model, name, build_layer(spec, cfg.where), cfg.where)
    return model


@register_method("prune_channels", PruneChannelsConfig, label="channel pruning", rebuild=_rebuild_channels)
def apply_prune_channels(model: nn.Module, cfg: PruneChannelsConfig, ctx):
    require_not(model, {"int8", "uint8", "binary"}, cfg.where, "prune_channels")
    before = sum(p.numel() for p in model.parameters())
    layers = prune_channels(model, cfg.amount, criterion=cfg.criterion, skip=cfg.skip, min_channels=cfg.min_channels, where=cfg.where)
    if not layers and cfg.amount > 0:
        raise UserError(f"{cfg.where}: no conv layer whose channels can be pruned (needs conv -> ... -> conv or flatten -> dense chains)")
    after = sum(p.numel() for p in model.parameters())
    ctx.log(f"prune_channels: {before:,} -> {after:,} parameters ({len(layers)} layers rebuilt)")
    if cfg.epochs > 0:
        ctx.need_fine_tune(cfg.where, "prune_channels with epochs > 0")(model, FineTune(cfg.epochs, cfg.lr))
    return model, {"layers": layers}
