"""Model families by name: `build_model(name, params, ...)`; one module per family.

A family registers a builder with `@register("name")`. Builders take the family's knobs as keyword
arguments (from `model.params` in a recipe) plus the data-dependent shape arguments below, so that
unknown knobs fail with the family's own TypeError turned into a clear message.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import torch.nn as nn

from dcase_effdl.errors import UserError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}

# Family modules imported on first use (no work at import time of the package).
_FAMILY_MODULES = ["dcase_effdl.models.baseline", "dcase_effdl.models.small_cnn",
                   "dcase_effdl.models.cp_resnet", "dcase_effdl.models.preact_resnet", "dcase_effdl.models.mobilenet"]


def register(name: str):
    def deco(fn: Callable[..., nn.Module]):
        _BUILDERS[name] = fn
        return fn

    return deco


def _load_families() -> None:
    for module in _FAMILY_MODULES:
        importlib.import_module(module)


def available() -> list[str]:
    _load_families()
    return sorted(_BUILDERS)


def build_model(
    name: str,
    params: dict[str, Any] | None = None,
    *,
    n_classes: int = 3,
    in_channels: int = 1,
    n_mels: int = 40,
    n_frames: int = 500,
) -> nn.Module:
    """Build family `name` with knobs `params` for inputs shaped (batch, in_channels, n_mels, n_frames)."""
    _load_families()
    if name not in _BUILDERS:
        raise UserError(f"unknown model '{name}' (known: {', '.join(sorted(_BUILDERS))})")
    builder = _BUILDERS[name]
    params = dict(params or {})
    accepted = inspect.signature(builder).parameters
    for key in params:
        if key not in accepted or key in ("n_classes", "in_channels", "n_mels", "n_frames"):
            knobs = [k for k in accepted if k not in ("n_classes", "in_channels", "n_mels", "n_frames")]
            raise UserError(f"model '{name}': unknown parameter '{key}' (knobs: {', '.join(knobs)})")
    return builder(n_classes=n_classes, in_channels=in_channels, n_mels=n_mels, n_frames=n_frames, **params)
