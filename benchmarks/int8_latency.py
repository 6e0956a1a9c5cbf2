"""int8 vs float32 CPU latency of one model, in PyTorch and in ONNX Runtime, measured in one run (ratios are what to compare).

    python benchmarks/int8_latency.py                      # recipes/int8.yaml's model, batch 1 and 64, 2 then 1 thread
    python benchmarks/int8_latency.py --compile            # also torch.compile'd float32 (slow to build)
    python benchmarks/int8_latency.py --recipe recipes/hu_fast.yaml --batches 1 64 --threads 2 1 --repeats 20
    python benchmarks/int8_latency.py --model dcase2020_baseline --input 1 40 500   # a model family's defaults
    python benchmarks/int8_latency.py --layers             # also each int8 layer's time, per thread count
    python benchmarks/int8_latency.py --warm               # also each row called back to back (warm caches)

Rows, all on the same model and inputs: float32 eager as trained; float32 made fair (batch norm
folded into the convolutions, channels-last, inference mode; with --compile also inductor-compiled
once per batch size with weight freezing, which prepacks the weights and fuses conv + ReLU); ONNX
Runtime float32 (the float model exported by `deploy.onnx_export`; onnxruntime folds batch norm and
fuses conv + ReLU itself); ONNX Runtime int8 (the int8 variant in QDQ form, `deploy.portable`,
which onnxruntime runs as QLinearConv / QLinearMatMul); and the project's int8 (the recipe's own
`{method: int8}` step on oneDNN integer kernels, `compress/int8_kernels.py`), calibrated on random
inputs: the weights are random too, so latency, not accuracy, is measured. onnxruntime's threads
are told not to spin and torch's OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE), since a
spinning thread pool slows every other row ~5x on a shared machine. Timings alternate between the
rows round by round so that a busy machine slows all alike; the median of the rounds is reported.
That is also how a deployed model runs (one clip now and then, other work in between), so the
verdict uses it. `--warm` adds each row called back to back, with its caches and branch predictors
warm from its own previous call: at batch 1 the project's int8, ~40 torch ops a pass, gains much more
from that than ONNX Runtime's one call does, and the gap between the two shows the cost of a cold call.
"""

from __future__ import annotations

import os

# Read once, when torch loads its OpenMP runtime: set it before importing torch (spinning OpenMP
# threads made 2 threads run at half the speed of 1 on a shared 2-core machine, issue 16).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import copy  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402
import torch._inductor.config  # noqa: E402
import torch.nn as nn  # noqa: E402

from dcase_effdl.compress import CompressContext, apply_steps  # noqa: E402
from dcase_effdl.compress.int8 import Int8Config, fold_batch_norm, plan_layers  # noqa: E402
from dcase_effdl.data.bundle import DataBundle  # noqa: E402
from dcase_effdl.errors import UserError  # noqa: E402
from dcase_effdl.machine import cpu, describe  # noqa: E402
from dcase_effdl.models import ModelSpec, model_params  # noqa: E402

# Issue 16's targets: the project's int8 over onnxruntime float32 on the same model and CPU.
TARGETS = {1: 1.3, 64: 1.5}
# What oneDNN's int8 kernels run fastest on; without them (AVX2) u8 x s8 products are summed in pairs in int16.
INT8_FLAGS = ("avx512_vnni", "amx_int8")
INT8, ORT32, ORT8 = "int8 (project, oneDNN kernels)", "ONNX Runtime float32", "ONNX Runtime int8 (QDQ)"


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
    """Median milliseconds per call of each function, measured in alternating rounds (order rotated)."""
    with torch.inference_mode():
        for fn in fns.values():
            for _ in range(warmup):
                fn(x)
        times = {name: [] for name in fns}
        names = list(fns)
        for r in range(repeats):
            # Each round starts at the next row: the row right after ONNX Runtime's (whose threads go to
            # sleep) measured 0.4 ms slower at batch 1 when the order was fixed.
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.perf_counter()
                fns[name](x)
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def time_warm(fns: dict, x: torch.Tensor, repeats: int, warmup: int) -> dict[str, float]:
    """Median milliseconds per call of each function called `repeats` times in a row (after `warmup` calls)."""
    from dcase_effdl.deploy.measure import timings_ms

    with torch.inference_mode():
        return {name: timings_ms(fn, x, repeats, warmup)["median_ms"] for name, fn in fns.items()}


