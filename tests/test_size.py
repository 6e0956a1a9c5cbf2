"""Size policies: golden numbers from DCASE.md, what is (not) counted, MACs against FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from dcase_effdl.errors import UserError
from dcase_effdl.compress.macs import count_macs
from dcase_effdl.models import build_model
from dcase_effdl.compress.size import POLICIES, format_size_table, size_report, size_report_from_spec


class HandBaseline(nn.Module):
    """The 2020 baseline's tensors built by hand (independent of models/baseline.py)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 7, padding=3)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 7, padding=3)
        self.bn2 = nn.BatchNorm2d(64)
        self.fc1 = nn.Linear(128, 100)
        self.fc2 = nn.Linear(100, 3)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), (5, 5))
        x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), (4, 100))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _nonzero(module: nn.Module) -> nn.Module:
    """Trained models have no exact zeros; fresh ones have zero biases."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.where(p == 0, torch.full_like(p, 0.01), p))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(0.1)
    return module


def test_baseline_golden_450_07_kb_hand_built():
    r = size_report(_nonzero(HandBaseline()), "dcase2020")
    assert r["n_params"] == 115_219
    assert r["n_nonzero"] == 115_219
    assert r["size_bytes"] == 460_876
    assert r["size_kb"] == 450.07
    assert r["within_limit"] and r["limit_bytes"] == 512_000
    bn = [g for g in r["not_counted"] if g["reason"].startswith("batch norm")]
    assert bn and bn[0]["n_values"] == 384  # 115,603 - 115,219, as in the Keras summary


def test_baseline_golden_from_registered_model():
    r = size_report_from_spec("dcase2020_baseline")
    assert (r["n_params"], r["size_bytes"], r["size_kb"]) == (115_219, 460_876, 450.07)
    trained_like = size_report(_nonzero(build_model("dcase2020_baseline")), "dcase2020")
    assert trained_like["size_kb"] == 450.07
    # A fresh model's zero biases are not counted by the non-zero rule.
    fresh = size_report(build_model("dcase2020_baseline"), "dcase2020")
    assert fresh["n_nonzero"] == 115_219 - (32 + 64 + 100 + 3)


class Marked(nn.Module):
    """One weight tensor with a declared storage format."""

    def __init__(self, n: int, fmt: str, value: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.full((n,), value))
        self.storage_formats = {"weight": fmt}
        self.bn = nn.BatchNorm1d(64)


def test_koutini_float16_golden_483_52_kb():
    r = size_report(Marked(247_562, "float16"), "dcase2020")
    assert r["n_nonzero"] == 247_562
    assert r["size_bytes"] == 495_124
    assert r["size_kb"] == 483.52


def test_koutini_zeros_are_not_counted():
    m = Marked(300_000, "float16")
    with torch.no_grad():
        m.weight[247_562:] = 0
    r = size_report(m, "dcase2020")
    assert (r["n_params"], r["n_nonzero"], r["size_kb"]) == (300_000, 247_562, 483.52)
    assert r["sparsity"] == pytest.approx(52_438 / 300_000, abs=1e-6)
    # dcase2022 counts the zeros too
    assert size_report(m, "dcase2022")["n_params"] == 300_000 + 4 * 64


def test_mcdonnell_one_bit_golden_486_69_kb_bn_excluded():
    r = size_report(Marked(3_987_000, "binary"), "dcase2020")
    assert r["size_bytes"] == 498_375
    assert r["size_kb"] == 486.69
    assert any("batch norm" in g["reason"] for g in r["not_counted"])


def test_int8_counts_one_byte_not_two():
    """The official script once counted int8 as 2 bytes; 500 KB holds 512,000 int8 values."""
    m = nn.Module()
    m.register_buffer("weight", torch.ones(512_000, dtype=torch.int8))
    m.tensor_roles = {"weight": "weight"}
    r = size_report(m, "dcase2020")
    assert r["size_bytes"] == 512_000
    assert r["within_limit"]
    assert r["rows"][0]["bits"] == 8


def test_scales_and_masks_reported_separately():
    m = nn.Module()
    m.register_buffer("weight", torch.ones(10, dtype=torch.int8))
    m.register_buffer("weight_scale", torch.ones(10))
    m.register_buffer("weight_mask", torch.ones(10))
    m.tensor_roles = {"weight": "weight", "weight_scale": "scale"}
    r = size_report(m, "dcase2020")
    assert r["n_params"] == 10 and r["size_bytes"] == 10
    reasons = {g["reason"]: g for g in r["not_counted"]}
    assert reasons["quantisation scale (reported separately)"]["size_bytes"] == 40
    assert reasons["pruning mask (reported separately)"]["n_values"] == 10


def test_unknown_dtype_fails():
    m = nn.Module()
    m.weight = nn.Parameter(torch.ones(3, dtype=torch.complex64))
    with pytest.raises(UserError, match="unknown dtype"):
        size_report(m)


def test_unknown_policy_fails():
    with pytest.raises(UserError, match="unknown size policy 'dcase1999'"):
        size_report(HandBaseline(), "dcase1999")


def test_later_policies_on_the_baseline():
    model = _nonzero(HandBaseline())
    r21 = size_report(model, "dcase2021")
    assert r21["n_params"] == 115_603 and r21["size_bytes"] == 115_603 * 4
    assert not r21["within_limit"]  # 451.57 KB > 128 KB
    r22 = size_report(model, "dcase2022", input_shape=(1, 40, 500))
    assert r22["macs"] == 111_654_700
    assert not r22["within_limit"] and any("MACs" in f for f in r22["limit_failures"])
    r24 = size_report(model, "dcase2024", input_shape=(1, 40, 500))
    assert r24["limit_bytes"] == 128_000 and r24["size_bytes"] == 462_412
    rm = size_report(model, "micronet", input_shape=(1, 40, 500))["micronet"]
    assert rm["storage_params"] == pytest.approx(115_603)
    assert rm["ops"] == 2 * 111_654_700
    assert rm["score"] == pytest.approx(115_603 / 36.5e6 + 2 * 111_654_700 / 10.49e9)
    assert set(POLICIES) == {"dcase2020", "dcase2021", "dcase2022", "dcase2024", "micronet"}


def test_micronet_charges_a_mask_bit_for_sparse_tensors():
    m = Marked(3200, "float32")
    with torch.no_grad():
        m.weight[:3000] = 0
    storage = size_report(m, "micronet")["micronet"]["storage_params"]
    # values + mask; fresh batch norm: weight and running_var dense (ones), bias and mean all zero (mask only)
    assert storage == pytest.approx(200 + 3200 / 32 + 64 + 64 + 2 + 2)


@pytest.mark.parametrize("model_fn", [HandBaseline, lambda: build_model("dcase2020_baseline")])
def test_macs_match_flop_counter_to_the_last_digit(model_fn):
    model = model_fn().eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 1, 40, 500))
    macs = count_macs(model, (1, 40, 500))
    assert 2 * macs["macs"] == counter.get_total_flops()
    assert macs["macs"] == 40 * 500 * 32 * 49 + 8 * 100 * 64 * 32 * 49 + 128 * 100 + 100 * 3


def test_grouped_conv_macs():
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=4))
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 8, 10, 12))
    assert 2 * count_macs(model, (8, 10, 12))["macs"] == counter.get_total_flops() == 2 * 10 * 12 * 16 * 2 * 9


def test_table_names_every_tensor_and_what_is_not_counted():
    report = size_report(_nonzero(HandBaseline()))
    table = format_size_table(report)
    for r in report["rows"]:
        assert r["name"] in table
    assert "Param" in table and "NZ Param" in table and "NZ Size" in table
    assert "450.07 KB" in table
    assert "Not counted: batch norm (not counted by dcase2020): 8 tensors, 384 values" in table
