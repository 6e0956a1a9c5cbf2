"""Apply a variant's compression steps in order to a copy of the trained model, logging size each step."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from dcase_effdl.compress.registry import StepConfig, get_method
from dcase_effdl.compress.variant import Variant
from dcase_effdl.config import TrainConfig
from dcase_effdl.data.bundle import DataBundle
from dcase_effdl.errors import UserError
from dcase_effdl.models import ModelSpec
from dcase_effdl.training.loop import FineTune, History, fit
from dcase_effdl.training.options import check_loss


@dataclass(kw_only=True)
class CompressContext:
    """What a step may use: data for calibration, fine-tuning with the recipe's train settings, a seed,
    a log and a work folder. `model_spec` rebuilds the float architecture; `size_policy` rules the
    per-step size log and `Variant.history`; `name` labels the fine-tuning progress bar. A `dry_run`
    context checks fine-tuning settings but trains nothing."""

    size_policy: str
    bundle: DataBundle | None = None
    train: TrainConfig | None = None
    model_spec: ModelSpec | None = None
    seed: int = 0
    log: Callable[[str], None] = field(default=lambda message: None)
    work_dir: Path | None = None
    parent_dir: Path | None = None
    name: str = "variant"
    dry_run: bool = False

    def need_data(self, where: str, what: str) -> DataBundle:
        if self.bundle is None or len(self.bundle.x_train) == 0:
            raise UserError(f"{where}: {what} needs training data (no data bundle was given)")
        return self.bundle

    def need_fine_tune(self, where: str, what: str) -> Callable[[nn.Module, FineTune], History]:
        if self.train is None:
            raise UserError(f"{where}: {what} needs fine-tuning, which this context does not offer")
        self.need_data(where, what)
        if self.dry_run:
            return lambda model, tune: check_loss(self.train, tune.loss_fn, where) or History()
        return self.fine_tune

    def fine_tune(self, model: nn.Module, tune: FineTune) -> History:
        """Train `model` in place on `bundle.x_train` with the recipe's train settings, changed by `tune`."""
        return fit(model, self.bundle, self.train, seed=self.seed, tune=tune, desc=f"fine-tune {self.name}")


def apply_steps(model: nn.Module, steps: list[StepConfig], ctx: CompressContext) -> Variant:
    """Deep-copy `model` (the parent is shared by all variants) and apply `steps` in order."""
    from dcase_effdl.compress.size import size_report

    module = copy.deepcopy(model).eval()
    history, metas = [], []
    before = size_report(module, policy=ctx.size_policy)
    for j, cfg in enumerate(steps):
        method = get_method(cfg.method)
        torch.manual_seed(ctx.seed + j)  # same recipe + seed = same numbers, whatever ran before
        start = time.perf_counter()
        result = method.apply(module, cfg, ctx)
        module, meta = result if isinstance(result, tuple) else (result, {})
        module.eval()
        after = size_report(module, policy=ctx.size_policy)
        entry = {
            "step": j,
            "method": cfg.method,
            "policy": ctx.size_policy,
            "size_bytes_before": before["size_bytes"],
            "size_bytes_after": after["size_bytes"],
            "n_nonzero_before": before["n_nonzero"],
            "n_nonzero_after": after["n_nonzero"],
            "seconds": round(time.perf_counter() - start, 3),
        }
        history.append(entry)
        metas.append(meta)
        ctx.log(
            f"{cfg.method}: {before['size_kb']:.2f} KB -> {after['size_kb']:.2f} KB "
            f"({after['n_nonzero']:,} non-zero of {after['n_params']:,}, {ctx.size_policy})"
        )
        before = after
    return Variant(module, list(steps), ctx.model_spec, metas, history)


def dry_run(model: nn.Module, steps: list[StepConfig], spec: ModelSpec, size_policy: str, train: TrainConfig) -> None:
    """Apply `steps` to a copy of `model` on four random inputs of the data's shape, training nothing: their
    order (int8 after binary), the layers they pick, pruning targets, teachers and fine-tuning settings fail here."""
    x = torch.randn(4, *spec.input_shape)
    y = torch.arange(4) % spec.n_classes
    bundle = DataBundle([str(c) for c in range(spec.n_classes)], x, y, x, y, x, y, ["dry-run"] * 4)
    apply_steps(model, steps, CompressContext(bundle=bundle, train=train, model_spec=spec, size_policy=size_policy, dry_run=True))
