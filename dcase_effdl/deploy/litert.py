"""The LiteRT runtime: a .tflite file in TensorFlow's interpreter (XNNPACK delegate), run on float32 features.

The one module that imports TensorFlow to run a model; it never imports torch, so the benchmark's
litert case measures the runtime alone. Which runtime and why: `tflite_export`'s docstring.
"""

from __future__ import annotations

import numpy as np

from dcase_effdl.errors import UserError


def require_runtime() -> None:
    """One line naming the missing package when the `litert` extra is not installed."""
    try:
        import flatbuffers  # noqa: F401
        from tensorflow.lite.python import schema_py_generated  # noqa: F401
    except ImportError as exc:
        raise UserError(f"--format tflite needs the litert extra ({exc.name} not installed): "
                        "pip install -c constraints.txt -e \".[litert]\"") from None


def interpreter(model: bytes | str, threads: int = 1, keep_intermediates: bool = False):
    """A LiteRT interpreter (XNNPACK delegate, the default CPU path) with `threads` threads, tensors allocated;
    `keep_intermediates`: every tensor stays readable after `invoke` (for tests, slower)."""
    import warnings

    with warnings.catch_warnings():  # tf.lite.Interpreter announces ai_edge_litert, not on the registry here
        warnings.simplefilter("ignore")
        from tensorflow.lite.python.interpreter import Interpreter

        kwargs = {"model_content": model} if isinstance(model, (bytes, bytearray)) else {"model_path": str(model)}
        interp = Interpreter(**kwargs, num_threads=threads, experimental_preserve_all_tensors=keep_intermediates)
    interp.allocate_tensors()
    return interp


def make_runner(interp):
    """fn(x float32 (N, C, F, T)) -> logits (N, n_classes) float32, resizing the batch when it changes."""
    inp, out = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    state = {"batch": int(interp.get_input_details()[0]["shape"][0])}

    def run(x: np.ndarray) -> np.ndarray:
        if len(x) != state["batch"]:
            interp.resize_tensor_input(inp, [len(x), *x.shape[1:]], strict=True)
            interp.allocate_tensors()
            state["batch"] = len(x)
        interp.set_tensor(inp, np.ascontiguousarray(x, dtype=np.float32))
        interp.invoke()
        return interp.get_tensor(out)

    return run


def run_logits(interp, x, batch_size: int = 64) -> np.ndarray:
    """Logits (N, n_classes) float32 of float32 features x (an array, tensor or `data.bundle.Features`)."""
    run = make_runner(interp)
    out = [run(np.asarray(x[i : i + batch_size], dtype=np.float32)).copy() for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def runtime_version() -> str:
    import tensorflow as tf

    return tf.__version__
