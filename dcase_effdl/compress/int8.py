"""int8 step: static post-training quantization (calibrated on training data) or QAT, run on int8 kernels.

    {method: int8}                                 post-training, per-channel weights
    {method: int8, granularity: per_tensor}        one weight scale per layer
    {method: int8, qat_epochs: 5, qat_lr: 1e-4}    quantization-aware fine-tuning, then convert

Conv2d and Linear layers become `int8_kernels.Int8Conv2d` / `Int8Linear` (int8 weight codes and
scales, uint8 activations, oneDNN integer kernels). A batch norm that directly follows a conv is
folded into it first and a ReLU that directly follows is fused into the kernel (the float ReLU stays
in place: applying it twice changes nothing); a layer that reaches the next int8 layer only through
dropout, flatten or max-pools hands it uint8 codes, and a conv pools its codes itself. The graph is
read with `torch.fx` to find these pairs; a model fx cannot trace falls back to neighbours inside
`nn.Sequential` containers.
Activation ranges come from `calibration_samples` training examples (min/max or a percentile) or,
after QAT, from the ranges tracked while fine-tuning with fake quantization (straight-through).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from dcase_effdl.compress import int8_kernels as K
from dcase_effdl.compress.registry import StepConfig, register_method
from dcase_effdl.compress.storage import require_not
from dcase_effdl.compress.surgery import set_module
from dcase_effdl.errors import UserError
from dcase_effdl.training.loop import FineTune

_RELU_FUNCTIONS = {torch.relu, F.relu, torch.relu_}


@dataclass
class Int8Config(StepConfig):
    granularity: Literal["per_channel", "per_tensor"] = "per_channel"  # weight scales
    calibration_samples: int = 512  # training examples for activation ranges
    batch_size: int = 64  # calibration batch size
    observer: Literal["minmax", "percentile"] = "minmax"
    percentile: float = 99.99  # for observer: percentile (of each batch, averaged)
    reduce_range: bool = True  # 7-bit activations: no int16 saturation on CPUs without VNNI (AVX2)
    qat_epochs: int = 0  # > 0: quantization-aware fine-tuning before conversion
    qat_lr: float | None = None  # None: the recipe's train.lr
    keep_float: list[str] = field(default_factory=list)  # module names left in float32

    def __post_init__(self):
        if self.calibration_samples < 1:
            raise ValueError(f"calibration_samples must be >= 1, got {self.calibration_samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.qat_epochs < 0:
            raise ValueError(f"qat_epochs must be >= 0, got {self.qat_epochs}")
        if self.qat_lr is not None and self.qat_lr <= 0:
            raise ValueError(f"qat_lr must be > 0, got {self.qat_lr}")

    def describe(self) -> str:
        return "int8 quantization-aware training" if self.qat_epochs else "int8 post-training quantization"

    @property
    def act_qmax(self) -> int:
        return 127 if self.reduce_range else 255

    @property
    def per_channel(self) -> bool:
        return self.granularity == "per_channel"


# ---------------------------------------------------------------- which layers, with which BN / ReLU


def _is_relu(node, modules: dict) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _passes_codes(node, modules: dict, relu_fused: bool) -> bool:
    """Ops that give the same result on uint8 codes as on the values they stand for.

    Max-pooling qualifies when `CodeMaxPool2d` can take its place (non-overlapping windows).
    """
    if node.op == "call_module":
        m = modules.get(node.target)
        return (isinstance(m, (nn.Dropout, nn.Identity, nn.Flatten)) or (relu_fused and isinstance(m, nn.ReLU))
                or K.CodeMaxPool2d.handles(m))
    if node.op == "call_function":
        return node.target is torch.flatten or (relu_fused and node.target in _RELU_FUNCTIONS)
    return node.op == "call_method" and node.target == "flatten"


def _plan_fx(model: nn.Module, candidates: set[str]) -> list[dict]:
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    planned = {node.target for node in graph.nodes
               if node.op == "call_module" and node.target in candidates and calls[node.target] == 1}
    plan = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in planned:
            continue
        layer, out = modules[node.target], node
        entry = {"name": node.target, "bn": None, "relu": False, "relu_module": None, "out_to": None, "pools": [],
                 "fused_pool": None}
        users = list(out.users)
        if (isinstance(layer, nn.Conv2d) and len(users) == 1 and users[0].op == "call_module"
                and isinstance(modules.get(users[0].target), nn.BatchNorm2d) and calls[users[0].target] == 1
                and modules[users[0].target].track_running_stats):
            entry["bn"], out = users[0].target, users[0]
            users = list(out.users)
        if len(users) == 1 and _is_relu(users[0], modules):
            entry["relu"], out = True, users[0]
            if out.op == "call_module" and calls[out.target] == 1:
                entry["relu_module"] = out.target  # computed by the kernel: the float ReLU can go
        # Follow ops that work on codes to the next quantized layer: it can take this one's uint8 output.
        # A conv pools its own codes when only elementwise ops (dropout, a fused ReLU, identity) lie
        # between it and the first max-pool: not after a flatten.
        pools, fusable, fused_pool = [], isinstance(layer, nn.Conv2d), None
        while len(out.users) == 1:
            (user,) = out.users
            if user.op == "call_module" and user.target in planned and user.args and user.args[0] is out:
                entry["out_to"], entry["pools"], entry["fused_pool"] = user.target, pools, fused_pool
                break
            if not _passes_codes(user, modules, entry["relu"]) or not user.args or user.args[0] is not out:
                break
            if user.op == "call_module" and isinstance(modules[user.target], nn.MaxPool2d):
                if calls[user.target] != 1:
                    break
                if fusable and not pools:
                    fused_pool = user.target
                pools.append(user.target)
            elif (user.target is torch.flatten or user.target == "flatten"
                  or (user.op == "call_module" and isinstance(modules[user.target], nn.Flatten))):
                fusable = False
            out = user
        plan.append(entry)
    return plan


def _plan_sequential(model: nn.Module, candidates: set[str]) -> list[dict]:
    plan = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for i, (child, layer) in enumerate(children):
            name = f"{prefix}.{child}" if prefix else child
            if name not in candidates:
                continue
            entry = {"name": name, "bn": None, "relu": False, "relu_module": None, "out_to": None, "pools": [],
                     "fused_pool": None}
            j = i + 1
            if isinstance(layer, nn.Conv2d) and j < len(children) and isinstance(children[j][1], nn.BatchNorm2d):
                entry["bn"], j = (f"{prefix}.{children[j][0]}" if prefix else children[j][0]), j + 1
            entry["relu"] = j < len(children) and isinstance(children[j][1], nn.ReLU)
            plan.append(entry)
    planned = {e["name"] for e in plan}
    for name in candidates - planned:  # outside any Sequential: quantized alone
        plan.append({"name": name, "bn": None, "relu": False, "relu_module": None, "out_to": None, "pools": [],
                     "fused_pool": None})
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(plan, key=lambda e: order[e["name"]])


def plan_layers(model: nn.Module, keep_float: list[str], where: str) -> list[dict]:
    """[{name, bn, relu, relu_module, out_to, pools, fused_pool}] for each Conv2d / Linear to quantize, in graph order.

    bn: a batch norm to fold into the conv; relu: a ReLU follows (fused into the kernel), relu_module:
    that ReLU's module when nothing else uses it (then replaced by Identity); out_to: the next int8
    layer when only code-preserving ops lie between (this layer then outputs that layer's uint8 codes);
    pools: the max-pools among those ops (they pool codes); fused_pool: the first of them when the
    conv pools its codes itself (`Int8Conv2d.pool`).
    """
    modules = dict(model.named_modules())
    unknown = [name for name in keep_float if name not in modules]
    if unknown:
        raise UserError(f"{where}: int8: keep_float names no module: {unknown[0]!r}")
    candidates = {name for name, m in modules.items() if K.supports(m) and name not in keep_float}
    try:
        plan = _plan_fx(model, candidates)
    except Exception:  # models fx cannot trace (data-dependent control flow): Sequential neighbours only
        plan = _plan_sequential(model, candidates)
    if not plan:
        raise UserError(f"{where}: int8: no Conv2d or Linear layer to quantize")
    return plan


# ---------------------------------------------------------------- transformations


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv <- bn(conv(.)) in eval mode: scale each output channel's weights, shift its bias."""
    with torch.no_grad():
        std = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.weight is not None else torch.ones_like(std)
        beta = bn.bias if bn.bias is not None else torch.zeros_like(std)
        factor = gamma / std
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.copy_(conv.weight * factor.reshape(-1, 1, 1, 1))
        new_bias = (bias - bn.running_mean) * factor + beta
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias)
        else:
            conv.bias.copy_(new_bias)


