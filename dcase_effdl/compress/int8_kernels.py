"""int8 conv and linear layers that run real integer kernels on the CPU (oneDNN u8 x s8 -> s32).

The only module that touches a quantized-kernel API. It calls the oneDNN operators that PyTorch's
PT2E x86 flow lowers to under `torch.compile` (`torch.ops.onednn.qconv2d_pointwise`,
`qlinear_pointwise` and their prepack ops, part of core ATen), directly in eager mode. Nothing
here uses the deprecated `torch.ao.quantization` eager/FX flow, torchao, or quantized tensor types:
codes, scales and zero points are plain tensors, so a layer is stored and reloaded as such.

Each layer takes a float32 input, quantizes it per tensor to uint8 with its calibrated scale and
zero point, runs the integer kernel with int8 weights (symmetric, per output channel or per
tensor; zero point 0), adds the float32 bias, optionally applies a fused ReLU and returns float32.
A layer whose output reaches the next int8 layer only through dropout or flatten (`uint8_out`)
instead requantizes in the kernel to the next layer's input scale and returns uint8 codes, which
the next layer takes as they are (no float round trip). A conv with uint8 output whose codes go
straight into a max-pool (`pool`) pools them itself, a tile (a few examples, or rows of one) at a
time, while the codes are still in cache; the pool module then passes them on
(`CodeMaxPool2d(fused=True)`). With several intra-op threads, threads take whole tiles (quantize,
conv, pool) on one intra-op thread each, and a small layer call runs on the calling thread alone:
per-call parallelism woke the other, sleeping, thread for every op and ran slower than one thread.
Without VNNI (AVX2) the kernel adds pairs of u8 x s8 products in int16, which can saturate: with
`act_qmax=127` ("reduce range", PyTorch's own default for x86) activations use 7 bits and it cannot.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import queue
import threading

import torch
import torch.nn as nn
import torch.nn.functional as F

from dcase_effdl.errors import UserError
from dcase_effdl.machine import one_intra_op_thread

WEIGHT_QMAX = 127  # symmetric int8 weights in [-127, 127]
# Conv output bytes per chunk when a conv pools its own codes: the first conv + pool of the 2020
# baseline at batch 64 (32 x 40 x 500 codes, 640 KB an example) took 232 ms on the whole batch and
# 116 / 136 / 152 ms in chunks of 8 / 4 / 16 examples (1 thread, shared machine): the conv writes its
# output at memory speed and the pool reads it back, unless both fit in the caches.
POOL_CHUNK_BYTES = 4 << 20
# A layer call with fewer multiply-adds runs on the calling thread alone: waking another thread, and
# waiting for its last tile when it is preempted, costs more than it saves. 2^29 is ~4 ms of conv on
# one thread here. Shared 2-core machine (other sessions' jobs, load 4-5), 2 threads, tiles split over
# both / all on one: the recipes/int8.yaml network at batch 1 (second conv 320 M) 6.7 / 2.3 ms; the
# 2020 baseline at batch 16 (convs 0.5 G, 1.3 G) 19 / 16 ms, at batch 64 75 / 71 ms: with the other
# sessions busy, this session's threads shared about one core between them (see run_tiles).
PARALLEL_MACS = 1 << 29
# oneDNN's int8 conv on 1-3 input channels is not bound by its multiply-adds (its time grows with the
# output channels, not the kernel): ~3x the time per multiply-add of the later convs. Quiet machine,
# 2 threads, first conv split or not (the later convs as PARALLEL_MACS says), ms per batch: the
# recipes/int8.yaml network at batch 4 (first conv 251 M) 6.3 / 9.0, the 2020 baseline at batch 8
# (251 M) 5.0 / 7.8; a later conv of 320 M split lost (3.9 / 3.6 at batch 4).
FEW_CHANNEL_COST = 3


def pool_tiles(batch: int, rows: int, example_bytes: int, threads: int) -> list[tuple[int, int, int, int]]:
    """(b0, b1, p0, p1) tiles of a conv that pools its codes: examples b0..b1, pooled rows p0..p1.

    Chunks of examples whose conv output fits POOL_CHUNK_BYTES (`example_bytes` each), as many
    chunks as a multiple of `threads` and of even size, so the threads get equal shares; fewer
    examples than threads: each example's pooled rows are split instead.
    """
    if batch >= threads or rows == 1:
        n = math.ceil(batch / max(1, POOL_CHUNK_BYTES // example_bytes))
        n = min(batch, math.ceil(n / threads) * threads)
        bounds = [round(i * batch / n) for i in range(n + 1)]
        return [(b0, b1, 0, rows) for b0, b1 in zip(bounds, bounds[1:])]
    parts = min(rows, math.ceil(threads / batch))
    bounds = [round(i * rows / parts) for i in range(parts + 1)]
    return [(b, b + 1, p0, p1) for b in range(batch) for p0, p1 in zip(bounds, bounds[1:])]


class _Share:
    """The tiles of one layer call, taken one at a time by the caller and the workers that get to it."""

    def __init__(self, fn, tiles: list):
        self.fn, self.tiles, self.inference = fn, tiles, torch.is_inference_mode_enabled()
        self.taken = self.left = 0
        self.lock, self.done, self.error = threading.Lock(), threading.Event(), None

    def work(self) -> None:
        while True:
            with self.lock:
                if self.taken == len(self.tiles):
                    return
                tile, self.taken = self.tiles[self.taken], self.taken + 1
            try:
                if self.error is None:
                    self.fn(tile)
            except BaseException as exc:  # raised by the caller
                self.error = exc
            with self.lock:
                self.left += 1
                if self.left == len(self.tiles):
                    self.done.set()


class _Workers:
    """`n` threads that each run torch ops on one intra-op thread, helping the caller with its tiles."""

    def __init__(self, n: int):
        self.n, self.pid, self._shares = n, os.getpid(), queue.SimpleQueue()
        caller, ready = torch.get_num_threads(), threading.Barrier(n + 1)
        for _ in range(n):
            threading.Thread(target=self._work, args=(ready,), daemon=True, name="int8-tiles").start()
        ready.wait()
        # A thread's set_num_threads also sets the count later new threads start with: put it back.
        torch.set_num_threads(caller)

    def _work(self, ready: threading.Barrier) -> None:
        # get first: a thread's first use of torch sets its count to the global one, which the
        # caller puts back to its own once every worker is ready.
        torch.get_num_threads()
        torch.set_num_threads(1)
        ready.wait()
        while True:
            share = self._shares.get()
            # Grad and inference modes are per thread: the caller's (its outputs may be inference tensors).
            with torch.inference_mode(share.inference), torch.no_grad():
                share.work()

    def run(self, fn, tiles: list) -> None:
        """fn(tile) for each tile, the caller taking tiles too: a worker that is slow to wake up (the
        cores busy) leaves it more, down to all of them, instead of making it wait."""
        share = _Share(fn, tiles)
        for _ in range(self.n):
            self._shares.put(share)
        with one_intra_op_thread():
            share.work()
        share.done.wait()
        if share.error is not None:
            raise share.error


_WORKERS: dict[int, _Workers] = {}


def layer_threads(macs: int) -> int:
    """Threads for a layer call of `macs` multiply-adds: torch's intra-op count, or 1 for a small call
    (below PARALLEL_MACS), under a dispatch mode or a trace (they watch the calling thread only, and
    would miss what other threads compute)."""
    if macs < PARALLEL_MACS or torch._C._len_torch_dispatch_stack() or torch.jit.is_tracing():
        return 1
    return torch.get_num_threads()




def run_tiles(fn, tiles: list, threads: int) -> None:
    """fn(tile) for each tile: on the calling thread, or (threads > 1) on it and `threads - 1` more
    threads, each running torch on one intra-op thread.

    Threads that each take whole tiles instead of oneDNN and torch parallelizing every call: on this
    2-core machine the int8 model at batch 64 took 202 ms with 2 threads against 158 ms with 1 (each
    of the ~100 small parallel calls a batch wakes the other thread, which OMP_WAIT_POLICY=PASSIVE
    puts to sleep in between). Linux groups a session's processes (sched_autogroup): `nice` does not
    lower a job against another session's, and 2 sessions' busy jobs leave this one about one core;
    a conv tile of the baseline (5 examples) then took 2 ms alone and 10 ms beside the other thread's.
    """
    if threads == 1 or len(tiles) == 1:
        for tile in tiles:
            fn(tile)
        return
    workers = _WORKERS.get(threads)
    if workers is None or workers.pid != os.getpid():  # threads do not survive a fork
        workers = _WORKERS[threads] = _Workers(threads - 1)
    workers.run(fn, tiles)


def check_kernels() -> None:
    """Fail clearly where this torch build has no oneDNN int8 kernels (e.g. not an x86 CPU build)."""
    ops = ("qconv_prepack", "qconv2d_pointwise", "qlinear_prepack", "qlinear_pointwise")
    missing = [op for op in ops if not hasattr(torch.ops.onednn, op)]
    if missing or not torch.backends.mkldnn.is_available():
        raise UserError(
            f"int8: this torch build ({torch.__version__}) lacks the oneDNN int8 kernels "
            f"({', '.join(missing) or 'mkldnn unavailable'}); an x86 CPU build of torch >= 2.4 is needed"
        )


def quantize_input(x: torch.Tensor, scale: float, zero_point: int, qmax: int) -> torch.Tensor:
    """float32 -> uint8 codes: clamp(round(x * (1 / scale) + zero_point), 0, qmax), round half to even.

    One function for calibration, QAT and inference, so all round alike (4 passes, in place).
    """
    return torch.add(float(zero_point), x, alpha=1.0 / scale).round_().clamp_(0, qmax).to(torch.uint8)


def activation_qparams(lo: float, hi: float, qmax: int) -> tuple[float, int]:
    """Affine uint8 parameters covering [min(lo, 0), max(hi, 0)] (zero is exactly representable)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / qmax
    if not math.isfinite(scale) or scale <= 0:
        scale = 1.0
    zero_point = int(min(max(round(-lo / scale), 0), qmax))
    return float(scale), zero_point


