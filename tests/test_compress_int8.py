"""int8 step: integer kernels really run, predictions close to float32, exact file round trip, QAT, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from torch.utils._python_dispatch import TorchDispatchMode

from dcase_effdl.compress import CompressContext, apply_steps, load_variant, parse_steps
from dcase_effdl.compress import int8_kernels as K
from dcase_effdl.config import TrainConfig
from dcase_effdl.data.bundle import DataBundle
from dcase_effdl.errors import UserError
from dcase_effdl.compress.macs import count_macs
from dcase_effdl.models import ModelSpec, build_model
from dcase_effdl.compress.size import size_report

SPEC = {"name": "dcase2020_baseline", "params": {"conv_filters": [8, 16], "dense_units": 20},
        "n_classes": 3, "in_channels": 1, "n_mels": 40, "n_frames": 100}
POOLS = {"pool_sizes": [[5, 5], [4, 20]]}


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes that differ in which mel bands carry energy: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.randn(n, 1, 40, 100, generator=g)
    for c in range(3):
        x[y == c, :, 13 * c : 13 * c + 13] += 2.0
    return x, y


@pytest.fixture(scope="module")
def trained():
    """A small baseline trained for a few dozen steps (confident, well-separated predictions)."""
    torch.manual_seed(0)
    model = build_model(SPEC["name"], {**SPEC["params"], **POOLS}, n_frames=100)
    x, y = _data(96, 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(12):
        idx = torch.arange(step * 16, step * 16 + 16) % 96
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def _spec():
    return ModelSpec.from_dict({**SPEC, "params": {**SPEC["params"], **POOLS}})


def _bundle() -> DataBundle:
    x, y = _data(96, 0)
    xv, yv = _data(30, 1)
    return DataBundle(["a", "b", "c"], x, y, xv, yv, xv, yv, [f"{i}.wav" for i in range(30)])


def _int8(model, steps=({"method": "int8"},), **ctx):
    return apply_steps(model, parse_steps(list(steps), "r.yaml: variants[1].compress"),
                       CompressContext(bundle=_bundle(), model_spec=_spec(), size_policy="dcase2020", **ctx))


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.name())
        return func(*args, **(kwargs or {}))


def test_int8_runs_integer_kernels_and_stays_close_to_float(trained):
    variant = _int8(trained)
    module = variant.module
    layers = [m for m in module.modules() if isinstance(m, K._Int8Layer)]
    assert [type(m).__name__ for m in layers] == ["Int8Conv2d", "Int8Conv2d", "Int8Linear", "Int8Linear"]
    assert all(m.weight.dtype == torch.int8 for m in layers)
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) for m in module.modules())
    assert variant.precisions == {"int8"}
    assert variant.complexity_management == "int8 post-training quantization"

    x, _ = _data(60, 2)
    log = _OpLog()
    with torch.no_grad(), log:
        out = module(x)
    assert log.ops.count("onednn::qconv2d_pointwise") == 2
    assert log.ops.count("onednn::qlinear_pointwise") == 2
    assert not any(op.startswith(("aten::convolution", "aten::addmm", "aten::linear", "aten::mm")) for op in log.ops)

    with torch.no_grad():
        ref = trained(x)
    assert not torch.equal(out, ref)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95


def test_each_kernel_computes_the_quantized_arithmetic(trained):
    """The integer kernels equal float64 arithmetic on the same codes (no hidden float path)."""
    module = _int8(trained).module
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a: inputs.__setitem__(mod, a[0]))
             for m in module.modules() if isinstance(m, K._Int8Layer)]
    x, _ = _data(8, 3)
    with torch.no_grad():
        module(x)
        for layer, inp in inputs.items():
            got = layer(inp)
            want = K.reference_forward(layer, inp)
            if layer.uint8_out:
                assert got.dtype == torch.uint8
                assert (got.int() - want.int()).abs().max() <= 1  # rounding of ties only
            else:
                assert torch.allclose(got.double(), want, atol=1e-4 * float(want.abs().max()) + 1e-6)
    for h in hooks:
        h.remove()
    assert len(inputs) == 4


def test_int8_file_round_trip_is_exact_and_stores_int8(trained, tmp_path):
    variant = _int8(trained)
    path = variant.save(tmp_path / "model.safetensors")
    loaded = load_variant(path)
    x, _ = _data(20, 4)
    with torch.no_grad():
        # Same stored bits, same input shape, same process and threads: the same kernels run, so equal bits.
        assert torch.equal(loaded.module(x), variant.module(x))
    n_weights = sum(m.weight.numel() for m in trained.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    with safe_open(str(path), "pt") as f:
        stored = {k: f.get_tensor(k) for k in f.keys()}
    assert stored["blob.int8"].dtype == torch.int8
    assert stored["blob.int8"].numel() <= n_weights  # all weights as int8 codes (zero codes stored sparse)
    assert stored["blob.int8"].numel() > 0.9 * n_weights
    report = size_report(loaded)
    n_biases = sum(m.bias.numel() for m in trained.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert report["n_params"] == n_weights + n_biases  # BN folded away, scales not counted
    assert report["size_bytes"] <= n_weights + 4 * n_biases
    assert any(g["reason"].startswith("quantisation scale") for g in report["not_counted"])
    assert 0 < report["file_size_bytes"] - report["size_bytes"] < 8 * 1024
    assert count_macs(loaded.module, (1, 40, 100))["macs"] == count_macs(trained, (1, 40, 100))["macs"]


def test_per_tensor_and_keep_float(trained):
    variant = _int8(trained, [{"method": "int8", "granularity": "per_tensor", "keep_float": ["classifier.4"],
                               "reduce_range": False, "observer": "percentile"}])
    layers = [m for m in variant.module.modules() if isinstance(m, K._Int8Layer)]
    assert len(layers) == 3 and all(m.weight_scale.numel() == 1 and m.act_qmax == 255 for m in layers)
    assert isinstance(variant.module.classifier[4], nn.Linear)
    x, _ = _data(30, 5)
    with torch.no_grad():
        assert (variant.module(x).argmax(1) == trained(x).argmax(1)).float().mean() >= 0.9


def test_qat_fine_tunes_with_fake_quantization(trained):
    seen = {}

    class Recording(CompressContext):
        def fine_tune(self, model, tune):
            seen["fake"] = sum(1 for m in model.modules() if type(m).__name__ == "FakeQuantLayer")
            seen["epochs"], seen["lr"] = tune.epochs, tune.lr
            return super().fine_tune(model, tune)

    variant = apply_steps(trained, parse_steps([{"method": "int8", "qat_epochs": 1, "qat_lr": 1e-4}], "r"),
                          Recording(bundle=_bundle(), model_spec=_spec(), train=TrainConfig(epochs=1, batch_size=32),
                                    size_policy="dcase2020"))
    assert seen == {"fake": 4, "epochs": 1, "lr": 1e-4}
    assert variant.complexity_management == "int8 quantization-aware training"
    assert sum(isinstance(m, K._Int8Layer) for m in variant.module.modules()) == 4
    x, _ = _data(30, 6)
    with torch.no_grad():
        assert (variant.module(x).argmax(1) == trained(x).argmax(1)).float().mean() >= 0.9


def test_bad_input(trained):
    with pytest.raises(UserError, match=r"r.yaml: variants\[1\].compress\[0\].granularity: expected one of"):
        parse_steps([{"method": "int8", "granularity": "per_row"}], "r.yaml: variants[1].compress")
    with pytest.raises(UserError, match="calibration_samples must be >= 1"):
        parse_steps([{"method": "int8", "calibration_samples": 0}], "r.yaml: variants[1].compress")
    with pytest.raises(UserError, match=r"compress\[0\]: int8 calibration needs training data"):
        apply_steps(trained, parse_steps([{"method": "int8"}], "r.yaml: variants[1].compress"), CompressContext(size_policy="dcase2020"))
    with pytest.raises(UserError, match=r"compress\[1\]: int8 cannot apply to a model whose weights are already int8"):
        _int8(trained, [{"method": "int8"}, {"method": "int8"}])
    with pytest.raises(UserError, match="keep_float names no module: 'classifier.9'"):
        _int8(trained, [{"method": "int8", "keep_float": ["classifier.9"]}])
    with pytest.raises(UserError, match="needs fine-tuning"):
        _int8(trained, [{"method": "int8", "qat_epochs": 2}])


def test_int8_refuses_one_bit_weights(trained):
    import copy

    model = copy.deepcopy(trained)
    conv = model.features[1][0]
    with torch.no_grad():
        conv.weight.copy_(torch.where(conv.weight >= 0, 1.0, -1.0))
    conv.storage_formats = {"weight": "binary"}
    with pytest.raises(UserError, match=r"compress\[0\]: int8 cannot apply to a model whose weights are already binary "
                                        r"\(features.1.0.weight\)"):
        _int8(model)


def test_code_max_pool_equals_float_pooling_on_codes():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 128, (2, 5, 23, 47), dtype=torch.uint8, generator=g)
    for kernel in [(5, 5), (4, 10), 3]:
        pool = K.CodeMaxPool2d.like(nn.MaxPool2d(kernel))
        want = nn.functional.max_pool2d(codes.float(), kernel)
        for x in (codes, codes.contiguous(memory_format=torch.channels_last)):
            got = pool(x)
            # A max of integer codes: exact.
            assert got.dtype == torch.uint8 and torch.equal(got.float(), want)
    assert not K.CodeMaxPool2d.handles(nn.MaxPool2d(3, stride=2))  # overlapping windows stay float
    assert not K.CodeMaxPool2d.handles(nn.MaxPool2d(2, padding=1))


def test_few_channel_convs_are_exact():
    """A 1- or 2-channel conv (a first layer), strided too: the kernel's integer sums."""
    torch.manual_seed(0)
    for conv in (nn.Conv2d(1, 8, 7, padding=3), nn.Conv2d(2, 4, (3, 5), stride=(2, 1), padding=(1, 2))):
        q = K.Int8Conv2d.like(conv, per_channel=True, act_qmax=127, relu=False)
        codes, scale = K.weight_qparams(conv.weight, True)
        q.set_quantized(codes, scale, conv.bias, 0.04, 50)
        x = torch.randn(3, conv.in_channels, 17, 29)
        got, want = q(x), K.reference_forward(q, x)
        assert got.shape == want.shape
        assert torch.allclose(got.double(), want, atol=1e-4 * float(want.abs().max()))


