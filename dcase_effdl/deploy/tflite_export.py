"""LiteRT: a variant written as a .tflite flatbuffer from its own stored tensors (run by `deploy.litert`).

Why LiteRT and this route (measured 2026-12-01 on the 2-core Xeon): executorch, ai-edge-litert and
tflite-runtime are not on the package registry here; tensorflow-cpu 2.21.0 is (274 MB wheel, 1.3 GB
installed; installing it with constraints.txt took 50 s on a quiet machine, 357 s here at load
average 16), keeps the pinned numpy / protobuf / ml_dtypes /
flatbuffers, imports in the same process as torch 2.13.0+cpu and onnxruntime 1.32.0 (about 10 s of
CPU to import), and its `tf.lite.Interpreter` is the LiteRT runtime with the XNNPACK delegate and
full-integer int8 kernels. TensorFlow is imported only here (its .tflite schema) and in `litert`.

The file is written with the .tflite schema's object API (`schema_py_generated`), not the TF
converter, which would re-calibrate and requantize: the file holds the variant's numbers.
  float32 variants: float32 weights, batch norms folded into the convolution before them.
  float16 and 1-bit weights: FLOAT16 weight and bias tensors (+-1 for 1-bit) and a DEQUANTIZE op to
    float32 (XNNPACK unpacks them once, at load), the 1-bit scale and the batch norm as a MUL / ADD
    after the op (so the stored values stay exact); computed in float32 like the PyTorch variant.
  int8 variants: full integer. The stored uint8 activation code u with zero point z becomes the
    int8 code u - 128 with zero point z - 128 (the same real value), weights are the stored int8
    codes (symmetric, per channel, zero point 0), biases int32 at input scale x weight scale. The
    input is clamped to the first layer's calibrated range and quantized; a layer that passes codes
    on (`uint8_out`) outputs int8 at the next layer's input parameters, with the fused ReLU; the
    int8 step's 7-bit clamp (`reduce_range`: codes 0..127) is an int8 MINIMUM at code -1 placed
    after the max-pools that follow (max-pooling commutes with it), so the next layer sees exactly
    the clamped codes (TFLite's fused activations clamp only at 0, 1 or 6). A layer whose output is
    float32 in PyTorch (the last one: the logits) has no stored output scale: it DEQUANTIZEs its
    input codes and int8 weight codes and runs in float32, the oneDNN kernel's own arithmetic for
    that case (an int16 output there came out all zeros in TFLite 2.21's FULLY_CONNECTED, measured).
    What differs from oneDNN elsewhere: the bias is rounded to int32 (at most half a step of the
    accumulator), requantization uses TFLite's fixed-point multiplier, and QUANTIZE rounds half away
    from zero where PyTorch rounds half to even: a few codes one step apart, which later layers
    inherit (tests/test_deploy_litert.py measures each layer's input codes).
Pruned zeros are stored densely (TFLite's sparse tensors run on few kernels). Tensors are NHWC
inside; the model takes (batch, C, F, T) float32 like the other runtimes (a TRANSPOSE first) and
returns logits (batch, n_classes) float32. An op with no mapping here is refused with one line.
Loading a .tflite file never executes code from it: a flatbuffer is data (tensors, op codes).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from dcase_effdl.compress import int8_kernels as K
from dcase_effdl.compress.binary import _BinaryWeight, binarize
from dcase_effdl.compress.storage import format_map
from dcase_effdl.deploy.litert import require_runtime
from dcase_effdl.errors import UserError

FILE_IDENTIFIER = b"TFL3"


def _schema():
    from tensorflow.lite.python import schema_py_generated as s

    return s


# ---------------------------------------------------------------- flatbuffer builder


class _Builder:
    """Tensors, buffers and operators of one subgraph; `finish` packs them into .tflite bytes."""

    def __init__(self):
        s = self.s = _schema()
        self.tensors, self.ops, self.codes, self.buffers = [], [], {}, [s.BufferT()]  # buffer 0: empty by convention

    def tensor(self, shape, dtype: str, quant: dict | None = None, data: np.ndarray | None = None, name: str = "",
               static: bool = False) -> int:
        """A tensor; one without data or `static` (a dequantized constant) has a dynamic batch when shaped (1, ...)."""
        s = self.s
        t = s.TensorT()
        t.name = (name or f"t{len(self.tensors)}").encode()
        t.shape = np.asarray(shape, dtype=np.int32)
        t.type = getattr(s.TensorType, dtype.upper())
        t.buffer = 0
        if data is not None:
            buf = s.BufferT()
            buf.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            self.buffers.append(buf)
            t.buffer = len(self.buffers) - 1
        elif len(shape) and shape[0] == 1 and not static:  # activations: batch dynamic
            t.shapeSignature = np.asarray([-1, *shape[1:]], dtype=np.int32)
        if quant is not None:
            q = s.QuantizationParametersT()
            q.scale = np.asarray(quant["scale"], dtype=np.float32).reshape(-1)
            q.zeroPoint = np.asarray(quant["zero_point"], dtype=np.int64).reshape(-1)
            q.quantizedDimension = quant.get("dim", 0)
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, values: np.ndarray, dtype: str, quant: dict | None = None) -> int:
        values = np.ascontiguousarray(values.astype({"float32": np.float32, "float16": np.float16, "int8": np.int8,
                                                     "int32": np.int32}[dtype]))
        return self.tensor(values.shape, dtype, quant, data=values)

    def op(self, name: str, inputs: list[int], outputs: list[int], options=None, version: int = 1) -> None:
        s = self.s
        code = getattr(s.BuiltinOperator, name)
        if (code, version) not in self.codes:
            oc = s.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
            self.codes[(code, version)] = (len(self.codes), oc)
        o = s.OperatorT()
        o.opcodeIndex = self.codes[(code, version)][0]
        o.inputs, o.outputs = np.asarray(inputs, dtype=np.int32), np.asarray(outputs, dtype=np.int32)
        if options is not None:
            o.builtinOptionsType = getattr(s.BuiltinOptions, type(options).__name__[:-1])
            o.builtinOptions = options
        self.ops.append(o)

    def options(self, kind: str, **fields):
        opts = getattr(self.s, f"{kind}T")()
        for key, value in fields.items():
            setattr(opts, key, value)
        return opts

    def finish(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        import flatbuffers

        s = self.s
        sub = s.SubGraphT()
        sub.tensors, sub.operators, sub.name = self.tensors, self.ops, b"main"
        sub.inputs, sub.outputs = np.asarray(inputs, dtype=np.int32), np.asarray(outputs, dtype=np.int32)
        model = s.ModelT()
        model.version, model.subgraphs, model.buffers = 3, [sub], self.buffers
        model.operatorCodes = [oc for _, oc in sorted(self.codes.values(), key=lambda p: p[0])]
        model.description = description.encode()
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
        return bytes(builder.Output())


# ---------------------------------------------------------------- values flowing through the graph


@dataclass(frozen=True)
class _Value:
    """One activation: its tensor, torch shape (batch 1), whether NHWC (4-D) and, if int8, its
    (scale, int8 zero point), a pending code clamp (int8 code max) and whether it is >= 0 already."""

    tensor: int
    shape: tuple[int, ...]
    q: tuple[float, int] | None = None
    clamp: int | None = None
    relu: bool = False

    @property
    def tfl_shape(self) -> list[int]:
        if len(self.shape) == 4:
            n, c, h, w = self.shape
            return [n, h, w, c]
        return list(self.shape)


def _quant(q: tuple[float, int]) -> dict:
    return {"scale": [q[0]], "zero_point": [q[1]]}


class _Leaves(torch.fx.Tracer):
    """fx tracer that keeps the layers this converter maps (int8, 1-bit, code max-pool) as single calls."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (K._Int8Layer, K.CodeMaxPool2d, nn.Conv2d, nn.Linear))  # subclasses too: refused by name
                or super().is_leaf_module(m, qualname))


