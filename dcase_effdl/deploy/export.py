"""`dcase-effdl export RUNDIR [--variant NAME] --format onnx|tflite`: each finished variant exported and checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from dcase_effdl.errors import UserError
from dcase_effdl.rundir import RunDir, VariantDir, file_sha256

FORMATS = ("onnx", "tflite")


def input_shape(variant) -> tuple[int, int, int]:
    """(channels, mel bands, frames) of one example, from the variant's model spec."""
    spec = variant.model_spec
    return spec.in_channels, spec.n_mels, spec.n_frames


def storage(variant, fmt: str = "onnx") -> str:
    """What the exported file stores, in words (the deploy table's 'storage' column)."""
    formats = variant.precisions
    parts = []
    if "int8" in formats:
        parts.append("int8 QDQ (int8 weight codes, float32 scales, uint8 activations)" if fmt == "onnx" else
                     _tflite_int8(variant))
    if "float16" in formats:
        parts.append("float16 weights, computed in float32")
    if "binary" in formats:
        parts.append(f"1-bit weights as dense float16 +-1 (no 1-bit type in {'ONNX' if fmt == 'onnx' else 'TFLite'})")
    if "float32" in formats:
        parts.append("float32 weights" if len(formats) == 1 else "other weights float32")
    if any(s.method == "prune" for s in variant.steps):
        parts.append("pruned zeros stored densely")
    return "; ".join(parts)


def _tflite_int8(variant) -> str:
    from dcase_effdl.compress import int8_kernels as K

    layers = [m for m in variant.module.modules() if isinstance(m, K._Int8Layer)]
    n_float = sum(not m.uint8_out for m in layers)
    return (f"full-integer int8 (int8 weight codes and activations, int32 biases); {n_float} of {len(layers)} int8 "
            "layers (float32 output) compute in float32 on their int8 codes")


def _variants(run: RunDir, name: str | None) -> list[VariantDir]:
    found = run.variants()
    if name is None:
        return found
    chosen = [v for v in found if v.name == name]
    if not chosen:
        raise UserError(f"{run.path}: no finished variant '{name}' (finished: {', '.join(v.name for v in found)})")
    return chosen


def export_frontend(run_dir: str | Path, n_clips: int = 8, log: Callable[[str], None] = print) -> dict:
    """<run>/export/frontend.onnx (audio -> the run's features), compared with the training front end on
    the first `n_clips` test clips; more than MAX_DB_DIFF dB apart is a UserError (the file is kept)."""
    from dcase_effdl.deploy import onnx_export
    from dcase_effdl.deploy.agreement import max_db_diff, run_test_audio
    from dcase_effdl.deploy.frontend import MAX_DB_DIFF, LogMelFrontEnd
    from dcase_effdl.features.logmel import logmel_batch, n_frames

    onnx_export.require_runtime()
    run = RunDir(run_dir)
    feat = run.features()
    audio, names = run_test_audio(run, n_clips)
    model = onnx_export.to_onnx(LogMelFrontEnd(feat, n_frames(feat)), audio.shape[1:], float16_storage=False,
                                names=("audio", "features"))
    sess = onnx_export.session(model)
    out = np.concatenate([sess.run(["features"], {"audio": audio[i : i + 1]})[0] for i in range(len(audio))])
    diff = max_db_diff(logmel_batch(audio, feat), out, feat)
    info = {"file": "frontend.onnx", "size_bytes": len(model), "input": "audio (batch, channels, samples) float32 at "
            f"{feat.sample_rate} Hz", "output_shape": list(out.shape[1:]), "n_clips": len(names), "max_db_diff": diff}
    path = run.write_frontend(model, info)
    log(f"[export] front end: {path} ({len(model):,} B); features within {diff:.2e} dB of the training front end "
        f"on {len(names)} test clips")
    if diff > MAX_DB_DIFF:
        raise UserError(f"{path}: exported front end is {diff:.2e} dB from the training features (limit {MAX_DB_DIFF} dB)")
    return info


def _onnx(v, x) -> tuple[bytes, np.ndarray, dict]:
    """(model.onnx bytes, its logits on x, runtime fields of export.json)."""
    import onnxruntime

    from dcase_effdl.deploy import onnx_export
    from dcase_effdl.deploy.portable import portable_module

    module, n_int8 = portable_module(v.module)
    model = onnx_export.to_onnx(module, input_shape(v), float16_storage=bool(v.precisions & {"float16", "binary"}))
    logits = onnx_export.run_logits(onnx_export.session(model), x)
    return model, logits, {"int8_layers": n_int8, "opset": onnx_export.OPSET, "onnxruntime": onnxruntime.__version__}


def _tflite(v, x, name: str) -> tuple[bytes, np.ndarray, dict]:
    """(model.tflite bytes, its logits on x in the LiteRT interpreter, runtime fields of export.json)."""
    from dcase_effdl.compress import int8_kernels as K
    from dcase_effdl.deploy import litert, tflite_export

    model = tflite_export.to_tflite(v.module, input_shape(v), name)
    logits = litert.run_logits(litert.interpreter(model), x)
    n_int8 = sum(isinstance(m, K._Int8Layer) for m in v.module.modules())
    return model, logits, {"int8_layers": n_int8, "tensorflow": litert.runtime_version()}


def require_runtime(fmt: str) -> None:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: not a supported format (supported: {', '.join(FORMATS)})")
    if fmt == "onnx":
        from dcase_effdl.deploy.onnx_export import require_runtime as need
    else:
        from dcase_effdl.deploy.litert import require_runtime as need
    need()


def export_run(run_dir: str | Path, variant: str | None = None, fmt: str = "onnx",
               log: Callable[[str], None] = print) -> dict[str, dict]:
    """Export each finished variant (or `variant`) to `fmt`, compare it with PyTorch on the test fold.

    Writes `<variant>/export/model.<fmt>` and its record in `export.json` (through `rundir`); returns
    {variant: record}. An export whose argmax agreement is under 99 % is kept for inspection and
    reported as a UserError once all variants are done.
    """
    from dcase_effdl.compress import load_variant
    from dcase_effdl.deploy.agreement import MIN_AGREEMENT, agreement, run_test_features, softmax
    from dcase_effdl.training.loop import predict

    require_runtime(fmt)
    run = RunDir(run_dir)
    vdirs = _variants(run, variant)  # before the features: a wrong name costs nothing
    x = run_test_features(run)
    results, failed = {}, []
    for vdir in vdirs:
        v = load_variant(vdir.model_path)
        model, logits, runtime = _onnx(v, x) if fmt == "onnx" else _tflite(v, x, vdir.name)
        agree = agreement(predict(v.module, x), softmax(logits))
        info = {"file": f"model.{fmt}", "size_bytes": len(model), "storage": storage(v, fmt), **runtime,
                "model_sha256": file_sha256(vdir.model_path), **agree}
        path = vdir.write_export(fmt, model, info)
        log(f"[export] {vdir.name}: {path} ({len(model):,} B, {info['storage']}); agrees with PyTorch on "
            f"{100 * agree['argmax_agreement']:.1f} % of {agree['n_clips']} test clips, max probability "
            f"difference {agree['max_prob_diff']:.2e}")
        if agree["argmax_agreement"] < MIN_AGREEMENT:
            failed.append(vdir.name)
        results[vdir.name] = info
    if failed:
        raise UserError(f"{run.path}: exported {', '.join(failed)} agree(s) with PyTorch on fewer than "
                        f"{100 * MIN_AGREEMENT:.0f} % of the test clips (see export/export.json)")
    return results