def _fold_all(model: nn.Module, plan: list[dict]) -> None:
    for entry in plan:
        if entry["bn"]:
            fold_batch_norm(model.get_submodule(entry["name"]), model.get_submodule(entry["bn"]))
            set_module(model, entry["bn"], nn.Identity())


class _RangeObserver:
    """Input range of one layer over calibration batches (min/max, or mean of per-batch percentiles)."""

    def __init__(self, observer: str, percentile: float, generator: torch.Generator):
        self.observer, self.p, self.gen = observer, percentile / 100.0, generator
        self.lo, self.hi, self.n = float("inf"), float("-inf"), 0
        self.sum_lo = self.sum_hi = 0.0

    def __call__(self, module, inputs) -> None:
        x = inputs[0].detach().float().reshape(-1)
        if self.observer == "minmax":
            self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
            return
        if x.numel() > 1_000_000:  # torch.quantile's input limit; a random subset estimates it well
            x = x[torch.randint(0, x.numel(), (1_000_000,), generator=self.gen)]
        q = torch.quantile(x, torch.tensor([1.0 - self.p, self.p]))
        self.sum_lo, self.sum_hi, self.n = self.sum_lo + float(q[0]), self.sum_hi + float(q[1]), self.n + 1

    def range(self) -> tuple[float, float]:
        if self.observer == "minmax":
            return self.lo, self.hi
        return self.sum_lo / self.n, self.sum_hi / self.n