class _Converter:
    """Walks the fx graph of a variant's module and emits TFLite ops (see the module docstring)."""

    def __init__(self, module: nn.Module, name: str):
        self.module, self.name, self.b = module, name, _Builder()
        self.formats = format_map(module)
        self.modules = dict(module.named_modules())
        self.graph = torch.fx.GraphModule(module, _Leaves().trace(module)).graph
        self.users = {node: list(node.users) for node in self.graph.nodes}
        self.absorbed: dict = {}  # batch-norm node -> the conv node whose output it is folded into

    def refuse(self, what: str):
        raise UserError(f"variant '{self.name}': {what} has no TFLite mapping here (supported: Conv2d, Linear, "
                        "BatchNorm2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), Dropout, Flatten, add, cat, "
                        "slicing, mean over F and T, int8 and 1-bit layers)")

    # -- small emitters

    def new(self, shape, q=None, dtype=None) -> _Value:
        v = _Value(-1, tuple(shape), q)
        t = self.b.tensor(v.tfl_shape, dtype or ("int8" if q else "float32"), _quant(q) if q else None)
        return replace(v, tensor=t)

    def weight(self, key: str, values: np.ndarray) -> int:
        """A float weight as stored: FLOAT16 + DEQUANTIZE where the variant stores it in 16 or 1 bit."""
        if self.formats.get(key) in ("float16", "binary") and np.array_equal(values.astype(np.float16), values):
            return self.half(values)
        return self.b.const(values, "float32")

    def half(self, values: np.ndarray) -> int:
        """float16-exact constants as FLOAT16 + DEQUANTIZE (XNNPACK unpacks them once, at load)."""
        out = self.b.tensor(values.shape, "float32", static=True)
        self.b.op("DEQUANTIZE", [self.b.const(values, "float16")], [out], version=3)
        return out

    def dequantize(self, v: _Value) -> _Value:
        if v.q is None:
            return v
        v = self.apply_clamp(v)
        out = self.new(v.shape)
        self.b.op("DEQUANTIZE", [v.tensor], [out.tensor], version=2)
        return out

    def apply_clamp(self, v: _Value, name: str = "") -> _Value:
        """The pending 7-bit clamp as an int8 MINIMUM (exact on codes: both sides share the parameters)."""
        if v.clamp is None:
            return v
        out = self.new(v.shape, v.q)
        if name:
            self.b.tensors[out.tensor].name = name.encode()
        limit = self.b.const(np.array([v.clamp]), "int8", _quant(v.q))
        self.b.op("MINIMUM", [v.tensor, limit], [out.tensor], version=2)
        return replace(out, relu=v.relu)

    def quantize_input(self, v: _Value, layer: K._Int8Layer, name: str) -> _Value:
        """float -> int8 codes of `layer`'s input: clamped to what codes 0..act_qmax stand for, then QUANTIZE.
        The codes the layer takes are the tensor named '<name>.input'."""
        scale, zp = float(layer.input_scale), int(layer.input_zero_point)
        q = (scale, zp - 128)
        if v.q is not None:
            if not (math.isclose(v.q[0], scale, rel_tol=1e-6) and v.q[1] == q[1]):
                v = self.dequantize(v)
            else:
                return self.apply_clamp(v, f"{name}.input")
        x = v
        if layer.act_qmax < 255:  # QUANTIZE saturates at -128 (code 0) by itself; the upper clamp is explicit
            hi = self.new(v.shape)
            self.b.op("MINIMUM", [x.tensor, self.b.const(np.array([(layer.act_qmax - zp) * scale]), "float32")],
                      [hi.tensor])
            x = hi
        out = self.new(v.shape, q)
        self.b.tensors[out.tensor].name = f"{name}.input".encode()
        self.b.op("QUANTIZE", [x.tensor], [out.tensor], version=2)
        return out

    def fused(self, relu: bool) -> int:
        a = self.b.s.ActivationFunctionType
        return a.RELU if relu else a.NONE

    # -- layers

    def conv_geometry(self, m, v: _Value, pad_value_q) -> tuple[_Value, int, tuple[int, int]]:
        """(input, possibly PADded, TFLite padding, output H W) for a zero-padded 2-D convolution."""
        kh, kw = m.kernel_size
        sh, sw = m.stride
        dh, dw = m.dilation
        padding = K._same_padding(m) if isinstance(m, nn.Conv2d) else list(m.padding)
        if padding is None:
            self.refuse(f"{type(m).__name__} with padding {m.padding!r} / {getattr(m, 'padding_mode', '')}")
        ph, pw = padding
        n, c, h, w = v.shape
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        P = self.b.s.Padding
        if (ph, pw) == (0, 0):
            return v, P.VALID, (ho, wo)
        if (sh, sw) == (1, 1) and 2 * ph == dh * (kh - 1) and 2 * pw == dw * (kw - 1):
            return v, P.SAME, (ho, wo)  # SAME at stride 1 pads symmetrically, as PyTorch does
        out = self.new((n, c, h + 2 * ph, w + 2 * pw), v.q)
        pads = self.b.const(np.array([[0, 0], [ph, ph], [pw, pw], [0, 0]]), "int32")
        self.b.op("PAD", [v.tensor, pads], [out.tensor], version=2 if v.q else 1)  # int8 pads with the zero point
        return out, P.VALID, (ho, wo)

    def conv_op(self, m, x: _Value, filt: int, bias: int, out: _Value, padding: int, relu: bool, int8: bool) -> None:
        b = self.b
        if m.groups == 1:
            opts = b.options("Conv2DOptions", padding=padding, strideH=m.stride[0], strideW=m.stride[1],
                             dilationHFactor=m.dilation[0], dilationWFactor=m.dilation[1],
                             fusedActivationFunction=self.fused(relu))
            b.op("CONV_2D", [x.tensor, filt, bias], [out.tensor], opts, version=3 if int8 else 1)
        else:
            opts = b.options("DepthwiseConv2DOptions", padding=padding, strideH=m.stride[0], strideW=m.stride[1],
                             dilationHFactor=m.dilation[0], dilationWFactor=m.dilation[1],
                             depthMultiplier=m.out_channels // m.in_channels, fusedActivationFunction=self.fused(relu))
            b.op("DEPTHWISE_CONV_2D", [x.tensor, filt, bias], [out.tensor], opts, version=3 if int8 else 1)

    def filter_layout(self, m, w: np.ndarray) -> tuple[np.ndarray, int]:
        """PyTorch OIHW -> TFLite OHWI (CONV_2D) or 1HWO (depthwise); the output-channel axis."""
        if m.groups == 1:
            return w.transpose(0, 2, 3, 1), 0
        if m.groups == m.in_channels:
            return w.transpose(1, 2, 3, 0), 3
        self.refuse(f"Conv2d with groups={m.groups} (neither 1 nor depthwise)")

    def int8_layer(self, node, m: K._Int8Layer, v: _Value) -> _Value:
        b = self.b
        x = self.quantize_input(v, m, node.target)
        if isinstance(m, K.Int8Linear):
            x = self.flat(x, node)
        s_in = x.q[0]
        n_out = m.weight.shape[0]
        w_scale = m.weight_scale.detach().double().expand(n_out).numpy()
        codes = m.weight.detach().numpy()
        if isinstance(m, K.Int8Conv2d):
            x, padding, (ho, wo) = self.conv_geometry(m, x, x.q)
            codes, dim = self.filter_layout(m, codes)
            shape = (x.shape[0], n_out, ho, wo)
        else:
            dim, shape, padding = 0, (x.shape[0], n_out), None
        filt = b.const(codes, "int8", {"scale": w_scale, "zero_point": np.zeros(n_out), "dim": dim})
        if not m.uint8_out:  # float32 out in PyTorch: no output scale stored, so this layer runs in float32
            return self.dequantized_layer(m, x, filt, shape, padding)
        # int32 bias at the accumulator's scale (input scale x weight scale), as TFLite's kernels require
        bias = np.round(m.bias.detach().double().numpy() / (s_in * w_scale)).astype(np.int64)
        if np.abs(bias).max(initial=0) >= 2**31:
            raise UserError(f"variant '{self.name}': {node.target}: bias does not fit int32 at the accumulator scale")
        bias_t = b.const(bias, "int32", {"scale": s_in * w_scale, "zero_point": np.zeros(n_out)})
        out = self.new(shape, (float(m.output_scale), int(m.output_zero_point) - 128))
        b.tensors[out.tensor].name = node.target.encode()  # the layer's int8 codes, found by name in tests
        out = replace(out, clamp=m.act_qmax - 128 if m.act_qmax < 255 else None, relu=m.relu)
        if isinstance(m, K.Int8Conv2d):
            self.conv_op(m, x, filt, bias_t, out, padding, m.relu, int8=True)
        else:
            opts = b.options("FullyConnectedOptions", fusedActivationFunction=self.fused(m.relu))
            b.op("FULLY_CONNECTED", [x.tensor, filt, bias_t], [out.tensor], opts, version=4)
        return out

    def dequantized_layer(self, m: K._Int8Layer, x: _Value, filt: int, shape, padding) -> _Value:
        """The oneDNN kernel's float32-output case: acc x (input scale x weight scale) + float32 bias, computed
        in float32 on the DEQUANTIZEd input codes and weight codes (the int8 codes stay what is stored)."""
        b = self.b
        x = self.dequantize(x)
        wf = b.tensor([int(d) for d in b.tensors[filt].shape], "float32", static=True)
        b.op("DEQUANTIZE", [filt], [wf], version=2)
        out = self.new(shape)
        bias_t = b.const(m.bias.detach().float().numpy(), "float32")
        if isinstance(m, K.Int8Conv2d):
            self.conv_op(m, x, wf, bias_t, out, padding, m.relu, int8=False)
        else:
            b.op("FULLY_CONNECTED", [x.tensor, wf, bias_t], [out.tensor],
                 b.options("FullyConnectedOptions", fusedActivationFunction=self.fused(m.relu)))
        return replace(out, relu=m.relu)

    def float_conv(self, node, m: nn.Conv2d, v: _Value) -> _Value:
        b = self.b
        v = self.dequantize(v)
        key = node.target
        w = m.weight.detach().float().numpy()
        post_mul = None
        if isinstance(m, _BinaryWeight):  # +-1 signs stored, the scale applied after the op
            w = binarize(m.weight.detach()).float().numpy()
            post_mul = m.weight_scale.detach().float().expand(m.weight.shape[0]).numpy()
        bias = m.bias.detach().float().numpy() if m.bias is not None else np.zeros(m.weight.shape[0], np.float32)
        bn, relu_node = self.following_bn(node)
        keep16 = self.formats.get(f"{key}.weight") in ("float16", "binary")
        post_add = None
        if bn is not None:
            std = np.sqrt(bn.running_var.detach().double().numpy() + bn.eps)
            gamma = bn.weight.detach().double().numpy() if bn.weight is not None else np.ones_like(std)
            beta = bn.bias.detach().double().numpy() if bn.bias is not None else np.zeros_like(std)
            f = gamma / std
            post_mul = f if post_mul is None else post_mul * f
            # float16 weights keep their stored bias inside the op (see below); otherwise it joins the shift
            inner = 0.0 if keep16 and not isinstance(m, _BinaryWeight) else bias
            post_add = (inner - bn.running_mean.detach().double().numpy()) * f + beta
        elif post_mul is not None:
            post_add = bias
        if post_mul is not None and not keep16:  # float32 weights: fold the scale and shift into them
            w = (w * post_mul.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
            bias, post_mul, post_add = post_add.astype(np.float32), None, None
        if isinstance(m, nn.Conv2d):
            x, padding, (ho, wo) = self.conv_geometry(m, v, None)
            wl, _ = self.filter_layout(m, w)
            filt = self.weight(f"{key}.weight", wl)
            shape = (x.shape[0], m.out_channels, ho, wo)
        else:
            x = self.flat(v, node)
            filt = self.weight(f"{key}.weight", w)
            shape = (x.shape[0], m.out_features)
        # With float16 weights XNNPACK takes the op only with a float16 bias as well (a float32 one ran
        # the float16 baseline CNN 2.6x slower, 148 vs 57 ms): the stored bias, or float16 zeros where a
        # 1-bit layer's bias follows its scale in the ADD after the op.
        if keep16 and isinstance(m, _BinaryWeight):
            bias_t = self.half(np.zeros(len(bias), np.float32))
        else:
            bias_t = self.weight(f"{key}.bias", bias)
        out = self.new(shape)
        relu_here = post_mul is None and relu_node is not None
        if isinstance(m, nn.Conv2d):
            self.conv_op(m, x, filt, bias_t, out, padding, relu_here, int8=False)
        else:
            b.op("FULLY_CONNECTED", [x.tensor, filt, bias_t], [out.tensor],
                 b.options("FullyConnectedOptions", fusedActivationFunction=self.fused(relu_here)))
        if post_mul is not None:
            out = self.affine(out, post_mul, post_add)
        if relu_here:
            self.absorbed[relu_node] = True
            out = replace(out, relu=True)
        return out

    def affine(self, v: _Value, mul: np.ndarray, add: np.ndarray) -> _Value:
        """x * mul + add per channel (the last NHWC axis), float32."""
        m_out, a_out = self.new(v.shape), self.new(v.shape)
        self.b.op("MUL", [v.tensor, self.b.const(mul, "float32")], [m_out.tensor], self.b.options("MulOptions"))
        self.b.op("ADD", [m_out.tensor, self.b.const(add, "float32")], [a_out.tensor], self.b.options("AddOptions"))
        return a_out

    def following_bn(self, node):
        """(the BatchNorm2d that alone consumes this conv's output, the ReLU right after it) or (None, ReLU)."""
        users = self.users[node]
        bn = None
        if (len(users) == 1 and users[0].op == "call_module"
                and isinstance(self.modules[users[0].target], nn.BatchNorm2d)):
            bn_node = users[0]
            bn = self.modules[bn_node.target]
            if not bn.track_running_stats or bn.running_var is None:
                return None, None
            self.absorbed[bn_node] = node
            users = self.users[bn_node]
        relu = users[0] if len(users) == 1 and self.is_relu(users[0]) else None
        return bn, relu

    def is_relu(self, node) -> bool:
        if node.op == "call_module":
            return isinstance(self.modules[node.target], nn.ReLU)
        if node.op == "call_function":
            return node.target in (torch.relu, F.relu, torch.relu_)
        return node.op == "call_method" and node.target in ("relu", "relu_")

    def flat(self, v: _Value, node) -> _Value:
        """(N, C, H, W) -> (N, C*H*W) in PyTorch's order: NHWC is transposed back to NCHW first."""
        if len(v.shape) == 2:
            return v
        if len(v.shape) != 4:
            self.refuse(f"a {len(v.shape)}-D input to '{node.target}'")
        n, c, h, w = v.shape
        x = v
        if h * w > 1:
            t = self.b.tensor([n, c, h, w], "int8" if v.q else "float32", _quant(v.q) if v.q else None)
            self.b.op("TRANSPOSE", [v.tensor, self.b.const(np.array([0, 3, 1, 2]), "int32")], [t], version=2 if v.q else 1)
            x = replace(v, tensor=t)
        out = _Value(-1, (n, c * h * w), v.q, v.clamp, v.relu)
        t = self.b.tensor(out.tfl_shape, "int8" if v.q else "float32", _quant(v.q) if v.q else None)
        self.b.op("RESHAPE", [x.tensor, self.b.const(np.array([-1, c * h * w]), "int32")], [t],
                  self.b.options("ReshapeOptions", newShape=[-1, c * h * w]))
        return replace(out, tensor=t)

    def pool(self, node, m, v: _Value, kind: str) -> _Value:
        pair = lambda p: tuple(p) if isinstance(p, (tuple, list)) else (p, p)  # noqa: E731
        kh, kw = pair(m.kernel_size)
        sh, sw = pair(m.stride if m.stride is not None else m.kernel_size)
        if pair(m.padding) != (0, 0) or m.ceil_mode or (kind == "MAX_POOL_2D" and pair(m.dilation) != (1, 1)):
            self.refuse(f"{type(m).__name__} with padding, dilation or ceil_mode ('{node.target}')")
        if kind == "AVERAGE_POOL_2D":
            v = self.dequantize(v)  # an average of codes is a new value: no stored parameters for it
        n, c, h, w = v.shape
        out = self.new((n, c, (h - kh) // sh + 1, (w - kw) // sw + 1), v.q)
        opts = self.b.options("Pool2DOptions", padding=self.b.s.Padding.VALID, strideH=sh, strideW=sw,
                              filterHeight=kh, filterWidth=kw)
        self.b.op(kind, [v.tensor], [out.tensor], opts, version=2 if v.q else 1)
        return replace(out, clamp=v.clamp, relu=v.relu)

    def relu(self, v: _Value) -> _Value:
        if v.relu:
            return v
        out = self.new(v.shape, v.q)
        self.b.op("RELU", [v.tensor], [out.tensor], version=2 if v.q else 1)
        return replace(out, clamp=v.clamp, relu=True)

    def call_module(self, node, v: _Value) -> _Value:
        m = self.modules[node.target]
        if isinstance(m, K._Int8Layer):
            return self.int8_layer(node, m, v)
        if type(m) in (nn.Conv2d, nn.Linear) or isinstance(m, _BinaryWeight):
            return self.float_conv(node, m, v)
        if isinstance(m, nn.BatchNorm2d):
            if node in self.absorbed:
                return v
            v = self.dequantize(v)
            std = np.sqrt(m.running_var.detach().double().numpy() + m.eps)
            f = (m.weight.detach().double().numpy() if m.weight is not None else 1.0) / std
            beta = m.bias.detach().double().numpy() if m.bias is not None else 0.0
            return self.affine(v, f.astype(np.float32), (beta - m.running_mean.detach().double().numpy() * f).astype(np.float32))
        if isinstance(m, nn.ReLU):
            return v if node in self.absorbed else self.relu(v)
        if isinstance(m, nn.MaxPool2d):
            return self.pool(node, m, v, "MAX_POOL_2D")
        if isinstance(m, nn.AvgPool2d):
            if not m.count_include_pad and m.padding:
                self.refuse(f"AvgPool2d without count_include_pad ('{node.target}')")
            return self.pool(node, m, v, "AVERAGE_POOL_2D")
        if isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1)):
            v = self.dequantize(v)
            n, c, _, _ = v.shape
            out = self.new((n, c, 1, 1))
            self.b.op("MEAN", [v.tensor, self.b.const(np.array([1, 2]), "int32")], [out.tensor],
                      self.b.options("ReducerOptions", keepDims=True))
            return out
        if isinstance(m, (nn.Dropout, nn.Identity)):
            return v
        if isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
            return self.flat(v, node)
        self.refuse(f"module '{node.target}' ({type(m).__name__})")

    _AXIS = {0: 0, 1: 3, 2: 1, 3: 2}  # NCHW dimension -> NHWC axis

    def slice(self, v: _Value, index) -> _Value:
        """x[:, :, a:b] and the like (unit steps): a SLICE op."""
        index = index if isinstance(index, tuple) else (index,)
        if len(v.shape) != 4 or len(index) > 4 or not all(isinstance(i, slice) and i.step in (None, 1) for i in index):
            self.refuse(f"indexing {index!r}")
        ranges = [range(n)[i] for n, i in zip(v.shape, index)] + [range(n) for n in v.shape[len(index):]]
        if ranges[0] != range(v.shape[0]):
            self.refuse("slicing the batch")
        shape = tuple(len(r) for r in ranges)
        begin = [r.start if len(r) else 0 for r in ranges]
        out = self.new(shape, v.q)
        nhwc = lambda a: [a[0], a[2], a[3], a[1]]  # noqa: E731
        self.b.op("SLICE", [v.tensor, self.b.const(np.array(nhwc(begin)), "int32"),
                            self.b.const(np.array([-1, *nhwc(list(shape))[1:]]), "int32")], [out.tensor],
                  version=2 if v.q else 1)
        return replace(out, clamp=v.clamp, relu=v.relu)

    def call_function(self, node, args: list) -> _Value:
        target = node.target
        if target is getattr and isinstance(args[0], _Value) and args[1] == "shape":
            return args[0].shape  # static: the graph is built for one input shape (batch aside)
        if target in (operator.getitem, operator.floordiv, operator.mul, operator.sub) and \
                not any(isinstance(a, _Value) for a in args):
            return target(*args)  # arithmetic on static sizes
        if target is operator.getitem and isinstance(args[0], _Value):
            return self.slice(args[0], args[1])
        if target is torch.cat and not node.kwargs.keys() - {"dim"}:
            values, dim = args[0], node.kwargs.get("dim", args[1] if len(args) > 1 else 0)
            values = [self.dequantize(v) for v in values]
            if not values or any(len(v.shape) != 4 for v in values) or dim % 4 == 0:
                self.refuse(f"cat along dim {dim}")
            dim %= 4
            shape = list(values[0].shape)
            shape[dim] = sum(v.shape[dim] for v in values)
            out = self.new(shape)
            self.b.op("CONCATENATION", [v.tensor for v in values], [out.tensor],
                      self.b.options("ConcatenationOptions", axis=self._AXIS[dim]))
            return out
        if node.op == "call_method" and target == "mean" and isinstance(args[0], _Value):
            dims = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
            keep = node.kwargs.get("keepdim", False)
            if len(args[0].shape) != 4 or tuple(d % 4 for d in dims or ()) != (2, 3) or node.kwargs.keys() - {"dim", "keepdim"}:
                self.refuse(f"mean over dims {dims}")
            v = self.dequantize(args[0])
            n, c = v.shape[:2]
            out = self.new((n, c, 1, 1) if keep else (n, c))
            self.b.op("MEAN", [v.tensor, self.b.const(np.array([1, 2]), "int32")], [out.tensor],
                      self.b.options("ReducerOptions", keepDims=bool(keep)))
            return out
        if self.is_relu(node):
            return args[0] if node in self.absorbed else self.relu(args[0])
        if target is torch.flatten or (node.op == "call_method" and target == "flatten"):
            if tuple(node.args[1:]) in ((1,), (1, -1)) and not node.kwargs:
                return self.flat(args[0], node)
        if target in (operator.add, torch.add) and len(args) == 2 and all(isinstance(a, _Value) for a in args) \
                and not node.kwargs:
            a, c = (self.dequantize(x) for x in args)
            if a.shape != c.shape:
                self.refuse(f"add of shapes {a.shape} and {c.shape}")
            out = self.new(a.shape)
            self.b.op("ADD", [a.tensor, c.tensor], [out.tensor], self.b.options("AddOptions"))
            return out
        self.refuse(f"{node.op} '{getattr(target, '__name__', target)}'")

    @staticmethod
    def lookup(env: dict, arg):
        """An fx argument with its nodes replaced by their values (lists and tuples too)."""
        if isinstance(arg, torch.fx.Node):
            return env[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(_Converter.lookup(env, a) for a in arg)
        if isinstance(arg, slice):
            return slice(*(_Converter.lookup(env, a) for a in (arg.start, arg.stop, arg.step)))
        return arg

    def convert(self, input_shape: tuple[int, int, int], description: str) -> bytes:
        b = self.b
        env: dict = {}
        inp = b.tensor([1, *input_shape], "float32", name="features")
        result = None
        for node in self.graph.nodes:
            if node.op == "placeholder":
                if env:
                    self.refuse("a second model input")
                v = self.new((1, *input_shape))
                b.op("TRANSPOSE", [inp, b.const(np.array([0, 2, 3, 1]), "int32")], [v.tensor])  # NCHW -> NHWC
                env[node] = v
            elif node.op == "call_module":
                env[node] = self.call_module(node, env[node.args[0]])
            elif node.op in ("call_function", "call_method"):
                env[node] = self.call_function(node, [self.lookup(env, a) for a in node.args])
            elif node.op == "output":
                result = env[node.args[0]]
            else:
                self.refuse(f"graph node {node.op} '{node.target}'")
        result = self.dequantize(result)
        if len(result.shape) != 2:
            self.refuse(f"an output shaped {result.shape} (logits (batch, classes) expected)")
        b.tensors[result.tensor].name = b"logits"
        return b.finish([inp], [result.tensor], description)


def to_tflite(module: nn.Module, input_shape: tuple[int, int, int], name: str) -> bytes:
    """The .tflite bytes of a variant's module (eval mode) on float32 input (batch, *input_shape)."""
    require_runtime()
    try:
        converter = _Converter(module.eval(), name)
    except torch.fx.proxy.TraceError as exc:
        raise UserError(f"variant '{name}': the model cannot be traced for TFLite ({exc})") from None
    with torch.no_grad():
        return converter.convert(input_shape, f"dcase_effdl variant {name}")
