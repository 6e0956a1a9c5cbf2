"""Compression framework: step parsing, apply_steps, the variant file (round trip, corruption), float16."""

from __future__ import annotations

import json
from dataclasses import replace
import struct

import pytest
import torch
import torch.nn as nn

from dcase_effdl.compress import (
    CompressContext,
    Variant,
    apply_steps,
    available_methods,
    load_variant,
    parse_steps,
)
from dcase_effdl.errors import UserError
from dcase_effdl.models import ModelSpec, model_params
from dcase_effdl.compress.size import size_report

SPEC = ModelSpec.from_dict({"name": "dcase2020_baseline", "params": {"conv_filters": [8, 16], "dense_units": 20},
                            "n_classes": 3, "in_channels": 1, "n_mels": 40, "n_frames": 500})


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = SPEC.build()
    with torch.no_grad():  # trained-like: non-zero biases and batch-norm statistics
        for name, p in model.named_parameters():
            p.add_(0.01 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _x(n=4):
    return torch.randn(n, 1, 40, 500, generator=torch.Generator().manual_seed(1))


def test_parse_steps_errors_name_recipe_and_step():
    src = "recipes/r.yaml: variants[1].compress"
    assert "float16" in available_methods()
    with pytest.raises(UserError, match=r"recipes/r.yaml: variants\[1\].compress\[0\]: unknown compression method 'zip'"):
        parse_steps([{"method": "zip"}], src)
    with pytest.raises(UserError, match=r"recipes/r.yaml: unknown key 'variants\[1\].compress\[1\].bits'"):
        parse_steps([{"method": "float16"}, {"method": "float16", "bits": 3}], src)
    with pytest.raises(UserError, match=r"compress\[0\].batch_norm: expected bool"):
        parse_steps([{"method": "float16", "batch_norm": "yes"}], src)
    with pytest.raises(UserError, match=r"compress\[0\]: missing key 'method'"):
        parse_steps([{"amount": 0.5}], src)
    with pytest.raises(UserError, match=r"compress\[0\]: expected a mapping"):
        parse_steps(["float16"], src)
    assert parse_steps([], src) == []


def test_no_steps_round_trip_is_exact(tmp_path):
    model = _model()
    variant = apply_steps(model, [], CompressContext(model_spec=SPEC, size_policy="dcase2020"))
    assert variant.module is not model  # the parent is shared by all variants
    assert variant.complexity_management == "none"
    path = variant.save(tmp_path / "model.safetensors")
    loaded = load_variant(path)
    x = _x()
    assert torch.equal(loaded.module(x), model(x))


def test_float16_storage_round_trip_and_size(tmp_path):
    model = _model()
    logs = []
    steps = parse_steps([{"method": "float16"}], "r.yaml: variants[0].compress")
    variant = apply_steps(model, steps, CompressContext(model_spec=SPEC, log=logs.append, size_policy="dcase2020"))
    assert variant.complexity_management == "float16"
    assert variant.precisions == {"float16"}
    for p in variant.module.parameters():
        assert p.dtype == torch.float32  # computed in float32
    conv = variant.module.features[0][0]
    assert torch.equal(conv.weight, conv.weight.half().float())
    bn = variant.module.features[0][1]
    assert torch.equal(bn.weight, model.features[0][1].weight)  # batch norm stays float32
    parent = size_report(model)
    report = size_report(variant)
    assert report["size_bytes"] == parent["size_bytes"] // 2
    assert variant.history[0]["size_bytes_before"] == parent["size_bytes"]
    assert variant.history[0]["size_bytes_after"] == report["size_bytes"]
    assert logs and "float16" in logs[0] and "KB ->" in logs[0]

    path = variant.save(tmp_path / "model.safetensors")
    loaded = load_variant(path)
    x = _x()
    assert torch.equal(loaded.module(x), variant.module(x))
    assert loaded.complexity_management == "float16"
    # predictions change only slightly against float32
    assert torch.allclose(variant.module(x), model(x), atol=1e-2)
    # stored as float16 on disk: the file is within a few KB of the accounted size
    on_disk = path.stat().st_size
    reloaded = size_report(loaded)
    assert reloaded["file_size_bytes"] == on_disk
    assert 0 < on_disk - report["size_bytes"] < 8 * 1024


def test_sparse_tensors_are_stored_sparse(tmp_path):
    model = _model()
    with torch.no_grad():
        w = model.features[1][0].weight
        w[w.abs() < w.abs().median()] = 0  # half the big conv's weights
    variant = apply_steps(model, parse_steps([{"method": "float16"}], "r"), CompressContext(model_spec=SPEC, size_policy="dcase2020"))
    path = variant.save(tmp_path / "m.safetensors")
    report = size_report(variant)
    mask_bytes = 8 * 16 * 49 // 8
    assert path.stat().st_size - report["size_bytes"] < mask_bytes + 8 * 1024
    assert torch.equal(load_variant(path).module(_x()), variant.module(_x()))


def test_float16_refuses_a_model_already_in_int8():
    m = nn.Module()
    m.register_buffer("weight", torch.ones(4, dtype=torch.int8))
    m.tensor_roles = {"weight": "weight"}
    with pytest.raises(UserError, match=r"r\[0\]: float16 cannot apply to a model whose weights are already int8"):
        apply_steps(m, parse_steps([{"method": "float16"}], "r"), CompressContext(size_policy="dcase2020"))


def _saved(tmp_path):
    variant = apply_steps(_model(), parse_steps([{"method": "float16"}], "r"), CompressContext(model_spec=SPEC, size_policy="dcase2020"))
    return variant.save(tmp_path / "model.safetensors")


def test_truncated_file_is_a_user_error(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"model.safetensors: not a readable variant file \(truncated or corrupt"):
        load_variant(path)


def test_tampered_tensor_bytes_fail_the_checksum(tmp_path):
    path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # a byte of the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="checksum mismatch"):
        load_variant(path)


def test_tampered_metadata_fails_the_checksum(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    meta = json.loads(header["__metadata__"]["dcase_effdl"])
    meta["steps"] = [{"method": "gzip"}]
    header["__metadata__"]["dcase_effdl"] = json.dumps(meta)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    with pytest.raises(UserError, match=r"model.safetensors: checksum mismatch"):
        load_variant(path)


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(UserError, match="variant file not found"):
        load_variant(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(UserError, match="without dcase_effdl metadata"):
        load_variant(tmp_path / "plain.safetensors")


def test_values_changed_after_float16_are_refused_at_save(tmp_path):
    variant = apply_steps(_model(), parse_steps([{"method": "float16"}], "r"), CompressContext(model_spec=SPEC, size_policy="dcase2020"))
    with torch.no_grad():
        variant.module.features[0][0].weight.add_(1e-4)
    with pytest.raises(UserError, match="not exactly representable"):
        variant.save(tmp_path / "m.safetensors")


def test_binary_tensors_pack_one_bit_each(tmp_path):
    """The storage format D2's 1-bit step uses: +-1 values, 1 bit each on disk."""
    model = _model()
    conv = model.features[1][0]
    with torch.no_grad():
        conv.weight.copy_(torch.where(conv.weight >= 0, 1.0, -1.0))
    conv.storage_formats = {"weight": "binary"}
    variant = Variant(model, [], SPEC)
    report = size_report(variant)
    assert [r["bits"] for r in report["rows"] if r["name"] == "features.1.0.weight"] == [1]
    path = variant.save(tmp_path / "b.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        bits = f.get_tensor("blob.uint8")
    n = conv.weight.numel()
    assert n // 8 <= bits.numel() < n // 8 + 16  # the packed signs, 1 bit per weight (+ a few sparse masks)
    # No step marked the layer binary, so a rebuilt model would expect float32: refused, not misread.
    with pytest.raises(UserError, match="stored tensors do not match the rebuilt model"):
        load_variant(path)


def test_file_overhead_is_small_for_many_small_tensors(tmp_path):
    """Hundreds of tiny tensors: the index is compressed and tensors share blobs, so the file stays
    within a few KB of the stored bytes."""
    spec = replace(SPEC, params=model_params(SPEC.family, {"conv_filters": [4] * 8, "pool_sizes": [[1, 1]] * 8, "dense_units": 4}))
    model = spec.build()
    variant = apply_steps(model, parse_steps([{"method": "float16"}], "r"), CompressContext(model_spec=spec, size_policy="dcase2020"))
    path = variant.save(tmp_path / "m.safetensors")
    stored = sum(r["dense_size_bytes"] for r in size_report(variant)["rows"])
    assert path.stat().st_size - stored < 3 * 1024