def weight_qparams(w: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes and float32 scales (one per output channel, or one) for weight `w`."""
    w = w.detach().float()
    if per_channel:
        amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    else:
        amax = w.abs().amax().reshape(1)
    scale = torch.where(amax > 0, amax / WEIGHT_QMAX, torch.ones_like(amax))
    shaped = scale.reshape(-1, *([1] * (w.dim() - 1)))
    codes = torch.clamp(torch.round(w / shaped), -WEIGHT_QMAX, WEIGHT_QMAX).to(torch.int8)
    return codes, scale


def _same_padding(conv: nn.Conv2d) -> list[int] | None:
    if conv.padding_mode != "zeros":
        return None
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return [0, 0]
        pads = []
        for k, d, s in zip(conv.kernel_size, conv.dilation, conv.stride):
            total = d * (k - 1)
            if total % 2 or s != 1:  # asymmetric 'same' padding: the kernel takes symmetric pads only
                return None
            pads.append(total // 2)
        return pads
    return list(conv.padding)


def supports(module: nn.Module) -> bool:
    """Whether `module` can become an int8 layer (plain Conv2d with symmetric zero padding, or Linear)."""
    if type(module) is nn.Linear:
        return True
    return type(module) is nn.Conv2d and _same_padding(module) is not None


class _Int8Layer(nn.Module):
    """Shared buffers: int8 `weight`, float32 `bias`, `weight_scale`, `input_scale`, `input_zero_point`."""

    tensor_roles = {"weight": "weight", "bias": "bias", "weight_scale": "scale", "input_scale": "scale",
                    "input_zero_point": "zero_point", "output_scale": "scale", "output_zero_point": "zero_point"}
    op_bits = 8  # multiplies and adds run on 8-bit operands (MicroNet op counting)

    def _init_buffers(self, weight_shape, n_scales: int, act_qmax: int, relu: bool, uint8_out: bool) -> None:
        self.register_buffer("weight", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("bias", torch.zeros(weight_shape[0]))
        self.register_buffer("weight_scale", torch.ones(n_scales))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32))
        if uint8_out:  # the next int8 layer's input parameters
            self.register_buffer("output_scale", torch.ones(()))
            self.register_buffer("output_zero_point", torch.zeros((), dtype=torch.int32))
        self.act_qmax = act_qmax
        self.relu = relu
        self.uint8_out = uint8_out
        self._packed = None
        self._register_load_state_dict_pre_hook(self._forget_packed)

    def _forget_packed(self, *args, **kwargs) -> None:
        self._packed = None

    def set_quantized(self, codes: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None,
                      input_scale: float, input_zero_point: int) -> None:
        with torch.no_grad():
            self.weight.copy_(codes)
            self.weight_scale.copy_(weight_scale)
            self.bias.copy_(bias if bias is not None else torch.zeros_like(self.bias))
            self.input_scale.fill_(input_scale)
            self.input_zero_point.fill_(input_zero_point)
        self._packed = None

    def set_output(self, scale: float, zero_point: int) -> None:
        """Requantize the output to (scale, zero_point): the input parameters of the next int8 layer."""
        with torch.no_grad():
            self.output_scale.fill_(scale)
            self.output_zero_point.fill_(zero_point)
        self._packed = None

    def _quantized_input(self, x: torch.Tensor, x_scale: float, x_zp: int) -> torch.Tensor:
        if x.dtype == torch.uint8:  # codes from the previous layer, already in this layer's parameters
            return x
        return quantize_input(x, x_scale, x_zp, self.act_qmax)

    def _post_op(self) -> tuple[float, int, torch.dtype, str, list]:
        """(output scale, zero point, dtype, oneDNN post-op, its scalars)."""
        if not self.uint8_out:
            return 1.0, 0, torch.float32, "relu" if self.relu else "none", []
        scale, zp = float(self.output_scale), int(self.output_zero_point)
        # Clamp in the real domain to the codes [0, act_qmax] (the kernel itself clamps to 255 only).
        lo = 0.0 if self.relu else -zp * scale
        return scale, zp, torch.uint8, "hardtanh", [max(lo, -zp * scale), (self.act_qmax - zp) * scale]

    def _qparams(self):
        n_out = self.weight.shape[0]
        scales = self.weight_scale.expand(n_out).contiguous() if self.weight_scale.numel() == 1 else self.weight_scale
        return float(self.input_scale), int(self.input_zero_point), scales, torch.zeros(n_out, dtype=torch.int64)

    def __deepcopy__(self, memo):
        # The packed oneDNN weight is an opaque tensor that cannot be deep-copied; it is rebuilt lazily.
        packed, self._packed = self._packed, None
        try:
            clone = self.__class__.__new__(self.__class__)
            memo[id(self)] = clone
            for key, value in self.__dict__.items():
                clone.__dict__[key] = copy.deepcopy(value, memo)
            return clone
        finally:
            self._packed = packed


class Int8Conv2d(_Int8Layer):
    """2-D convolution with int8 weights on uint8 activations (oneDNN), float32 in and out."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                 *, per_channel: bool, act_qmax: int, relu: bool, uint8_out: bool = False,
                 pool: tuple[int, int] | None = None):
        super().__init__()
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = list(kernel_size), list(stride)
        self.padding, self.dilation = list(padding), list(dilation)
        if pool is not None and not uint8_out:
            raise ValueError("only a conv with uint8 output pools its codes")
        self.pool = None if pool is None else tuple(pool)  # (k_h, k_w) max-pool of the output codes
        self._init_buffers((out_channels, in_channels // groups, *kernel_size), out_channels if per_channel else 1,
                           act_qmax, relu, uint8_out)

    @classmethod
    def like(cls, conv: nn.Conv2d, *, per_channel: bool, act_qmax: int, relu: bool, uint8_out: bool = False,
             pool: tuple[int, int] | None = None) -> "Int8Conv2d":
        padding = _same_padding(conv)
        if padding is None:
            raise ValueError("padding not supported by the int8 kernel")
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, padding, conv.dilation,
                   conv.groups, per_channel=per_channel, act_qmax=act_qmax, relu=relu, uint8_out=uint8_out, pool=pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:  # Python scalars, cached with the packed weights until the tensors change
            self._args, self._packed = (self._qparams(), self._post_op()), {}
        h_out, w_out = self.output_hw(*x.shape[2:])
        threads = layer_threads(self.count_macs([x], None) * (FEW_CHANNEL_COST if self.in_channels < 4 else 1))
        if self.pool is None:
            with one_intra_op_thread() if threads == 1 else contextlib.nullcontext():
                return self._conv(*self._kernel_input(x, 0, len(x), 0, h_out))
        kh, kw = self.pool
        ho, wo = h_out // kh, w_out // kw
        tiles = pool_tiles(len(x), ho, self.out_channels * h_out * w_out, threads)

        def pooled(b0: int, b1: int, p0: int, p1: int) -> torch.Tensor:  # examples b0..b1, pooled rows p0..p1
            return max_pool_codes(self._conv(*self._kernel_input(x, b0, b1, p0 * kh, p1 * kh)), kh, kw)

        with one_intra_op_thread() if threads == 1 else contextlib.nullcontext():
            if len(tiles) == 1:  # batch 1 or a few examples: the pooled codes as they come, no copy
                return pooled(*tiles[0])
            out = torch.empty((len(x), self.out_channels, ho, wo), dtype=torch.uint8, memory_format=torch.channels_last)

            def tile(t: tuple[int, int, int, int]) -> None:
                out[t[0]:t[1], :, t[2]:t[3]] = pooled(*t)

            run_tiles(tile, tiles, threads)
        return out

    def _conv(self, qx: torch.Tensor, row_pad: int) -> torch.Tensor:
        """The integer kernel on codes from `_kernel_input`, weights packed for their shape."""
        (x_scale, x_zp, w_scale, w_zp), (o_scale, o_zp, o_dtype, post_op, scalars) = self._args
        padding = [row_pad, self.padding[1]]
        shape = (*qx.shape[1:], row_pad)
        packed = self._packed.get(shape)
        if packed is None:
            # Packed for this input's channels, height and width: without them oneDNN picks a weight
            # layout its AMX kernel does not take and reorders the weights on every call (any batch
            # size shares one layout). A few shapes at most: the whole input and its row tiles.
            packed = self._packed[shape] = torch.ops.onednn.qconv_prepack(
                self.weight, w_scale, x_scale, x_zp, self.stride, padding, self.dilation, self.groups, [1, *qx.shape[1:]])
        return torch.ops.onednn.qconv2d_pointwise(
            qx, x_scale, x_zp, packed, w_scale, w_zp, self.bias, self.stride, padding, self.dilation,
            self.groups, o_scale, o_zp, o_dtype, post_op, scalars, "")

    def _kernel_input(self, x: torch.Tensor, b0: int, b1: int, r0: int, r1: int) -> tuple[torch.Tensor, int]:
        """(uint8 codes of examples b0..b1 that output rows r0..r1 read, channels-last; rows the kernel pads).

        Rows outside the input are padded with the zero point (real zeros, as the kernel pads), here
        where the kernel cannot: not the same number above and below (a tile of the rows).
        """
        x_scale, x_zp = self._args[0][:2]
        kh, sh, ph, dh = self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]
        h = x.shape[2]
        lo, hi = r0 * sh - ph, (r1 - 1) * sh + dh * (kh - 1) + 1 - ph  # input rows read, before padding
        qx = self._quantized_input(x[b0:b1, :, max(lo, 0) : min(hi, h)], x_scale, x_zp)
        if -lo == hi - h >= 0:
            return qx.contiguous(memory_format=torch.channels_last), -lo
        if lo < 0 or hi > h:
            qx = F.pad(qx, (0, 0, max(-lo, 0), max(hi - h, 0)), value=x_zp)
        return qx.contiguous(memory_format=torch.channels_last), 0

    def output_hw(self, h: int, w: int) -> tuple[int, int]:
        """Height and width of the convolution's output (before any pooling) for an h x w input."""
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                     for size, k, s, p, d in zip((h, w), self.kernel_size, self.stride, self.padding, self.dilation))

    def count_macs(self, inputs, output) -> int:
        n_out = len(inputs[0]) * self.out_channels * math.prod(self.output_hw(*inputs[0].shape[2:]))
        return n_out * (self.in_channels // self.groups) * math.prod(self.kernel_size)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, "
                f"padding={tuple(self.padding)}, per_channel={self.weight_scale.numel() > 1}, relu={self.relu}, "
                f"act_qmax={self.act_qmax}, uint8_out={self.uint8_out}" + (f", pool={self.pool}" if self.pool else ""))


