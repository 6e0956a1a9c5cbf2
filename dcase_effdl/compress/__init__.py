"""Compression as a list of steps: `parse_steps` at recipe load, `apply_steps` -> `Variant`, `load_variant`.

    steps = parse_steps([{"method": "int8"}], "recipes/int8.yaml: variants[1].compress")
    variant = apply_steps(model, steps, CompressContext(bundle=bundle, train=recipe.train, model_spec=spec, size_policy="dcase2020"))
    variant.save("runs/x/int8/model.safetensors")
    same = load_variant("runs/x/int8/model.safetensors")   # same predictions

Methods live in their own modules and register a config dataclass + handler (see `registry`).
"""

from dcase_effdl.compress.apply import CompressContext, apply_steps
from dcase_effdl.compress.registry import (
    StepConfig,
    available_methods,
    get_method,
    parse_step,
    parse_steps,
    register_method,
)
from dcase_effdl.compress.storage import StoredTensor, precisions, require_not, stored_tensors
from dcase_effdl.compress.variant import Variant, load_variant

__all__ = [
    "CompressContext",
    "StepConfig",
    "StoredTensor",
    "Variant",
    "apply_steps",
    "available_methods",
    "get_method",
    "load_variant",
    "parse_step",
    "parse_steps",
    "precisions",
    "register_method",
    "require_not",
    "stored_tensors",
]
