"""Fine-tuning only (float32 stays float32): the control that gives a float32 row the extra epochs a compression step trains.

    {method: finetune, epochs: 10, lr: 0.0005}

Pruning, 1-bit weights and quantization-aware training fine-tune the parent for some epochs with
the recipe's train settings; part of what they then score comes from that extra training, not from
the compression (README, ambient3: the 2020 baseline CNN's 1-bit row scored 10.5 pp above its
float32 parent after 10 extra epochs). A variant made of this one step trains the float32 parent for the
same epochs with the same schedule, learning rate and augmentation (fit with `FineTune(epochs, lr)`,
the best validation epoch kept), so that a compressed row is compared with a float32 row that had
the same training.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.nn as nn

from dcase_effdl.compress.registry import StepConfig, register_method
from dcase_effdl.compress.storage import require_not
from dcase_effdl.training.loop import FineTune


@dataclass
class FinetuneConfig(StepConfig):
    epochs: int = 10  # fine-tuning epochs from the trained model, with the recipe's train settings
    lr: Optional[float] = None  # None: the recipe's train.lr

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def describe(self) -> str:
        return f"float32, fine-tuned {self.epochs} more epochs"


@register_method("finetune", FinetuneConfig, label="fine-tuned float32")
def apply_finetune(model: nn.Module, cfg: FinetuneConfig, ctx) -> nn.Module:
    # Training latent weights of another format would undo that step's rounding: fine-tune float models only.
    require_not(model, {"int8", "uint8", "binary", "float16", "bfloat16"}, cfg.where, "finetune")
    ctx.need_fine_tune(cfg.where, "finetune")(model, FineTune(cfg.epochs, cfg.lr))
    return model
