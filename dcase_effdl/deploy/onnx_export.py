"""ONNX: a variant traced by torch.onnx (dynamo exporter) into one .onnx file, and run by onnxruntime.

Storage follows the variant: float32 weights as float32 initializers; weights that are exactly
float16 values (the float16 step, 1-bit +-1 values) as float16 initializers with a Cast to float32
in front (computed in float32 like the PyTorch variant: lossless, half the bytes); int8 layers as
QDQ with int8 code initializers (`portable`). Zeros left by pruning are stored densely: ONNX has
no sparse initializer onnxruntime runs.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch
import torch.nn as nn

from dcase_effdl.errors import UserError

OPSET = 18  # onnxscript's torch_lib targets opset 18; onnxruntime >= 1.14 runs it
INPUT, OUTPUT = "features", "logits"


def require_runtime() -> None:
    """One line naming the missing package when the `deploy` extra is not installed."""
    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"--format onnx needs the deploy extra ({', '.join(missing)} not installed): "
                        "pip install -e \".[deploy]\"")


def _float16_exact(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).all() and np.array_equal(values.astype(np.float16).astype(np.float32), values))


def store_float16(model) -> int:
    """Float32 initializers whose values are all exactly float16 become float16 + Cast; returns bytes saved."""
    import onnx
    from onnx import numpy_helper

    graph, casts, saved = model.graph, [], 0
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        values = numpy_helper.to_array(init)
        if values.size < 2 or not _float16_exact(values):  # scalars: a Cast costs more than it saves
            continue
        half = numpy_helper.from_array(values.astype(np.float16), f"{init.name}.float16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(onnx.helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT,
                                           name=f"{init.name}.to_float32"))
        saved += values.size * 2
    for i, node in enumerate(casts):  # before their consumers: ONNX graphs are topologically sorted
        graph.node.insert(i, node)
    return saved


def strip_metadata(model) -> None:
    """Drop the exporter's per-node notes (source paths, stack traces, fx nodes: 15 of 40 KB on the
    digits CNN, and the builder's file system layout) and intermediate shapes (8 KB; the runtime
    infers them again)."""
    del model.graph.value_info[:]
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.metadata_props[:]
    model.doc_string = ""


def to_onnx(module: nn.Module, input_shape: tuple[int, ...], *, float16_storage: bool,
            names: tuple[str, str] = (INPUT, OUTPUT)) -> bytes:
    """The serialized ONNX model of `module` (eval mode) on float32 input (batch, *input_shape), batch dynamic."""
    import onnx

    example = torch.zeros((2, *input_shape))
    batch = torch.export.Dim("batch", min=1, max=65536)
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)  # 'torchvision is not installed' is about ops no model here uses
    with warnings.catch_warnings():  # the exporter warns about its own internals (deprecated pytree API)
        warnings.simplefilter("ignore")
        try:
            # The exporter's optimizer folds batch norms into convolutions, which makes float16 weights
            # float32 values: a float16 variant keeps them apart (onnxruntime folds them at load).
            program = torch.onnx.export(module.eval(), (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                        optimize=not float16_storage,
                                        input_names=[names[0]], output_names=[names[1]],
                                        dynamic_shapes=({0: batch},))
        except Exception as exc:  # the exporter raises many types; the first line says which op failed
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"ONNX export failed ({type(exc).__name__}: {first})") from None
        finally:
            registration.setLevel(level)
    model = program.model_proto
    strip_metadata(model)
    if float16_storage:
        store_float16(model)
    onnx.checker.check_model(model)
    buffer = io.BytesIO()
    onnx.save_model(model, buffer)
    return buffer.getvalue()


def session(model: bytes | str, threads: int = 1):
    """An onnxruntime CPU session with `threads` intra-op threads (1: the way a small device runs it)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # warnings about unused initializers are not the user's business
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def run_logits(sess, x, batch_size: int = 256) -> np.ndarray:
    """Logits (N, n_classes) float32 of float32 features x (N, C, F, T): an array, a tensor or packed
    `data.bundle.Features`, read a batch at a time."""
    out = [sess.run([OUTPUT], {INPUT: np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)})[0]
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