def test_conv_pools_its_codes_in_chunks(monkeypatch):
    """A conv pooling its own uint8 codes a few examples at a time gives the codes of conv, then pool."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 8, 7, padding=3)
    codes, scale = K.weight_qparams(conv.weight, True)
    layers = {}
    for pool in (None, (5, 5)):
        layers[pool] = K.Int8Conv2d.like(conv, per_channel=True, act_qmax=127, relu=True, uint8_out=True, pool=pool)
        layers[pool].set_quantized(codes, scale, conv.bias, 0.04, 50)
        layers[pool].set_output(0.01, 0)
    x = torch.randn(7, 1, 23, 47)
    with torch.no_grad():
        want = K.CodeMaxPool2d.like(nn.MaxPool2d(5))(layers[None](x))
        monkeypatch.setattr(K, "POOL_CHUNK_BYTES", 2 * 8 * 23 * 47)  # 2 examples a chunk, the last one alone
        got = layers[(5, 5)](x)
        fused_pool = K.CodeMaxPool2d.like(nn.MaxPool2d(5), fused=True)
        assert fused_pool(got) is got  # codes pass through; floats (the QDQ export) are still pooled
        assert torch.equal(fused_pool(x), nn.functional.max_pool2d(x, 5))
    assert got.dtype == torch.uint8 and got.shape == want.shape == (7, 8, 4, 9)
    assert 0 < int(want.max()) and int(want.min()) < 127  # not all codes clamped
    # The integer sums are exact; the kernels for 1, 2 or 7 examples round the rescaled sums alike, but
    # their rounding is not documented: allow one code at ties.
    assert (got.int() - want.int()).abs().max() <= 1
    assert (got != want).float().mean() < 0.01
    assert (K.reference_forward(layers[(5, 5)], x).int() - got.int()).abs().max() <= 1  # float64 conv, pool, quantize


class _Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, so Sequential neighbours are used."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.block(x)
        if x.mean() > -1:  # always true; fx sees a Proxy here and gives up
            x = x.mean(dim=(2, 3))
        return self.head(x)


def test_untraceable_models_fall_back_to_sequential_neighbours():
    from dcase_effdl.compress.int8 import plan_layers

    torch.manual_seed(0)
    model = _Untraceable().eval()
    plan = plan_layers(model, [], "r")
    assert [(e["name"], e["bn"], e["relu"], e["out_to"]) for e in plan] == [
        ("block.0", "block.1", True, None), ("head", None, False, None)]
    x = torch.randn(16, 1, 8, 8)
    bundle = DataBundle(["a", "b", "c"], x, torch.zeros(16, dtype=torch.long), x, x, x, None, [])
    variant = apply_steps(model, parse_steps([{"method": "int8"}], "r"), CompressContext(bundle=bundle, size_policy="dcase2020"))
    with torch.no_grad():
        assert (variant.module(x) - model(x)).abs().max() < 0.05 * model(x).abs().max()
