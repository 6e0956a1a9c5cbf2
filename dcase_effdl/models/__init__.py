"""Model families by name: a frozen `ModelSpec` (family, typed knobs, data shape) whose `build()` makes the network.

A family module registers a config dataclass of its knobs (range checks in `__post_init__`) and its
network through a `config.Registry`, as compression methods do:

    @register("digits_cnn", SmallCNNConfig)
    class SmallCNN(nn.Module):
        def __init__(self, cfg, *, n_classes, in_channels, n_mels, n_frames): ...

The network checks what depends on the data shape (an input too small for the pooling). Inputs
are (batch, in_channels, n_mels, n_frames); the network returns logits.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from typing import Any, Callable

import torch.nn as nn

from dcase_effdl.config import Registry, to_dict
from dcase_effdl.errors import UserError


Family = namedtuple("Family", "name config_cls build")  # build(cfg, *, n_classes, in_channels, n_mels, n_frames)
FAMILIES = Registry("model", [
    "dcase_effdl.models.baseline", "dcase_effdl.models.small_cnn", "dcase_effdl.models.cp_resnet",
    "dcase_effdl.models.preact_resnet", "dcase_effdl.models.mobilenet",
], key_word="parameter")


def register(name: str, config_cls: type) -> Callable:
    """Decorator binding the network class (or builder) of family `name` to its knobs' dataclass."""
    return lambda build: FAMILIES.add(Family(name, config_cls, build)).build


def available() -> list[str]:
    return FAMILIES.names()


def model_params(name: str, params: Any = None, source: str | None = None, keypath: str = "") -> Any:
    """Family `name`'s typed knobs from a mapping (or an already typed config, returned as is)."""
    family = FAMILIES.get(name, source or "")
    if isinstance(params, family.config_cls):
        return params
    return FAMILIES.parse(name, dict(params or {}), source or f"model '{name}'", keypath)


@dataclass(frozen=True)
class ModelSpec:
    """Everything that rebuilds a float network: family, typed knobs and the data's shape."""

    family: str
    params: Any  # the family's config dataclass
    n_classes: int
    in_channels: int
    n_mels: int
    n_frames: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.n_mels, self.n_frames)

    def build(self) -> nn.Module:
        family = FAMILIES.get(self.family)
        return family.build(self.params, n_classes=self.n_classes, in_channels=self.in_channels,
                            n_mels=self.n_mels, n_frames=self.n_frames)

    def to_dict(self) -> dict:
        """Plain data, as variant files store it (`name` is the family)."""
        return {"name": self.family, "params": to_dict(self.params), "n_classes": self.n_classes,
                "in_channels": self.in_channels, "n_mels": self.n_mels, "n_frames": self.n_frames}

    @classmethod
    def from_dict(cls, data: dict, source: str = "model_spec") -> "ModelSpec":
        try:
            shape = [data[k] for k in ("n_classes", "in_channels", "n_mels", "n_frames")]
            name = data["name"]
        except (KeyError, TypeError) as exc:
            raise UserError(f"{source}: model_spec lacks {exc}") from None
        return cls(name, model_params(name, data.get("params"), source, "model_spec.params"), *shape)


def build_model(name: str, params: Any = None, *, n_classes: int = 3, in_channels: int = 1, n_mels: int = 40,
                n_frames: int = 500) -> nn.Module:
    """Build family `name` with knobs `params` for inputs shaped (batch, in_channels, n_mels, n_frames)."""
    return ModelSpec(name, model_params(name, params), n_classes, in_channels, n_mels, n_frames).build()
