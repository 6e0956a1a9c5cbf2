"""Compression methods by name: a config dataclass per method bound to its handler (torchao style).

A method module registers itself with

    @dataclass
    class Float16Config(StepConfig):
        ...                                     # the method's knobs, checked by from_dict

    @register_method("float16", Float16Config, label="float16", rebuild=rebuild_fn)
    def apply_float16(model, cfg, ctx) -> nn.Module | tuple[nn.Module, dict]:
        ...

`apply` does the work (it may use calibration data or fine-tuning from `ctx`) and returns the
model, or `(model, meta)` where `meta` is JSON data that `rebuild(model, cfg, meta) -> nn.Module`
needs to recreate the same module structure from a freshly built float model without any data
(the variant file's tensors are then loaded into it). Steps that do not change the structure pass
`rebuild=None`. Method modules are imported on first use: add yours to `METHOD_MODULES`. Model
families register the same way (`config.Registry`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch.nn as nn

from dcase_effdl.config import Registry
from dcase_effdl.errors import UserError

# Imported on first use (no work at import time of the package).
METHOD_MODULES = [
    "dcase_effdl.compress.float16",
    "dcase_effdl.compress.int8",
    "dcase_effdl.compress.prune",
    "dcase_effdl.compress.binary",
    "dcase_effdl.compress.distill",
    "dcase_effdl.compress.factorize",
    "dcase_effdl.compress.finetune",
]


@dataclass
class StepConfig:
    """Base of every method's config. `where` names the step in messages (set by `parse_steps`)."""

    method: ClassVar[str] = ""
    where: str = field(default="compress", init=False, repr=False, compare=False)

    def describe(self) -> str | None:
        """Leaderboard text for this step when it depends on the knobs; None: the method's label."""
        return None

    def to_dict(self) -> dict:
        """Plain data as written in a recipe: {'method': name, knob: value, ...}."""
        data = {"method": self.method}
        for f in dataclasses.fields(self):
            if f.init:
                data[f.name] = getattr(self, f.name)
        return data


@dataclass
class Method:
    name: str
    config_cls: type
    apply: Callable[..., Any]
    label: str  # text for the leaderboard's complexity management column
    rebuild: Callable[..., nn.Module] | None = None


METHODS = Registry("compression method", METHOD_MODULES)


def register_method(name: str, config_cls: type, *, label: str | None = None, rebuild=None):
    """Decorator binding `config_cls` (a StepConfig subclass) and its handler to method `name`."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, StepConfig)):
        raise TypeError(f"method '{name}': config class must subclass StepConfig")

    def deco(fn):
        config_cls.method = name
        METHODS.add(Method(name, config_cls, fn, label or name, rebuild))
        return fn

    return deco


def available_methods() -> list[str]:
    return METHODS.names()


def get_method(name: str) -> Method:
    return METHODS.get(name)


def parse_step(data: Any, where: str) -> StepConfig:
    """One step {'method': NAME, knob: value} -> its config; problems are UserErrors naming `where`."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping like {{method: float16}}, got {data!r}")
    if "method" not in data:
        raise UserError(f"{where}: missing key 'method' (known methods: {', '.join(available_methods())})")
    knobs = {k: v for k, v in data.items() if k != "method"}
    source, _, keypath = where.partition(": ")
    cfg = METHODS.parse(data["method"], knobs, source, keypath, where=where)
    cfg.where = where
    return cfg


def parse_steps(steps: list, source: str) -> list[StepConfig]:
    """A variant's `compress:` list -> configs. `source` prefixes messages, e.g.
    'recipes/int8.yaml: variants[1].compress' -> 'recipes/int8.yaml: variants[1].compress[0]: ...'."""
    if steps is None:
        return []
    if not isinstance(steps, list):
        raise UserError(f"{source}: expected a list of steps, got {steps!r}")
    return [parse_step(step, f"{source}[{j}]") for j, step in enumerate(steps)]
