"""Swap submodules by dotted name and describe layer shapes as JSON, so structural steps can be rebuilt.

A step that changes the architecture (channel pruning, factorization, 1-bit layers) records what
it built as plain data (`layer_spec`); its `rebuild` recreates the same modules from that data in
a freshly built float model (`build_layer`), before the variant file's tensors are loaded into it.
"""

from __future__ import annotations

import torch.nn as nn

from dcase_effdl.errors import UserError


def layer_spec(module: nn.Module) -> dict:
    """JSON description of a Conv2d, Linear or BatchNorm2d: enough to build an empty one of the same shape."""
    if isinstance(module, nn.Conv2d):
        padding = module.padding if isinstance(module.padding, str) else list(module.padding)
        return {
            "type": "Conv2d",
            "in_channels": module.in_channels,
            "out_channels": module.out_channels,
            "kernel_size": list(module.kernel_size),
            "stride": list(module.stride),
            "padding": padding,
            "dilation": list(module.dilation),
            "groups": module.groups,
            "bias": module.bias is not None,
            "padding_mode": module.padding_mode,
        }
    if isinstance(module, nn.Linear):
        return {"type": "Linear", "in_features": module.in_features, "out_features": module.out_features, "bias": module.bias is not None}
    if isinstance(module, nn.BatchNorm2d):
        return {
            "type": "BatchNorm2d",
            "num_features": module.num_features,
            "eps": module.eps,
            "momentum": module.momentum,
            "affine": module.affine,
            "track_running_stats": module.track_running_stats,
        }
    raise TypeError(f"no layer spec for {type(module).__name__}")


_BUILDERS = {"Conv2d": nn.Conv2d, "Linear": nn.Linear, "BatchNorm2d": nn.BatchNorm2d}


def build_layer(spec: dict, source: str = "variant") -> nn.Module:
    """An (uninitialised) layer from `layer_spec` data; bad data is a UserError naming `source`."""
    if not isinstance(spec, dict) or spec.get("type") not in _BUILDERS:
        raise UserError(f"{source}: unknown layer description {spec!r}")
    args = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items() if k != "type"}
    try:
        return _BUILDERS[spec["type"]](**args)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{source}: bad layer description {spec!r} ({exc})") from None


def get_module(model: nn.Module, name: str, source: str = "variant") -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise UserError(f"{source}: the model has no layer '{name}'") from None


def set_module(model: nn.Module, name: str, module: nn.Module, source: str = "variant") -> None:
    """Replace submodule `name` (dotted path, e.g. 'features.0.0') with `module`."""
    get_module(model, name, source)
    model.set_submodule(name, module)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every Conv2d and Linear, in registration order (first = input side)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