class Int8Linear(_Int8Layer):
    """Linear layer with int8 weights on uint8 activations (oneDNN), float32 in and out."""

    def __init__(self, in_features, out_features, *, per_channel: bool, act_qmax: int, relu: bool, uint8_out: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self._init_buffers((out_features, in_features), out_features if per_channel else 1, act_qmax, relu, uint8_out)

    @classmethod
    def like(cls, linear: nn.Linear, *, per_channel: bool, act_qmax: int, relu: bool, uint8_out: bool = False) -> "Int8Linear":
        return cls(linear.in_features, linear.out_features, per_channel=per_channel, act_qmax=act_qmax, relu=relu,
                   uint8_out=uint8_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:  # packed weights and Python scalars, cached until the tensors change
            self._args = self._qparams(), self._post_op()
            self._packed = torch.ops.onednn.qlinear_prepack(self.weight, None)
        (x_scale, x_zp, w_scale, w_zp), (o_scale, o_zp, o_dtype, post_op, scalars) = self._args
        lead = x.shape[:-1]
        with one_intra_op_thread() if layer_threads(x.numel() * self.out_features) == 1 else contextlib.nullcontext():
            qx = self._quantized_input(x.reshape(-1, self.in_features), x_scale, x_zp).contiguous()
            out = torch.ops.onednn.qlinear_pointwise(
                qx, x_scale, x_zp, self._packed, w_scale, w_zp, self.bias, o_scale, o_zp, o_dtype, post_op, scalars, "")
        return out.reshape(*lead, self.out_features)

    def count_macs(self, inputs, output) -> int:
        return output.numel() * self.in_features

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"per_channel={self.weight_scale.numel() > 1}, relu={self.relu}, act_qmax={self.act_qmax}, "
                f"uint8_out={self.uint8_out}")


def max_pool_codes(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """Max-pool of uint8 codes (B, C, H, W) over non-overlapping kh x kw windows, floored like MaxPool2d.

    NHWC (a view for channels-last codes, the kernels' output): the window's rows are reduced over an
    axis with W x C contiguous bytes inside, then its columns, with C contiguous bytes inside, as a
    chain of elementwise maxima (2 ms where one amax over that axis took 48; the whole pool 15 against
    64 ms, batch 64, 32 x 40 x 500 codes, 1 thread). Wide windows (4 x 100) keep the amax: 99 small
    ops cost more. The result is channels-last contiguous, as the int8 convs take their input.
    """
    b, c, h, w = x.shape
    ho, wo = h // kh, w // kw
    y = x.permute(0, 2, 3, 1)[:, : ho * kh].reshape(b, ho, kh, w * c).amax(dim=2)
    y = y.view(b, ho, w, c)[:, :, : wo * kw].reshape(b, ho, wo, kw, c)
    if kw > 8:
        return y.amax(dim=3).permute(0, 3, 1, 2)
    cols = y.unbind(3)
    out = cols[0] if kw == 1 else torch.maximum(cols[0], cols[1])
    for col in cols[2:]:
        torch.maximum(out, col, out=out)
    return out.permute(0, 3, 1, 2)


class CodeMaxPool2d(nn.MaxPool2d):
    """Max-pooling that also takes uint8 codes (exact: the codes are monotonic in the values).

    torch's uint8 max_pool2d fails on channels-last inputs and is slow here, so non-overlapping
    windows (kernel = stride, no padding or dilation) are pooled by `max_pool_codes`. `fused`: the
    int8 conv in front pools its codes itself (`Int8Conv2d.pool`), so codes pass through as they
    are; float inputs (that conv exported in QDQ form, `deploy.portable`) are still pooled here.
    """

    def __init__(self, *args, fused: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused = fused

    @staticmethod
    def handles(pool: nn.Module) -> bool:
        if type(pool) is not nn.MaxPool2d or pool.return_indices or pool.ceil_mode:
            return False
        stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        return _pair(pool.kernel_size) == stride and _pair(pool.padding) == (0, 0) and _pair(pool.dilation) == (1, 1)

    @staticmethod
    def window(pool: nn.MaxPool2d) -> tuple[int, int]:
        """(k_h, k_w) of a max-pool that `handles` accepts."""
        return _pair(pool.kernel_size)

    @classmethod
    def like(cls, pool: nn.MaxPool2d, fused: bool = False) -> "CodeMaxPool2d":
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.return_indices, pool.ceil_mode,
                   fused=fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return super().forward(x)
        if self.fused:
            return x
        return max_pool_codes(x, *_pair(self.kernel_size))

    def extra_repr(self) -> str:
        return super().extra_repr() + (", fused into the conv in front" if self.fused else "")


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def reference_forward(layer: _Int8Layer, x: torch.Tensor) -> torch.Tensor:
    """The same arithmetic in float64 (dequantized codes): what the integer kernel must compute."""
    x_scale, x_zp, w_scale, _ = layer._qparams()
    qx = layer._quantized_input(x, x_scale, x_zp).double()
    xd = (qx - x_zp) * x_scale
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    wd = layer.weight.double() * w_scale.double().reshape(shape)
    if isinstance(layer, Int8Conv2d):
        out = F.conv2d(xd, wd, layer.bias.double(), layer.stride, layer.padding, layer.dilation, layer.groups)
    else:
        out = F.linear(xd, wd, layer.bias.double())
    out = torch.relu(out) if layer.relu else out
    if getattr(layer, "pool", None):  # before quantizing: the same codes, quantization is monotonic
        out = F.max_pool2d(out, layer.pool)
    if layer.uint8_out:
        return quantize_input(out, float(layer.output_scale), int(layer.output_zero_point), layer.act_qmax)
    return out
