"""The best training epoch: highest validation macro accuracy (ties: lower validation loss) among the eligible ones."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch


class BestEpoch:
    """Keeps the weights of the best epoch so far; `eligible(epoch)` says which epochs may be chosen
    (gradual pruning: only those at the full target sparsity). No validation data: no epoch is best."""

    def __init__(self, eligible: Callable[[int], bool] | None = None):
        self.eligible = eligible or (lambda epoch: True)
        self.epoch: int | None = None
        self.key: tuple[float, float] | None = None
        self.weights: dict | None = None

    def update(self, epoch: int, val_accuracy: float, val_loss: float, model: torch.nn.Module) -> bool:
        """Remember `model`'s weights if `epoch` is eligible and better than the best so far."""
        if not self.eligible(epoch) or np.isnan(val_accuracy):
            return False
        key = (float(val_accuracy), -float(np.nan_to_num(val_loss, nan=np.inf)))
        if self.key is not None and key <= self.key:
            return False
        self.epoch, self.key = epoch, key
        self.weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return True

    def restore(self, model: torch.nn.Module) -> int | None:
        """Load the best epoch's weights into `model`; returns that epoch (None: nothing to restore)."""
        if self.weights is not None:
            model.load_state_dict(self.weights)
        return self.epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "key": list(self.key) if self.key else None, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.weights = state["epoch"], state["weights"]
        self.key = tuple(state["key"]) if state["key"] is not None else None
