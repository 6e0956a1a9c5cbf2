"""Optimisers, learning-rate schedules (warm-up, cosine, warm restarts, linear decay), SWA and batch-norm re-estimation.

The learning rate is a pure function of the optimisation step (`lr_factor`), applied every
mini-batch through `torch.optim.lr_scheduler.LambdaLR`, so a scheduler's state is one integer and
resuming is exact. Published schedules:
- Koutini (CP-JKU): Adam lr 1e-4, constant for 50 epochs, then linear decay over the next 200
  epochs (`linear`, decay_start_epoch 50, decay_epochs 200), SWA from epoch 250 every 3 epochs.
- Hu: SGD momentum 0.9, lr 0.1, cosine warm restarts with periods of 2, 4, 8, 16, ... epochs
  (`warm_restarts`, restart_epochs 2, restart_mult 2), min lr 1e-4 x max.
- McDonnell: SGD momentum 0.9, lr 0.025, warm restarts at epochs 1, 11, 31, 71, 151 (periods 10, 20,
  40, 80, 160: restart_epochs 10, restart_mult 2), min lr 1e-4 x max.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn
from torch.optim.swa_utils import AveragedModel

SCHEDULES = ("constant", "cosine", "warm_restarts", "linear")


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """'adam' | 'adamw' (decoupled weight decay) | 'sgd' (momentum, optional Nesterov)."""
    params = [p for p in params if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov and momentum > 0)
    raise ValueError(f"unknown optimizer '{name}' (adam, adamw, sgd)")


def lr_factor(
    step: int,
    *,
    steps_per_epoch: int,
    total_epochs: int,
    schedule: str = "constant",
    warmup_epochs: float = 0.0,
    min_factor: float = 0.0,
    restart_epochs: float = 10.0,
    restart_mult: float = 2.0,
    decay_start_epoch: float = 0.0,
    decay_epochs: float | None = None,
) -> float:
    """Multiplier of the base learning rate at optimisation `step` (0-based, one per mini-batch).

    - warm-up: linear from 1/steps to 1 over `warmup_epochs`, then the schedule runs on the rest.
    - constant: 1.
    - cosine: half a cosine from 1 down to `min_factor` over the epochs after warm-up.
    - warm_restarts (SGDR, Loshchilov & Hutter): cosine from 1 to min_factor over `restart_epochs`,
      then restart with the period multiplied by `restart_mult`.
    - linear: 1 until `decay_start_epoch`, then linear down to `min_factor` over `decay_epochs`
      (default: until the last epoch), then min_factor.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{schedule}' ({', '.join(SCHEDULES)})")
    epoch = step / max(steps_per_epoch, 1)  # fractional epochs done
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return (step + 1) / (warmup_epochs * steps_per_epoch)
    t = epoch - warmup_epochs
    span = max(total_epochs - warmup_epochs, 1e-12)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(t / span, 1.0)))
    if schedule == "warm_restarts":
        period = restart_epochs
        while t >= period:
            t -= period
            period *= restart_mult
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t / period))
    # linear
    length = decay_epochs if decay_epochs is not None else max(total_epochs - decay_start_epoch, 1e-12)
    if t < decay_start_epoch:
        return 1.0
    return max(min_factor, 1.0 - (1.0 - min_factor) * (t - decay_start_epoch) / length)


def make_scheduler(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR; its state (last_epoch = steps done) is all a checkpoint needs."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class SWA:
    """Stochastic weight averaging (Izmailov et al. 2018) via torch.optim.swa_utils.

    From epoch `start_epoch` on, every `every` epochs the weights are added to an equal-weight
    running average; `finish(model, batches)` copies them into `model` and recomputes its batch-norm
    statistics on training batches (`reestimate_batchnorm`).
    """

    def __init__(self, model: torch.nn.Module, start_epoch: int, every: int = 1):
        if start_epoch < 1 or every < 1:
            raise ValueError("SWA start_epoch and every must be >= 1")
        self.start_epoch, self.every = start_epoch, every
        self.averaged = AveragedModel(model)

    def due(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and (epoch - self.start_epoch) % self.every == 0

    def update(self, model: torch.nn.Module, epoch: int) -> bool:
        """Average in the current weights if `epoch` (1-based) is an averaging epoch."""
        if not self.due(epoch):
            return False
        self.averaged.update_parameters(model)
        return True

    @property
    def n_averaged(self) -> int:
        return int(self.averaged.n_averaged)

    @torch.no_grad()
    def finish(self, model: torch.nn.Module, batches: Iterable[torch.Tensor]) -> None:
        """Load the averaged weights into `model` and recompute its batch-norm statistics on `batches`."""
        if self.n_averaged == 0:
            return
        model.load_state_dict(self.averaged.module.state_dict())
        reestimate_batchnorm(model, batches)

    def state_dict(self) -> dict:
        return self.averaged.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.averaged.load_state_dict(state)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set every batch norm's running mean/var to the average over `batches` (other layers in eval mode,
    so dropout does not shake the statistics); returns the number of batch-norm layers updated.

    Batches of one example are skipped (a batch norm cannot normalise a single value per channel).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return 0
    was_training = model.training
    model.eval()
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all batches
        bn.train()
    device = next(model.parameters()).device
    for x in batches:
        if len(x) > 1:
            model(x.to(device))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.train(was_training)
    return len(bns)
