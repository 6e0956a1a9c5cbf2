"""Exported ONNX models (float32, float16, int8 QDQ, 1-bit) agree with their PyTorch variants on a tiny run."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from dcase_effdl.errors import UserError
from dcase_effdl.rundir import RunDir

ort = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed (pip install -e '.[deploy]')")
onnx = pytest.importorskip("onnx", reason="the deploy extra is not installed (pip install -e '.[deploy]')")
pytest.importorskip("onnxscript", reason="the deploy extra is not installed (pip install -e '.[deploy]')")

from deploy_recipe import digits_recipe  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

RECIPE = digits_recipe("deploy_tiny")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from dcase_effdl.pipeline import run

    root = tmp_path_factory.mktemp("deploy")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    run(recipe, out=str(root / "run"))
    return root / "run"


@pytest.fixture(scope="module")
def exported(tiny_run):
    from dcase_effdl.deploy.export import export_run

    lines = []
    return export_run(tiny_run, log=lines.append), lines


@pytest.mark.slow
def test_every_variant_exports_and_agrees_with_pytorch(tiny_run, exported):
    results, lines = exported
    assert list(results) == [v["name"] for v in RECIPE["variants"]]
    for name, info in results.items():
        vdir = RunDir(tiny_run).variant(name)
        assert vdir.export_info("onnx") == info == json.loads((vdir.export_dir / "export.json").read_text())["onnx"]
        assert info["n_clips"] == 539  # 30 % of 1,797 images
        assert info["argmax_agreement"] >= 0.99, name
        # Float variants: the same float32 arithmetic on other kernels, so rounding differences only.
        # int8: where a layer input lies within float rounding of a code boundary, the runtimes pick
        # neighbouring codes (PyTorch rounds x * (1 / s) + zp, QuantizeLinear x / s, then + zp; the
        # sums before a requantization run in another order): one step of one activation (7.6e-3 here).
        assert info["max_prob_diff"] < (0.05 if name == "int8" else 1e-4), name
        assert info["size_bytes"] == vdir.export_path("onnx").stat().st_size
    assert len(lines) == 4 and "agrees with PyTorch on" in lines[0]


def _initializer_types(path: Path) -> dict[str, int]:
    model = onnx.load(str(path))
    out: dict[str, int] = {}
    for init in model.graph.initializer:
        n = int(np.prod(init.dims)) if init.dims else 1
        out[onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name] = out.get(
            onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name, 0) + n
    return out


@pytest.mark.slow
def test_exported_files_store_the_variants_precision(tiny_run, exported):
    results, _ = exported
    run = RunDir(tiny_run)
    n_weights = run.variant("float32").size()["n_params"]  # conv/dense weights and biases (dcase2020 rule)
    f32 = _initializer_types(run.variant("float32").export_path("onnx"))
    f16 = _initializer_types(run.variant("float16").export_path("onnx"))
    i8 = _initializer_types(run.variant("int8").export_path("onnx"))
    binary = _initializer_types(run.variant("binary").export_path("onnx"))
    assert f32.get("float16", 0) == 0 and f32["float32"] >= n_weights
    assert f16["float16"] >= n_weights  # every weight and bias: float16 on disk
    weights = sum(r["n_params"] for r in run.variant("int8").size()["rows"] if r["role"] == "weight")
    assert i8["int8"] == weights  # the stored int8 codes, not float weights
    assert binary["float16"] > 0.9 * weights  # +-1 values as float16
    assert results["int8"]["int8_layers"] == 5 and "QDQ" in results["int8"]["storage"]  # 3 conv, 2 dense
    assert "1-bit" in results["binary"]["storage"]
    sizes = {name: info["size_bytes"] for name, info in results.items()}
    # Files, not just tensors: on this 4,778-parameter CNN the graph and the float32 biases, scales and
    # batch norms are a fixed ~5 KB (int8 11.3 KB, float32 23.3 KB measured); 1.6 MB models reach 27 %.
    assert sizes["int8"] < 0.6 * sizes["float32"] and sizes["float16"] < 0.75 * sizes["float32"]


def test_export_names_an_unknown_variant_and_format(tmp_path):
    from dcase_effdl.deploy.export import export_run
    from fake_run import make_dataset, make_run

    make_dataset(tmp_path / "data")
    run_dir = make_run(tmp_path / "run", tmp_path / "data")
    with pytest.raises(UserError, match="no finished variant 'nope' \\(finished: float32, float16\\)"):
        export_run(run_dir, variant="nope")
    with pytest.raises(UserError, match="--format pte: not a supported format"):
        export_run(run_dir, fmt="pte")


@pytest.mark.parametrize("log, deltas, channels", [("natural", 0, "mono"), ("db", 1, "stereo")])
def test_exported_front_end_gives_the_training_features(log, deltas, channels):
    from dcase_effdl.config import FeatureConfig
    from dcase_effdl.deploy.agreement import max_db_diff
    from dcase_effdl.deploy.frontend import MAX_DB_DIFF, LogMelFrontEnd
    from dcase_effdl.deploy.onnx_export import session, to_onnx
    from dcase_effdl.features.logmel import logmel_batch, n_frames

    cfg = FeatureConfig(name="short", sample_rate=16000, duration=1.0, n_fft=512, win_length=400, hop_length=160,
                        n_mels=32, log=log, deltas=deltas, channels=channels, power=2.0 if log == "db" else 1.0)
    rng = np.random.default_rng(0)
    c = 1 if channels == "mono" else 2
    t = np.arange(16000) / 16000
    # Noise, and a quiet tone whose upper bands are near-silent (where float32 needs float64's help).
    audio = np.stack([0.1 * rng.standard_normal((c, 16000)), np.tile(1e-4 * np.sin(2 * np.pi * 440 * t), (c, 1))])
    audio = audio.astype(np.float32)
    model = to_onnx(LogMelFrontEnd(cfg, n_frames(cfg)), audio.shape[1:], float16_storage=False, names=("audio", "features"))
    out = session(model).run(["features"], {"audio": audio})[0]
    ref = logmel_batch(audio, cfg)
    assert out.shape == ref.shape == (2, c * (1 + deltas), 32, 101)
    assert max_db_diff(ref, out, cfg) < MAX_DB_DIFF
    assert max_db_diff(ref, out + 0.01, cfg) > MAX_DB_DIFF  # the measure sees a real difference


def test_missing_extra_is_one_line(monkeypatch):
    import builtins

    from dcase_effdl.deploy.onnx_export import require_runtime

    real = builtins.__import__

    def without_onnxruntime(name, *args, **kwargs):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxruntime)
    with pytest.raises(UserError, match=r"needs the deploy extra \(onnxruntime not installed\): pip install -e"):
        require_runtime()


@pytest.mark.slow
def test_deploy_benchmark_writes_deploy_json(tiny_run, exported, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_benchmark", REPO / "benchmarks" / "deploy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([str(tiny_run), "--variant", "float32", "--variant", "int8", "--calls", "100"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("CPU: ") and "int8         onnxruntime" in out
    data = RunDir(tiny_run).deploy()
    assert [(r["variant"], r["runtime"]) for r in data["rows"]] == [
        ("float32", "pytorch"), ("float32", "onnxruntime"), ("int8", "pytorch"), ("int8", "onnxruntime")]
    for r in data["rows"]:
        assert r["calls"] == 100 and r["threads"] == 1
        assert 0 < r["batch1"]["median_ms"] <= r["batch1"]["p90_ms"]
        assert r["peak_rss_mb"] >= r["base_rss_mb"] > 0
        assert r["macs"] == data["rows"][0]["macs"] > 0  # the same layers in every variant and runtime
    files = {r["runtime"]: r["file_bytes"] for r in data["rows"] if r["variant"] == "int8"}
    assert files["onnxruntime"] == RunDir(tiny_run).variant("int8").export_info("onnx")["size_bytes"]
