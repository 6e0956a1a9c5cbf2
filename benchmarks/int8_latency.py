"""int8 vs float32 (and float16) CPU latency of a model, measured in one run (ratios are what to compare).

    python benchmarks/int8_latency.py                      # the 2020 baseline, batch 1 and 64, 2 threads
    python benchmarks/int8_latency.py --compile            # also torch.compile'd float32 (slow to build)
    python benchmarks/int8_latency.py --model dcase2020_baseline --batches 1 64 --threads 2 --repeats 20

The float32 reference is made fair: batch norm folded into the convolutions, channels-last memory
format, inference mode (and, with --compile, inductor-compiled once per batch size with weight
freezing, which prepacks the weights and fuses conv + ReLU). The int8
model is the recipe step `{method: int8}` (oneDNN integer kernels, `compress/int8_kernels.py`)
calibrated on random inputs: the weights are random too, so latency, not accuracy, is measured.
Timings alternate between the models round by round so that a busy machine slows both alike; the
median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch._dynamo
import torch._inductor.config
import torch.nn as nn

from dcase_effdl.compress import CompressContext, apply_steps, parse_steps
from dcase_effdl.compress.int8 import fold_batch_norm, plan_layers
from dcase_effdl.data.bundle import DataBundle
from dcase_effdl.machine import describe
from dcase_effdl.models import ModelSpec, model_params


def float32_fair(model: nn.Module) -> nn.Module:
    """Batch norm folded into the preceding conv (as int8 does), channels-last, eval mode."""
    model = copy.deepcopy(model).eval()
    for entry in plan_layers(model, [], "benchmark"):
        if entry["bn"]:
            fold_batch_norm(model.get_submodule(entry["name"]), model.get_submodule(entry["bn"]))
            parent, _, child = entry["bn"].rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
    return model.to(memory_format=torch.channels_last)


def time_rounds(fns: dict, x: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per call of each function, measured in alternating rounds."""
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn(x)
        times = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="dcase2020_baseline")
    parser.add_argument("--input", type=int, nargs=3, default=[1, 40, 500], metavar=("C", "F", "T"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd float32")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, f, t = args.input
    spec = ModelSpec(args.model, model_params(args.model), 3, c, f, t)
    model = spec.build().eval()
    with torch.no_grad():  # trained-like batch norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(128, c, f, t)
    y = torch.zeros(128, dtype=torch.long)
    calib = DataBundle(["a", "b", "c"], x, y, x[:0], y[:0], x[:0], y[:0], [])
    int8 = apply_steps(model, parse_steps([{"method": "int8"}], "benchmark"),
                       CompressContext(bundle=calib, model_spec=spec, size_policy="dcase2020")).module
    fair = float32_fair(model)
    half = copy.deepcopy(model).half()  # what computing in float16 would cost (the float16 step only stores it)

    print(describe())
    print(f"model {args.model}, input {tuple(args.input)}")
    for batch in args.batches:
        x = torch.randn(batch, c, f, t)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        fns = {
            "float32 (eager, as trained)": model,
            "float32 (BN folded, channels-last)": lambda inp: fair(inp.contiguous(memory_format=torch.channels_last)),
            "int8 (oneDNN kernels, eager)": int8,
            "float16 (eager, computed in float16)": lambda inp: half(inp.half()),
        }
        if args.compile:
            # freezing: weights become constants, so inductor prepacks them and fuses conv + ReLU (oneDNN)
            torch._inductor.config.freezing = True
            torch._dynamo.reset()
            compiled = torch.compile(fair, dynamic=False)
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(x_cl)
            print(f"  (batch {batch}: float32 compile took {time.perf_counter() - start:.1f} s)")
            fns["float32 (BN folded, channels-last, compiled)"] = compiled
        with torch.inference_mode():
            agree = (model(x).argmax(1) == int8(x).argmax(1)).float().mean().item()
        ms = time_rounds(fns, x, args.repeats, args.warmup)
        print(f"batch {batch} (median of {args.repeats} alternating rounds; int8/float32 argmax agreement {100 * agree:.0f} %):")
        int8_ms = ms["int8 (oneDNN kernels, eager)"]
        for name, value in ms.items():
            ratio = "" if name.startswith("int8") else f"   int8 speed-up x{value / int8_ms:.2f}"
            print(f"  {name:<46} {value:9.2f} ms/batch{ratio}")


if __name__ == "__main__":
    main()
