"""float16 storage: weights and biases rounded to float16 and stored as such; computed in float32.

CPUs compute float16 convolutions no faster than float32 (benchmarks/int8_latency.py, float16 row:
as slow as eager float32 on an AVX-512-FP16 Xeon, 2x slower than BN-folded float32), so the module
keeps float32 tensors holding float16-exact values (the variant file stores them as float16, 2 bytes each, and loading upcasts
them back: predictions reproduce exactly). Batch norm stays float32 (the 2020 rule does not count it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from dcase_effdl.compress.registry import StepConfig, register_method
from dcase_effdl.compress.storage import PARAMETER_ROLES, require_not, stored_tensors
from dcase_effdl.errors import UserError


@dataclass
class Float16Config(StepConfig):
    batch_norm: bool = False  # also store batch-norm tensors in float16


def _targets(model: nn.Module, cfg: Float16Config) -> list[tuple[nn.Module, str]]:
    roles = PARAMETER_ROLES + (("bn",) if cfg.batch_norm else ())
    modules = dict(model.named_modules())
    out = []
    for t in stored_tensors(model):
        if t.role in roles and t.format == "float32":
            owner_name, _, local = t.name.rpartition(".")
            out.append((modules.get(owner_name, model), local))
    return out


def _mark(module: nn.Module, local: str) -> None:
    formats = dict(getattr(module, "storage_formats", None) or {})
    formats[local] = "float16"
    module.storage_formats = formats


@register_method("float16", Float16Config, label="float16", rebuild=lambda model, cfg, meta: _rebuild(model, cfg))
def apply_float16(model: nn.Module, cfg: Float16Config, ctx) -> nn.Module:
    require_not(model, {"int8", "uint8", "binary", "bool"}, cfg.where, "float16")
    with torch.no_grad():
        for module, local in _targets(model, cfg):
            tensor = getattr(module, local)
            half = tensor.to(torch.float16)
            if not torch.isfinite(half).all() and torch.isfinite(tensor).all():
                raise UserError(f"{cfg.where}: float16: values of '{local}' in {type(module).__name__} overflow float16 (|x| > 65504)")
            tensor.copy_(half.to(tensor.dtype))
            _mark(module, local)
    return model


def _rebuild(model: nn.Module, cfg: Float16Config) -> nn.Module:
    for module, local in _targets(model, cfg):
        _mark(module, local)
    return model