def layer_times(module: nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median milliseconds of each int8 layer's call (hooks around it) over `repeats` forward passes."""
    from dcase_effdl.compress.int8_kernels import _Int8Layer

    names = {m: name for name, m in module.named_modules() if isinstance(m, _Int8Layer)}
    starts, times = {}, {name: [] for name in names.values()}
    hooks = [m.register_forward_pre_hook(lambda m, a: starts.__setitem__(m, time.perf_counter())) for m in names]
    hooks += [m.register_forward_hook(lambda m, a, o: times[names[m]].append(time.perf_counter() - starts[m]))
              for m in names]
    try:
        with torch.inference_mode():
            for _ in range(repeats + 1):  # the first pass warms up
                module(x)
    finally:
        for h in hooks:
            h.remove()
    return {name: 1000 * statistics.median(t[1:]) for name, t in times.items()}


def model_and_step(args) -> tuple[ModelSpec, Int8Config, str]:
    """(model spec, int8 step, what was measured in words) from --recipe/--variant or --model/--input."""
    if args.model:
        c, f, t = args.input
        return ModelSpec(args.model, model_params(args.model), 3, c, f, t), Int8Config(), f"model {args.model} (defaults)"
    from dcase_effdl.config import load_recipe
    from dcase_effdl.pipeline import resolve

    recipe, feat = load_recipe(args.recipe)
    plan = resolve(recipe, feat, args.recipe)
    for variant, steps in zip(recipe.variants, plan.steps):
        int8 = [s for s in steps if isinstance(s, Int8Config)]
        if int8 and (args.variant is None or variant.name == args.variant):
            return plan.spec, int8[0], f"{args.recipe}: variant {variant.name}, model {plan.spec.family}"
    raise UserError(f"{args.recipe}: no variant {'named ' + repr(args.variant) + ' ' if args.variant else ''}with an int8 step")


def ort_sessions(model: nn.Module, int8: nn.Module, shape: tuple[int, ...], threads: list[int]) -> dict:
    """{threads: (float32 session, int8 QDQ session)}, or {} with a note when onnxruntime is missing."""
    from dcase_effdl.deploy import onnx_export
    from dcase_effdl.deploy.portable import portable_module

    try:
        onnx_export.require_runtime()
    except UserError as exc:
        print(f"note: no ONNX Runtime rows ({exc})")
        return {}
    import onnxruntime as ort

    float32 = onnx_export.to_onnx(model, shape, float16_storage=False)
    qdq = onnx_export.to_onnx(portable_module(int8)[0], shape, float16_storage=False)

    def session(onnx_model: bytes, n: int):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see the module docstring
        opts.log_severity_level = 3
        return ort.InferenceSession(onnx_model, sess_options=opts, providers=["CPUExecutionProvider"])

    print(f"onnxruntime {ort.__version__} (CPU execution provider, intra-op threads as torch's, not spinning)")
    return {n: (session(float32, n), session(qdq, n)) for n in threads}


def ort_fn(sess):
    name_in, name_out = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    return lambda x: sess.run([name_out], {name_in: x.numpy()})[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="recipes/int8.yaml", help="model and int8 step from this recipe")
    parser.add_argument("--variant", help="the recipe's variant whose int8 step is used (default: the first one)")
    parser.add_argument("--model", help="instead of a recipe: this model family with its default knobs")
    parser.add_argument("--input", type=int, nargs=3, default=[1, 40, 500], metavar=("C", "F", "T"), help="with --model")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd float32")
    parser.add_argument("--float16", action="store_true", help="also time computing in float16 (eager)")
    parser.add_argument("--layers", action="store_true", help="also time each int8 layer (median of --repeats passes)")
    parser.add_argument("--warm", action="store_true", help="also time each row called back to back (warm caches)")
    args = parser.parse_args()

    torch.manual_seed(0)
    spec, step, what = model_and_step(args)
    shape = spec.input_shape
    model = spec.build().eval()
    with torch.no_grad():  # trained-like batch norm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(128, *shape)
    y = torch.zeros(128, dtype=torch.long)
    calib = DataBundle(["a", "b", "c"], x, y, x[:0], y[:0], x[:0], y[:0], [])
    int8 = apply_steps(model, [step], CompressContext(bundle=calib, model_spec=spec, size_policy="dcase2020")).module
    fair = float32_fair(model)
    half = copy.deepcopy(model).half() if args.float16 else None

    print(describe())
    print(f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}; {what}, input {tuple(shape)}")
    sessions = ort_sessions(model, int8, shape, args.threads)
    ratios = {}
    for batch in args.batches:
        x = torch.randn(batch, *shape)
        fns = {
            "float32 (eager, as trained)": model,
            "float32 (BN folded, channels-last)": lambda inp: fair(inp.contiguous(memory_format=torch.channels_last)),
        }
        if args.compile:
            # freezing: weights become constants, so inductor prepacks them and fuses conv + ReLU (oneDNN)
            torch._inductor.config.freezing = True
            torch._dynamo.reset()
            compiled = torch.compile(fair, dynamic=False)
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(x.contiguous(memory_format=torch.channels_last))
            print(f"  (batch {batch}: float32 compile took {time.perf_counter() - start:.1f} s)")
            fns["float32 (BN folded, channels-last, compiled)"] = lambda inp: compiled(inp.contiguous(memory_format=torch.channels_last))
        if half is not None:
            fns["float16 (eager, computed in float16)"] = lambda inp: half(inp.half())
        fns[INT8] = int8
        with torch.inference_mode():
            ref, got = model(x), int8(x)
        agree = f"int8/float32 argmax agreement {100 * (ref.argmax(1) == got.argmax(1)).float().mean().item():.0f} %"
        for threads in args.threads:
            torch.set_num_threads(threads)
            row_fns = dict(fns)
            if threads in sessions:
                s32, s8 = sessions[threads]
                row_fns[ORT32], row_fns[ORT8] = ort_fn(s32), ort_fn(s8)
                diff = np.abs(row_fns[ORT8](x) - got.numpy()).max() / max(float(got.abs().max()), 1e-12)
                agree_t = f"{agree}; ORT int8 logits within {diff:.1e} x max |logit| of the project's"
            else:
                agree_t = agree
            ms = time_rounds(row_fns, x, args.repeats, args.warmup)
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            print(f"batch {batch}, {threads} thread{'s' if threads > 1 else ''} (median of {args.repeats} alternating "
                  f"rounds, load average {load:.2f} on {os.cpu_count()} CPUs; {agree_t}):")
            for name, value in ms.items():
                ratio = "" if name == INT8 else f"   project int8 speed-up x{value / ms[INT8]:.2f}"
                print(f"  {name:<46} {value:9.2f} ms/batch{ratio}")
            if args.warm:
                warm = time_warm({k: row_fns[k] for k in (INT8, ORT32) if k in row_fns}, x, args.repeats, args.warmup)
                print("  back to back (warm): " + ", ".join(f"{k} {v:.2f} ms" for k, v in warm.items())
                      + (f"; project int8 speed-up x{warm[ORT32] / warm[INT8]:.2f}" if ORT32 in warm else ""))
            if args.layers:
                per_layer = layer_times(int8, x, args.repeats)
                print("  int8 layers (ms/batch): " + ", ".join(f"{name} {ms:.2f}" for name, ms in per_layer.items()))
            if ORT32 in ms:
                ratios[batch, threads] = ms[ORT32] / ms[INT8]

    flags = cpu()[1].split()
    missing = [f for f in INT8_FLAGS if f not in flags]
    print("project int8 over ONNX Runtime float32 (issue 16 targets: x1.5 at batch 64, x1.3 at batch 1):")
    for (batch, threads), r in ratios.items():
        target = TARGETS.get(batch)
        verdict = "" if target is None else f" (target x{target}: {'met' if r >= target else 'NOT met'})"
        print(f"  batch {batch}, {threads} thread{'s' if threads > 1 else ''}: x{r:.2f}{verdict}")
    if missing:
        print(f"this CPU lacks {' and '.join(missing)}: oneDNN's int8 kernels run without VNNI dot products"
              + (" (u8 x s8 pairs summed in int16)" if "avx512_vnni" in missing and "avx_vnni" not in flags else "")
              + ", so the targets, set on a VNNI + AMX CPU, may be out of reach here")


if __name__ == "__main__":
    main()
