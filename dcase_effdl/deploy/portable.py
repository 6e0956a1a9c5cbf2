"""A variant's module in standard operators an exporter can trace: int8 layers become QDQ (quantize/dequantize) ops.

`Int8Conv2d` / `Int8Linear` call oneDNN kernels directly, which no exporter knows. Each becomes a
`QDQConv2d` / `QDQLinear` that computes the same arithmetic in the PT2E "quantized_decomposed"
form: input clamped to the calibrated range and quantized to uint8 with the stored scale and zero
point, then dequantized; weights kept as the stored int8 codes and dequantized per output channel
(`dequantize_per_channel`); float32 bias; the fused ReLU. torch.onnx turns these into
QuantizeLinear / DequantizeLinear around Conv / Gemm, with the int8 codes as int8 initializers (the
QDQ format of onnxruntime). A layer that handed uint8 codes to the next one (`uint8_out`) now hands
on floats which the next layer quantizes with the same scale and zero point: the same codes.
Everything else (1-bit layers, pruned weights, float16-exact weights) exports as it computes.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcase_effdl.compress import int8_kernels as K
from dcase_effdl.compress.surgery import set_module


def _decomposed_ops():
    """torch.ops.quantized_decomposed, registered by importing its module (PT2E's quantize/dequantize ops)."""
    import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers the ops; no eager/FX quantization API is used)

    return torch.ops.quantized_decomposed


class _QDQLayer(nn.Module):
    """Shared: int8 `weight` codes, per-channel `weight_scale`, float32 `bias`, input qparams as Python numbers."""

    def __init__(self, layer: K._Int8Layer):
        super().__init__()
        x_scale, x_zp, w_scale, _ = layer._qparams()
        self.register_buffer("weight", layer.weight.detach().clone())
        self.register_buffer("weight_scale", w_scale.detach().float().clone())
        self.register_buffer("bias", layer.bias.detach().clone())
        self.x_scale, self.x_zp, self.qmax, self.relu = x_scale, x_zp, layer.act_qmax, layer.relu
        # quantize_input clamps the codes to [0, act_qmax]; clamping the values to what those codes
        # stand for first lets QuantizeLinear (which saturates at 255 only) give the same codes.
        self.lo, self.hi = -x_zp * x_scale, (self.qmax - x_zp) * x_scale

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        qd = _decomposed_ops()
        x = x.clamp(self.lo, self.hi)
        q = qd.quantize_per_tensor(x, self.x_scale, self.x_zp, 0, 255, torch.uint8)
        x = qd.dequantize_per_tensor(q, self.x_scale, self.x_zp, 0, 255, torch.uint8)
        w = qd.dequantize_per_channel(self.weight, self.weight_scale, None, 0, -K.WEIGHT_QMAX, K.WEIGHT_QMAX, torch.int8)
        return x, w

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        return torch.relu(y) if self.relu else y


class QDQConv2d(_QDQLayer):
    def __init__(self, layer: K.Int8Conv2d):
        super().__init__(layer)
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, layer.groups
        self.in_channels, self.kernel_size = layer.in_channels, layer.kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._inputs(x)
        return self._out(F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups))

    def count_macs(self, inputs, output) -> int:
        return output.numel() * (self.in_channels // self.groups) * math.prod(self.kernel_size)


class QDQLinear(_QDQLayer):
    def __init__(self, layer: K.Int8Linear):
        super().__init__(layer)
        self.in_features = layer.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._inputs(x)
        return self._out(F.linear(x, w, self.bias))

    def count_macs(self, inputs, output) -> int:
        return output.numel() * self.in_features


def portable_module(module: nn.Module) -> tuple[nn.Module, int]:
    """(a copy of `module` with every int8 layer replaced by its QDQ form, number replaced); `module` is untouched."""
    _decomposed_ops()  # before torch.onnx builds its registry, which maps only ops that exist by then
    out = copy.deepcopy(module).eval()
    names = [(name, m) for name, m in out.named_modules() if isinstance(m, K._Int8Layer)]
    for name, layer in names:
        set_module(out, name, QDQConv2d(layer) if isinstance(layer, K.Int8Conv2d) else QDQLinear(layer))
    return out, len(names)
