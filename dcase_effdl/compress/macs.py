"""Multiply-accumulate operations (MACs) of conv and linear layers for one input example, via forward hooks.

Counted like `torch.utils.flop_counter.FlopCounterMode` (flops = 2 x MACs) and torchinfo's
conv/linear rows: a convolution costs output elements x (input channels / groups) x kernel
elements, a linear layer output elements x input features; bias additions, activations, pooling
and batch norm are not counted. A module that computes differently (e.g. an int8 layer calling an
integer kernel) declares `count_macs(inputs, output) -> int` and is counted by that.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


def _layer_macs(module: nn.Module, inputs: tuple, output) -> int | None:
    custom = getattr(module, "count_macs", None)
    if callable(custom):
        return int(custom(inputs, output))
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        return output.numel() * (module.in_channels // module.groups) * kernel
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    return None


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    """MACs for one example shaped `input_shape` (C, F, T): {'macs': total, 'layers': [{name, type, macs}]}.

    Runs one forward pass in eval mode on zeros (the model's mode is restored afterwards).
    """
    layers: list[dict] = []
    handles = []
    counted_inside: set[str] = set()

    def hook_for(name: str):
        def hook(module, inputs, output):
            if any(name.startswith(prefix + ".") for prefix in counted_inside):
                return  # a parent that counts itself (count_macs) already covers its children
            macs = _layer_macs(module, inputs, output)
            if macs is not None:
                layers.append({"name": name, "type": type(module).__name__, "macs": macs})

        return hook

    for name, module in model.named_modules():
        if callable(getattr(module, "count_macs", None)):
            counted_inside.add(name)
        handles.append(module.register_forward_hook(hook_for(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {"macs": sum(layer["macs"] for layer in layers), "layers": layers}
