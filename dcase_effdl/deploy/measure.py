"""Latency and peak memory of one model in one runtime, measured in a process of its own.

    python -m dcase_effdl.deploy.measure RUNTIME MODEL_FILE --calls 100 --threads 1   # prints one JSON line

RUNTIME is `pytorch` (the variant file, eager, as `load_variant` rebuilds it), `onnxruntime`
(the exported .onnx) or `litert` (the exported .tflite in TensorFlow's LiteRT interpreter, XNNPACK).
A fresh process per case makes the peak RSS that case's own (ru_maxrss never goes down); `base_rss_mb` is the process after importing the runtime, before loading the model, so
`peak_rss_mb - base_rss_mb` is what the model and its execution add. The onnxruntime and litert
cases never import torch. Inputs are seeded standard-normal features (what normalisation produces).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import numpy as np


def rss_mb() -> float:
    """Peak resident set size of this process so far, MB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timings_ms(fn, x, calls: int, warmup: int = 5) -> dict:
    """{median_ms, p90_ms} of `calls` calls of fn(x) after `warmup` calls."""
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn(x)
        times.append(1000 * (time.perf_counter() - start))
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))]}


def _pytorch(path: str, threads: int):
    import torch

    torch.set_num_threads(threads)
    base = rss_mb()
    from dcase_effdl.compress import load_variant

    variant = load_variant(path)
    spec = variant.model_spec
    module = variant.module

    def run(x):
        with torch.inference_mode():
            return module(torch.from_numpy(x))

    return run, (spec.in_channels, spec.n_mels, spec.n_frames), base


def _onnxruntime(path: str, threads: int):
    import onnxruntime  # noqa: F401  (imported before the base reading: the runtime's own memory)

    base = rss_mb()
    from dcase_effdl.deploy.onnx_export import INPUT, OUTPUT, session

    sess = session(path, threads)
    shape = tuple(int(d) for d in sess.get_inputs()[0].shape[1:])
    return (lambda x: sess.run([OUTPUT], {INPUT: x})), shape, base


def _litert(path: str, threads: int):
    from dcase_effdl.deploy import litert

    litert.runtime_version()  # imports tensorflow before the base reading: the runtime's own memory
    base = rss_mb()
    interp = litert.interpreter(path, threads)
    shape = tuple(int(d) for d in interp.get_input_details()[0]["shape"][1:])
    return litert.make_runner(interp), shape, base


RUNTIMES = {"pytorch": _pytorch, "onnxruntime": _onnxruntime, "litert": _litert}


def measure(runtime: str, path: str, calls: int, threads: int, batch: int = 64) -> dict:
    """{base_rss_mb, peak_rss_mb, batch1: {median_ms, p90_ms}, batch<batch>: {...}, calls} for one case."""
    fn, shape, base = RUNTIMES[runtime](path, threads)
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, *shape), dtype=np.float32)
    many = rng.standard_normal((batch, *shape), dtype=np.float32)
    return {"base_rss_mb": base, "batch1": timings_ms(fn, one, calls),
            f"batch{batch}": timings_ms(fn, many, max(10, calls // 10), warmup=2), "peak_rss_mb": rss_mb(),
            "calls": calls, "threads": threads}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runtime", choices=sorted(RUNTIMES))
    parser.add_argument("model_file")
    parser.add_argument("--calls", type=int, default=100, help="batch-1 calls timed (batch 64: a tenth, at least 10)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.runtime, args.model_file, args.calls, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
