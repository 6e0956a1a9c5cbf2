"""Each variant of a run in each runtime: file size, latency at batch 1 and 64, peak RSS, MACs -> <run>/deploy.json.

    dcase-effdl export runs/int8                       # first: <variant>/export/model.onnx
    dcase-effdl export runs/int8 --format tflite       # and/or model.tflite (rows for the formats exported)
    python benchmarks/deploy.py runs/int8              # 100 batch-1 calls per case, 1 thread
    python benchmarks/deploy.py runs/int8 --calls 200 --threads 1 --variant int8

Runtimes: PyTorch eager (the variant file as `load_variant` rebuilds it: int8 layers on oneDNN
integer kernels), onnxruntime (the exported .onnx, CPU execution provider) and LiteRT (the exported
.tflite in TensorFlow's interpreter, XNNPACK delegate: full-integer int8 kernels for int8 variants).
One thread, the way a small device runs it. Each case runs in its own process (`deploy.measure`), so its peak RSS is
its own. MACs are per example, counted on the PyTorch module (`compress.macs`); the exported graphs
compute the same layers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from dcase_effdl.compress import load_variant
from dcase_effdl.compress.macs import count_macs
from dcase_effdl.deploy.export import input_shape
from dcase_effdl.errors import UserError
from dcase_effdl.machine import describe, machine
from dcase_effdl.rundir import RunDir

RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert"}  # exported format -> the runtime that runs it


def exported(vdir) -> list[str]:
    """The formats this variant was exported to (each record checked); a UserError when none."""
    formats = [fmt for fmt in RUNTIMES if vdir.export_path(fmt).is_file()]
    for fmt in formats or ["onnx"]:
        vdir.export_info(fmt)
    return formats


def run_case(runtime: str, path, calls: int, threads: int) -> dict:
    proc = subprocess.run([sys.executable, "-m", "dcase_effdl.deploy.measure", runtime, str(path), "--calls", str(calls),
                           "--threads", str(threads)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{path}: measuring {runtime} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = (f"{'variant':<12} {'runtime':<12} {'file KB':>9} {'MACs (M)':>9} {'b1 med ms':>10} {'b1 p90 ms':>10} "
            f"{'b64 med ms':>11} {'peak RSS MB':>12} {'+model MB':>10}  storage")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['variant']:<12} {r['runtime']:<12} {r['file_bytes'] / 1024:>9.1f} {r['macs'] / 1e6:>9.1f} "
                     f"{r['batch1']['median_ms']:>10.2f} {r['batch1']['p90_ms']:>10.2f} {r['batch64']['median_ms']:>11.1f} "
                     f"{r['peak_rss_mb']:>12.0f} {r['peak_rss_mb'] - r['base_rss_mb']:>10.0f}  {r['storage']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--variant", action="append", help="only these variants (default: every exported one)")
    parser.add_argument("--calls", type=int, default=100, help="timed batch-1 calls per case (batch 64: a tenth)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.calls < 100:
        print(f"note: {args.calls} calls per case (the README's table uses at least 100)")
    run = RunDir(args.run_dir)
    vdirs = [v for v in run.variants() if not args.variant or v.name in args.variant]
    formats = {vdir.name: exported(vdir) for vdir in vdirs}  # every export checked before the first measurement
    print(describe())
    rows = []
    for vdir in vdirs:
        variant = load_variant(vdir.model_path)
        macs = count_macs(variant.module, input_shape(variant))["macs"]
        files = {"pytorch": vdir.model_path, **{RUNTIMES[f]: vdir.export_path(f) for f in formats[vdir.name]}}
        storage = {"pytorch": "variant file: " + ", ".join(sorted(variant.precisions)) + " weights",
                   **{RUNTIMES[f]: vdir.export_info(f)["storage"] for f in formats[vdir.name]}}
        for runtime in files:
            result = run_case(runtime, files[runtime], args.calls, args.threads)
            rows.append({"variant": vdir.name, "runtime": runtime, "file": str(files[runtime].relative_to(run.path)),
                         "file_bytes": files[runtime].stat().st_size, "macs": macs, "storage": storage[runtime], **result})
            print(f"  {vdir.name} / {runtime}: batch 1 median {result['batch1']['median_ms']:.2f} ms", flush=True)
    print(table(rows))
    run.write_deploy({"machine": machine(), "command": " ".join(["python", "benchmarks/deploy.py", *sys.argv[1:]]),
                      "rows": rows})
    print(f"wrote {run.deploy_path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
