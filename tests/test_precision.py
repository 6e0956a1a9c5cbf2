"""train.precision: what auto resolves to from the CPU flags, one-line errors, a bf16 training run; the thread policy."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from dcase_effdl.config import Recipe, TrainConfig, from_dict
from dcase_effdl.errors import UserError
from dcase_effdl.machine import physical_cores, training_threads
from dcase_effdl.training import precision
from dcase_effdl.training.loop import fit
from train_helpers import tiny_bundle, tiny_model, one_thread  # noqa: F401 (autouse)

CPU = torch.device("cpu")
# /proc/cpuinfo flags as machine.cpu() filters them: a Sapphire Rapids (AMX) and an AVX2-only CPU.
AMX_FLAGS = "amx_bf16 amx_int8 amx_tile avx2 avx512_bf16 avx512_vnni avx512bw avx512f avx_vnni"
AVX2_FLAGS = "avx2"


def test_auto_is_bf16_only_with_native_bf16_flags():
    assert precision.resolve("auto", CPU, AMX_FLAGS) == precision.Precision("bf16", "cpu")
    assert precision.resolve("auto", CPU, "avx2 avx512_bf16 avx512f").name == "bf16"  # Cooper Lake: no AMX
    assert precision.resolve("auto", CPU, AVX2_FLAGS).name == "fp32"
    assert precision.resolve("auto", CPU, "avx2 avx512f avx512_vnni").name == "fp32"  # VNNI is int8, not bf16
    assert precision.resolve("fp32", CPU, AMX_FLAGS).name == "fp32"  # explicit settings never change
    assert precision.resolve("bf16", CPU, AVX2_FLAGS).name == "bf16"


def test_fp16_on_cpu_and_bad_values_are_one_line_errors_naming_the_key():
    with pytest.raises(UserError, match=r"^train\.precision: fp16 trains on CUDA GPUs only.*use bf16, fp32 or auto$"):
        precision.resolve("fp16", CPU, AMX_FLAGS)
    with pytest.raises(UserError) as exc:
        from_dict(Recipe, {"name": "r", "train": {"precision": "fp8"}}, "r.yaml")
    assert str(exc.value) == "r.yaml: train.precision: expected one of ['auto', 'fp32', 'bf16', 'fp16'], got 'fp8'"


def test_old_amp_key_names_its_replacement():
    with pytest.raises(UserError, match=r"^r\.yaml: train\.amp was replaced by train\.precision: amp: true .* precision: fp32$"):
        from_dict(Recipe, {"name": "r", "train": {"amp": True}}, "r.yaml")


def test_autocast_and_scaler_follow_the_precision():
    conv = torch.nn.Conv2d(2, 4, 3)
    x = torch.randn(2, 2, 8, 8)
    with precision.Precision("bf16", "cpu").autocast():
        assert conv(x).dtype == torch.bfloat16
    with precision.Precision("fp32", "cpu").autocast():
        assert conv(x).dtype == torch.float32
    assert not precision.Precision("bf16", "cpu").scaler().is_enabled()  # bf16 has float32's exponent range


def test_bf16_training_learns_and_leaves_float32_contiguous_weights():
    """bf16 autocast + channels_last: the tiny task is still learnt, and the weights come back as float32
    in the standard layout, which safetensors needs."""
    bundle = tiny_bundle()
    model = tiny_model()
    cfg = TrainConfig(epochs=6, batch_size=8, lr=3e-3, device="cpu", precision="bf16")
    history = fit(model, bundle, cfg, seed=0)
    losses = [row["train_loss"] for row in history.epochs]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.7 * losses[0], losses
    assert max(row["val_accuracy"] for row in history.epochs) > 60  # chance: 33 %
    for name, tensor in model.state_dict().items():
        assert tensor.is_contiguous(), name
        assert not tensor.is_floating_point() or tensor.dtype == torch.float32, name
    save(model.state_dict())  # refuses non-contiguous tensors


def test_threads_default_to_physical_cores_shared_among_local_processes(monkeypatch):
    cores = physical_cores()
    assert 1 <= cores <= torch.multiprocessing.cpu_count()
    assert training_threads(3) == 3
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert training_threads(0) == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 2))
    assert training_threads(0) == 1
