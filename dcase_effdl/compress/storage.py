"""Which tensors a model stores, in which storage format (bits per value) and in which role.

Every entry of `module.state_dict()` is one stored tensor. Its format defaults to its dtype
('float32', 'float16', 'int8', ...); a module that stores a tensor in another format than the one
it computes with declares it in a plain dict attribute, e.g. after the float16 step
`conv.storage_formats = {'weight': 'float16', 'bias': 'float16'}` (values are float16-exact while
the module computes in float32), or a 1-bit layer `{'weight': 'binary'}` (values must be +-1, stored
packed, 1 bit each). Roles say what a size policy counts: 'weight', 'bias' (parameters), 'bn' (batch
norm weight, bias and running statistics), 'scale' / 'zero_point' (quantisation parameters), 'mask'
(pruning masks), 'buffer' (anything else, e.g. a batch-norm step counter). A module can override
roles with `tensor_roles = {'weight_scale': 'scale'}`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from dcase_effdl.errors import UserError

# Bits per stored value of each storage format.
FORMAT_BITS = {
    "float64": 64,
    "float32": 32,
    "float16": 16,
    "bfloat16": 16,
    "int64": 64,
    "int32": 32,
    "int16": 16,
    "int8": 8,
    "uint8": 8,
    "binary": 1,  # +-1 values packed 8 per byte
    "bool": 1,  # 0/1 values packed 8 per byte
}

DTYPE_FORMATS = {
    torch.float64: "float64",
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
}

PARAMETER_ROLES = ("weight", "bias")
ROLES = ("weight", "bias", "bn", "scale", "zero_point", "mask", "buffer")


@dataclass
class StoredTensor:
    name: str  # state_dict key
    tensor: torch.Tensor
    format: str  # key of FORMAT_BITS
    role: str  # one of ROLES
    module_type: str  # class name of the owning module

    @property
    def bits(self) -> int:
        return FORMAT_BITS[self.format]


def _default_role(module: nn.Module, local: str, is_param: bool) -> str:
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return "bn" if local in ("weight", "bias", "running_mean", "running_var") else "buffer"
    if local.endswith("_mask"):  # torch.nn.utils.prune
        return "mask"
    if is_param:
        return "bias" if local == "bias" or local.endswith("_bias") else "weight"
    return "buffer"


def stored_tensors(module: nn.Module) -> list[StoredTensor]:
    """One entry per state_dict tensor; an unknown dtype or format is an error, never a guess."""
    out = []
    modules = dict(module.named_modules())
    param_ids = {id(p) for p in module.parameters()}
    for name, tensor in module.state_dict(keep_vars=True).items():
        owner_name, _, local = name.rpartition(".")
        owner = modules.get(owner_name, module)
        formats = getattr(owner, "storage_formats", None) or {}
        roles = getattr(owner, "tensor_roles", None) or {}
        fmt = formats.get(local)
        if fmt is None:
            fmt = DTYPE_FORMATS.get(tensor.dtype)
            if fmt is None:
                raise UserError(f"tensor '{name}': unknown dtype {tensor.dtype} (known: {', '.join(FORMAT_BITS)})")
        if fmt not in FORMAT_BITS:
            raise UserError(f"tensor '{name}': unknown storage format '{fmt}' (known: {', '.join(FORMAT_BITS)})")
        role = roles.get(local) or _default_role(owner, local, id(tensor) in param_ids)
        if role not in ROLES:
            raise UserError(f"tensor '{name}': unknown role '{role}' (known: {', '.join(ROLES)})")
        out.append(StoredTensor(name, tensor.detach(), fmt, role, type(owner).__name__))
    return out


def format_map(module: nn.Module) -> dict[str, str]:
    """state_dict key -> storage format."""
    return {t.name: t.format for t in stored_tensors(module)}


def precisions(module: nn.Module) -> set[str]:
    """Storage formats of the model's weights (e.g. {'float32'}, {'float16'}, {'int8'}, {'binary', 'float32'})."""
    return {t.format for t in stored_tensors(module) if t.role == "weight"}


def require_not(module: nn.Module, formats: set[str], where: str, what: str) -> None:
    """Refuse a step on a model whose weights are already stored in one of `formats`."""
    for t in stored_tensors(module):
        if t.role == "weight" and t.format in formats:
            raise UserError(f"{where}: {what} cannot apply to a model whose weights are already {t.format} ({t.name})")