def calibrate(model: nn.Module, names: list[str], x: torch.Tensor, cfg: Int8Config, seed: int) -> dict:
    """{layer name: (lo, hi)} of each layer's input over `cfg.calibration_samples` examples of `x`."""
    gen = torch.Generator().manual_seed(seed)
    n = min(cfg.calibration_samples, len(x))
    idx = torch.randperm(len(x), generator=gen)[:n].sort().values
    observers = {name: _RangeObserver(cfg.observer, cfg.percentile, gen) for name in names}
    handles = [model.get_submodule(name).register_forward_pre_hook(obs) for name, obs in observers.items()]
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, n, cfg.batch_size):
                model(x[idx[start : start + cfg.batch_size]])
    finally:
        for h in handles:
            h.remove()
    return {name: obs.range() for name, obs in observers.items()}


def _ste(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Forward: xq; backward: identity (straight-through estimator)."""
    return x + (xq - x).detach()


class FakeQuantLayer(nn.Module):
    """A float Conv2d / Linear computing with fake-quantized input and weights (QAT).

    The input range is an exponential moving average updated in training mode; it is a buffer, so
    the training loop's best-epoch restore keeps weights and ranges consistent.
    """

    def __init__(self, layer: nn.Module, lo: float, hi: float, per_channel: bool, act_qmax: int, momentum: float = 0.01):
        super().__init__()
        self.layer, self.per_channel, self.act_qmax, self.momentum = layer, per_channel, act_qmax, momentum
        self.register_buffer("act_lo", torch.tensor(float(lo)))
        self.register_buffer("act_hi", torch.tensor(float(hi)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.act_lo.lerp_(x.detach().min(), self.momentum)
                self.act_hi.lerp_(x.detach().max(), self.momentum)
        scale, zp = K.activation_qparams(float(self.act_lo), float(self.act_hi), self.act_qmax)
        with torch.no_grad():  # the rounding has no gradient: straight-through
            x_fq = (K.quantize_input(x, scale, zp, self.act_qmax).float() - zp) * scale
            codes, w_scale = K.weight_qparams(self.layer.weight, self.per_channel)
            w_fq = codes.float() * w_scale.reshape(-1, *([1] * (codes.dim() - 1)))
        xq, wq = _ste(x, x_fq), _ste(self.layer.weight, w_fq)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(xq, wq, self.layer.bias)
        return F.linear(xq, wq, self.layer.bias)


def _int8_layer(model: nn.Module, layer: nn.Module, entry: dict, cfg: Int8Config) -> K._Int8Layer:
    kwargs = dict(per_channel=cfg.per_channel, act_qmax=cfg.act_qmax, relu=entry["relu"],
                  uint8_out=entry["out_to"] is not None)
    if not isinstance(layer, nn.Conv2d):
        return K.Int8Linear.like(layer, **kwargs)
    pool = entry.get("fused_pool")
    return K.Int8Conv2d.like(layer, pool=K.CodeMaxPool2d.window(model.get_submodule(pool)) if pool else None, **kwargs)


def _swap_fused_modules(model: nn.Module, plan: list[dict]) -> None:
    """Fused ReLUs become Identity; max-pools that receive uint8 codes become CodeMaxPool2d."""
    for entry in plan:
        if entry["relu_module"]:
            set_module(model, entry["relu_module"], nn.Identity())
        for name in entry["pools"]:
            set_module(model, name, K.CodeMaxPool2d.like(model.get_submodule(name), fused=name == entry.get("fused_pool")))


@register_method("int8", Int8Config, label="int8 quantization", rebuild=lambda model, cfg, meta: rebuild_int8(model, cfg, meta))
def apply_int8(model: nn.Module, cfg: Int8Config, ctx):
    require_not(model, {"int8", "uint8", "binary", "bool"}, cfg.where, "int8")
    K.check_kernels()
    bundle = ctx.need_data(cfg.where, "int8 calibration")
    plan = plan_layers(model, cfg.keep_float, cfg.where)
    model.eval()
    _fold_all(model, plan)
    names = [e["name"] for e in plan]
    ranges = calibrate(model, names, bundle.x_train, cfg, ctx.seed)

    if cfg.qat_epochs:
        fine_tune = ctx.need_fine_tune(cfg.where, "int8 QAT")
        for name in names:
            lo, hi = ranges[name]
            set_module(model, name, FakeQuantLayer(model.get_submodule(name), lo, hi, cfg.per_channel, cfg.act_qmax))
        ctx.log(f"int8: QAT for {cfg.qat_epochs} epochs on {len(names)} fake-quantized layers")
        fine_tune(model, FineTune(cfg.qat_epochs, cfg.qat_lr))  # trains in place
        for name in names:
            fq = model.get_submodule(name)
            ranges[name] = (float(fq.act_lo), float(fq.act_hi))
            set_module(model, name, fq.layer)

    input_qparams = {e["name"]: K.activation_qparams(*ranges[e["name"]], cfg.act_qmax) for e in plan}
    for entry in plan:
        layer = model.get_submodule(entry["name"])
        q = _int8_layer(model, layer, entry, cfg)
        codes, w_scale = K.weight_qparams(layer.weight, cfg.per_channel)
        q.set_quantized(codes, w_scale, layer.bias, *input_qparams[entry["name"]])
        if entry["out_to"]:
            q.set_output(*input_qparams[entry["out_to"]])
        set_module(model, entry["name"], q)
    _swap_fused_modules(model, plan)
    n_bn = sum(1 for e in plan if e["bn"])
    n_relu = sum(1 for e in plan if e["relu"])
    n_chain = sum(1 for e in plan if e["out_to"])
    n_pool = sum(1 for e in plan if e["fused_pool"])
    ctx.log(f"int8: {len(plan)} layers on integer kernels ({n_bn} batch norms folded, {n_relu} ReLUs fused, "
            f"{n_chain} pass uint8 codes on, {n_pool} pool them, {cfg.granularity} weights, {8 if cfg.act_qmax == 255 else 7}-bit activations)")
    return model.eval(), {"layers": plan}


def rebuild_int8(model: nn.Module, cfg: Int8Config, meta: dict) -> nn.Module:
    """The structure `apply_int8` produced, from a fresh float model (tensors are loaded afterwards)."""
    try:
        plan = [{"name": e["name"], "bn": e["bn"], "relu": e["relu"], "relu_module": e.get("relu_module"),
                 "out_to": e.get("out_to"), "pools": e.get("pools", []), "fused_pool": e.get("fused_pool")}
                for e in meta["layers"]]
        for entry in plan:
            layer = model.get_submodule(entry["name"])
            if not K.supports(layer):
                raise ValueError(f"{entry['name']} is a {type(layer).__name__}")
            if entry["fused_pool"] and (entry["fused_pool"] not in entry["pools"] or not isinstance(layer, nn.Conv2d)):
                raise ValueError(f"{entry['name']} cannot pool its codes with {entry['fused_pool']}")
            if entry["bn"]:
                model.get_submodule(entry["bn"])
                set_module(model, entry["bn"], nn.Identity())
            set_module(model, entry["name"], _int8_layer(model, layer, entry, cfg))
        for entry in plan:
            if entry["relu_module"]:
                model.get_submodule(entry["relu_module"])
            for name in entry["pools"]:
                if not K.CodeMaxPool2d.handles(model.get_submodule(name)):
                    raise ValueError(f"{name} is not a max-pool with non-overlapping windows")
        _swap_fused_modules(model, plan)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise UserError(f"{cfg.where}: int8 layer list does not fit the model ({exc})") from None
    return model.eval()
