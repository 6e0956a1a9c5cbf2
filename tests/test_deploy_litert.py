""".tflite files (float32, float16, full-integer int8, 1-bit) written from the variants' own tensors agree with PyTorch in LiteRT."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import yaml

from dcase_effdl.errors import UserError
from dcase_effdl.rundir import RunDir

# One import of TensorFlow for the whole module (8-25 s): every check that needs it lives here.
pytest.importorskip("tensorflow.lite.python.schema_py_generated",
                    reason="the litert extra is not installed (pip install -c constraints.txt -e '.[litert]')")
from tensorflow.lite.python import schema_py_generated as schema  # noqa: E402

from deploy_recipe import digits_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

RECIPE = digits_recipe("litert_tiny")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from dcase_effdl.deploy.export import export_run
    from dcase_effdl.pipeline import run

    root = tmp_path_factory.mktemp("litert")
    (root / "tiny.yaml").write_text(yaml.safe_dump(RECIPE))
    run(root / "tiny.yaml", out=str(root / "run"))
    lines = []
    return root / "run", export_run(root / "run", fmt="tflite", log=lines.append), lines


def _model(path: Path):
    buf = path.read_bytes()
    assert buf[4:8] == b"TFL3"  # the .tflite file identifier
    return schema.ModelT.InitFromPackedBuf(buf, 0)


def _ops(model) -> list[str]:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if k.isupper()}
    return [names[model.operatorCodes[op.opcodeIndex].builtinCode] for op in model.subgraphs[0].operators]


def _tensor_values(model, dtype: int) -> int:
    """Number of stored (constant) values of one tensor type."""
    g = model.subgraphs[0]
    return sum(int(np.prod(t.shape)) for t in g.tensors if t.type == dtype and model.buffers[t.buffer].data is not None)


@pytest.mark.slow
def test_every_variant_exports_to_tflite_and_agrees_with_pytorch(exported):
    run_dir, results, lines = exported
    assert list(results) == [v["name"] for v in RECIPE["variants"]]
    for name, info in results.items():
        vdir = RunDir(run_dir).variant(name)
        assert vdir.export_info("tflite") == info
        assert info["size_bytes"] == vdir.export_path("tflite").stat().st_size
        assert info["n_clips"] == 539 and info["argmax_agreement"] >= 0.99, name
        # Float variants: the same float32 arithmetic on XNNPACK's kernels (rounding only). int8: the
        # same codes except where a value lies within rounding of a code boundary (int32 bias, fixed-
        # point requantization, round-half-away QUANTIZE): 1.1e-3 measured.
        assert info["max_prob_diff"] < (0.05 if name == "int8" else 1e-4), name
    assert results["int8"]["int8_layers"] == 5
    assert "full-integer int8" in results["int8"]["storage"] and "1 of 5 int8 layers" in results["int8"]["storage"]
    assert len(lines) == 4 and "agrees with PyTorch on" in lines[2]


@pytest.mark.slow
def test_tflite_files_store_the_variants_tensors(exported):
    run_dir, results, _ = exported
    run = RunDir(run_dir)
    T = schema.TensorType
    i8 = _model(run.variant("int8").export_path("tflite"))
    weights = sum(r["n_params"] for r in run.variant("int8").size()["rows"] if r["role"] == "weight")
    assert _tensor_values(i8, T.INT8) == weights + 4  # the stored codes, and 4 one-value clamp limits
    assert _tensor_values(i8, T.FLOAT16) == 0
    ops = _ops(i8)
    # Full integer: one QUANTIZE at the input, int8 convolutions and dense layer, the 7-bit clamp as
    # int8 MINIMUM before each later layer, DEQUANTIZE only for the float32-output last layer.
    assert ops.count("QUANTIZE") == 1 and ops.count("CONV_2D") == 3 and ops.count("MINIMUM") == 5
    g = i8.subgraphs[0]
    for op, name in zip(g.operators, ops):
        if name == "CONV_2D":
            x, w, b = (g.tensors[i] for i in op.inputs)
            assert (x.type, w.type, b.type, g.tensors[op.outputs[0]].type) == (T.INT8, T.INT8, T.INT32, T.INT8)
            assert len(w.quantization.scale) == w.shape[0] and not any(w.quantization.zeroPoint)  # per channel
    f16 = _model(run.variant("float16").export_path("tflite"))
    n_params = run.variant("float32").size()["n_params"]
    assert _tensor_values(f16, T.FLOAT16) == n_params  # every conv / dense weight and bias, as stored
    f32 = _model(run.variant("float32").export_path("tflite"))
    assert _tensor_values(f32, T.FLOAT16) == 0 and "DEQUANTIZE" not in _ops(f32)
    binary = _model(run.variant("binary").export_path("tflite"))
    assert _tensor_values(binary, T.FLOAT16) >= 0.9 * weights  # +-1 signs as float16
    assert "1-bit" in results["binary"]["storage"]
    sizes = {name: info["size_bytes"] for name, info in results.items()}
    # Files: on this 4,778-parameter CNN a fixed ~3 KB of graph and float32 biases/scales (int8 11.2 KB,
    # float32 21.6 KB measured).
    assert sizes["int8"] < 0.6 * sizes["float32"] and sizes["float16"] < 0.75 * sizes["float32"]


@pytest.mark.slow
def test_int8_layers_take_the_codes_pytorch_computes(exported):
    """Each later int8 layer's input in LiteRT (int8 u - 128, after the 7-bit clamp) against the uint8
    codes the PyTorch variant hands it: the u -> u - 128 mapping and the clamp, tensor by tensor."""
    from dcase_effdl.compress import int8_kernels as K
    from dcase_effdl.compress import load_variant
    from dcase_effdl.deploy.agreement import run_test_features
    from dcase_effdl.deploy.litert import interpreter, make_runner

    run_dir, _, _ = exported
    run = RunDir(run_dir)
    x = np.asarray(run_test_features(run)[:32], dtype=np.float32)
    variant = load_variant(run.variant("int8").model_path)
    codes = {}
    for name, m in variant.module.named_modules():
        if isinstance(m, K._Int8Layer):
            m.register_forward_pre_hook(lambda mod, args, name=name: codes.__setitem__(name, args[0]))
    with torch.no_grad():
        variant.module(torch.from_numpy(x))
    interp = interpreter(run.variant("int8").export_path("tflite"), keep_intermediates=True)
    make_runner(interp)(x)
    by_name = {d["name"]: d["index"] for d in interp.get_tensor_details()}
    first = variant.module.get_submodule("features.0.0")
    codes["features.0.0"] = K.quantize_input(codes["features.0.0"], float(first.input_scale),
                                             int(first.input_zero_point), first.act_qmax)
    assert list(codes)[0] == "features.0.0" and len(codes) == 5 and all(c.dtype == torch.uint8 for c in codes.values())
    share = {}
    for name, c in codes.items():
        ref = c.numpy().astype(np.int16)
        got = interp.get_tensor(by_name[f"{name}.input"]).astype(np.int16) + 128
        if got.ndim == 4:
            got = got.transpose(0, 3, 1, 2)  # NHWC -> NCHW
        assert got.shape == ref.shape and got.max() <= 127  # the 7-bit clamp held
        assert np.abs(got - ref).max() <= 1, name  # neighbouring codes at most (rounding at a boundary)
        share[name] = (got == ref).mean()
    # The input codes are PyTorch's exactly; each layer adds a few one-step differences (a sum that
    # lands within rounding of a code boundary) which the next one inherits: measured 100, 99.94,
    # 99.56, 98.2, 97.1 % equal on 128 images.
    assert share["features.0.0"] == 1.0 and share["features.1.0"] > 0.99
    assert min(share.values()) > 0.95


def test_an_op_without_mapping_is_refused_in_one_line():
    from dcase_effdl.deploy.tflite_export import to_tflite

    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Sigmoid(), nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(UserError, match=r"variant 'odd': module '1' \(Sigmoid\) has no TFLite mapping here"):
        to_tflite(model, (1, 4, 4), "odd")
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(64, 3))
    with pytest.raises(UserError, match=r"variant 'g': Conv2d with groups=2 \(neither 1 nor depthwise\)"):
        to_tflite(grouped, (4, 4, 4), "g")


def test_plain_layers_run_as_in_pytorch():
    """Padding other than 'same' (a PAD op), strides, depthwise convolution, a standalone batch norm,
    average pooling, a residual add, slicing, cat and mean: each mapped op, against PyTorch on random input."""
    from dcase_effdl.deploy.litert import interpreter, run_logits
    from dcase_effdl.deploy.tflite_export import to_tflite

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 8, 3, stride=2, padding=1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.bn = nn.BatchNorm2d(8)
            self.pool = nn.AvgPool2d(2)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            y = torch.relu(self.a(x))
            half = y.shape[2] // 2  # a split along frequency, as mobnet does
            y = torch.cat([y[:, :, :half], self.dw(y[:, :, half:])], dim=2)
            y = self.pool(self.bn(y + self.dw(y)))
            return self.fc(torch.flatten(self.gap(y), 1)) + self.fc(y.mean(dim=(2, 3)))

    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 2, 12, 10)
    got = run_logits(interpreter(to_tflite(net, (2, 12, 10), "plain")), x.numpy())
    with torch.no_grad():
        ref = net(x).numpy()
    assert got.shape == (4, 5) and np.abs(got - ref).max() < 1e-5


def test_missing_extra_is_one_line(monkeypatch):
    import builtins

    from dcase_effdl.deploy.litert import require_runtime

    real = builtins.__import__

    def without_tensorflow(name, *args, **kwargs):
        if name.startswith("tensorflow"):
            raise ModuleNotFoundError(f"No module named {name!r}", name="tensorflow")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_tensorflow)
    with pytest.raises(UserError, match=r"needs the litert extra \(tensorflow not installed\): pip install -c"):
        require_runtime()


@pytest.mark.slow
def test_deploy_benchmark_adds_litert_rows(exported, capsys):
    import importlib.util

    run_dir, results, _ = exported
    spec = importlib.util.spec_from_file_location("deploy_benchmark", REPO / "benchmarks" / "deploy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([str(run_dir), "--variant", "int8", "--calls", "100"]) == 0
    assert "int8         litert" in capsys.readouterr().out
    data = RunDir(run_dir).deploy()
    assert [(r["variant"], r["runtime"]) for r in data["rows"]] == [("int8", "pytorch"), ("int8", "litert")]
    row = data["rows"][1]
    assert row["calls"] == 100 and row["threads"] == 1 and 0 < row["batch1"]["median_ms"] <= row["batch1"]["p90_ms"]
    assert row["peak_rss_mb"] >= row["base_rss_mb"] > 0 and row["batch64"]["median_ms"] > 0
    assert row["file_bytes"] == results["int8"]["size_bytes"] and row["macs"] == data["rows"][0]["macs"] > 0
    assert row["storage"] == results["int8"]["storage"]
