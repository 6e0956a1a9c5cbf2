"""The training loop: seeded batch plans, augmentation, per-batch schedules, mixed precision; best epoch by validation accuracy.

`fit(model, bundle, cfg, seed=...)` trains in place. Every random choice of an epoch (batch order,
augmentation) comes from generators seeded by (seed, epoch) or (seed, epoch, batch, position), and
the only other random state (torch's global generator, used by dropout) is saved in the checkpoint,
so a run resumed from `<out_dir>/last.pt` ends with exactly the numbers of an uninterrupted run. Under torchrun, every rank
computes the same global batch plan, reads and augments only its share of each batch, and
DistributedDataParallel averages the gradients, so results match a single process up to float
rounding (batch-norm statistics are per rank on CPU: SyncBatchNorm needs CUDA).

One epoch:

    for each global batch (shuffled or class-balanced, sampling.py):
        x, y = this rank's share, read and augmented ahead in worker processes (feed.py):
               time crop -> time roll -> L/R swap -> level shift -> SpecAugment per example -> mixup
        loss = loss_fn(logits, y, idx) or soft cross-entropy with label smoothing
        step the optimiser (train.precision: precision.py), then the per-batch lr schedule, then hooks' after_step
    validate (macro accuracy, log loss), keep the best weights (best_epoch.py), write last.pt
    (checkpoint.py) and history.json
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from dcase_effdl.config import TrainConfig
from dcase_effdl.data.bundle import DataBundle
from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_write
from dcase_effdl.metrics import compute_metrics
from dcase_effdl.training import augment, distributed, precision, sampling, schedules
from dcase_effdl.training.feed import Feed
from dcase_effdl.training.best_epoch import BestEpoch
from dcase_effdl.training.checkpoint import Checkpoint, run_identity
from dcase_effdl.training.options import check_loss


@dataclass(frozen=True)
class FineTune:
    """What one call of `fit` changes from the recipe's train settings (a compression step's fine-tuning).

    `loss_fn(logits, y, idx)` may look up per-sample data by `idx` (indices into bundle.x_train);
    with mixup, y holds soft labels and the loss must say it takes them (`accepts_soft_targets`).
    `hooks` have any of on_epoch_start(epoch, model), after_step(model), on_epoch_end(epoch, model).
    `eligible(epoch)` says which epochs the best-epoch choice may pick (None: every epoch).
    """

    epochs: int | None = None  # None: train.epochs
    lr: float | None = None  # None: train.lr
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    hooks: tuple = ()
    eligible: Callable[[int], bool] | None = None


@dataclass
class History:
    """Per-epoch numbers: {epoch, train_loss, val_loss, val_accuracy (macro %), lr, seconds, ...}."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    swa: dict | None = None  # {n_averaged, val_accuracy, val_loss} when SWA replaced the best epoch

    def to_json(self) -> dict:
        return {"best_epoch": self.best_epoch, "epochs": self.epochs, **({"swa": self.swa} if self.swa is not None else {})}

    state_dict = to_json

    def load_state_dict(self, state: dict) -> None:
        self.epochs, self.best_epoch, self.swa = state["epochs"], state["best_epoch"], state.get("swa")


def seed_everything(seed: int) -> None:
    """Seed every generator the loop touches, so the same recipe and seed give the same numbers."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, epochs: int, steps_per_epoch: int):
    factor = partial(
        schedules.lr_factor, steps_per_epoch=steps_per_epoch, total_epochs=epochs, schedule=cfg.schedule,
        warmup_epochs=cfg.warmup_epochs, min_factor=cfg.min_lr_ratio, restart_epochs=cfg.restart_epochs,
        restart_mult=cfg.restart_mult, decay_start_epoch=cfg.decay_start_epoch, decay_epochs=cfg.decay_epochs,
    )  # fmt: skip
    return schedules.make_scheduler(optimizer, factor)


def batch_plan(bundle: DataBundle, cfg: TrainConfig, seed: int, epoch: int) -> list[torch.Tensor]:
    """The epoch's global mini-batches (index tensors into bundle.x_train); a function of (seed, epoch)."""
    if cfg.balanced_batches:
        return sampling.balanced_batches(bundle.y_train, cfg.batch_size, seed, epoch)
    return sampling.shuffled_batches(len(bundle.x_train), cfg.batch_size, seed, epoch)


# Without a batch size, prediction batches hold at most this much float32 input (and 256 rows): 52
# clips of the 2020 baseline's 1 x 40 x 501, 4 of a 2 x 256 x 431 front end. The activations set the
# memory, not the inputs: measured, the peak RSS of a quickstart run rose 100 MB (2.8 MB per clip,
# 35x its input) when its test split grew from 12 to 48 clips predicted in one batch. The pipeline
# predicts train.batch_size rows at a time: a training step already holds more for that many.
PREDICT_BATCH_BYTES = 4 * 1024**2


def predict_rows(x) -> int:
    """Rows per prediction batch for inputs like `x` (a tensor or `data.bundle.Features`)."""
    example_bytes = 4 * int(np.prod(tuple(x.shape[1:]), dtype=np.int64))
    return int(min(256, max(1, PREDICT_BATCH_BYTES // max(example_bytes, 1))))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, x: torch.Tensor, batch_size: int | None = None, rows: slice | None = None) -> torch.Tensor:
    """Logits (N, n_classes) as float32 on the CPU, computed in eval mode on the model's device, in batches
    of `batch_size` rows (None: `predict_rows(x)`), each read from `x` only when it is reached; only the
    `rows` of `x` when given."""
    model.eval()
    params = next(model.parameters(), None)
    device = params.device if params is not None else torch.device("cpu")
    batch_size = batch_size or predict_rows(x)
    start, stop, _ = (rows or slice(None)).indices(len(x))
    out = [model(x[i : min(i + batch_size, stop)].to(device)).float().cpu() for i in range(start, stop, batch_size)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
    """Class probabilities (N, n_classes) as float64."""
    return torch.softmax(predict_logits(model, x, batch_size), dim=1).double().numpy()


def validate(model: torch.nn.Module, bundle: DataBundle, batch_size: int | None = None) -> tuple[float, float]:
    """(macro accuracy %, log loss) on the validation split (NaN without one), `batch_size` rows at a time.

    Under torchrun each rank predicts its shard of the split with rank 0's batch-norm statistics and
    every rank gets the whole split's numbers, so all ranks choose the same best epoch.
    """
    n = len(bundle.x_val)
    if n == 0:
        return float("nan"), float("nan")
    ctx = distributed.current()
    distributed.broadcast_buffers(model, ctx)
    logits = predict_logits(model, bundle.x_val, batch_size, distributed.shard(n, ctx))
    logits = distributed.gather_rows(logits.reshape(-1, bundle.n_classes), n, ctx)
    probs = torch.softmax(logits, dim=1).double().numpy()
    m = compute_metrics(bundle.y_val.numpy(), probs, bundle.classes)
    return m["accuracy"], m["log_loss"]


def augment_example(x: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """The recipe's per-example augmentations of one example (1, C, F, T), drawn from its own generator (keyed by
    seed, epoch, batch and position: feed.py); mixup, batch-level, is the feed's last step."""
    if cfg.time_crop:
        x = augment.time_crop(x, cfg.time_crop, g)
    if cfg.time_roll:
        x = augment.time_roll(x, cfg.time_roll, g)
    if cfg.channel_swap:
        x = augment.channel_swap(x, g)
    if cfg.level_shift:
        x = augment.level_shift(x, cfg.level_shift, g)
    if cfg.filter_augment is not None:
        x = augment.filter_augment(x, cfg.filter_augment.max_gain, cfg.filter_augment.n_bands, g, cfg.filter_augment.linear)
    if cfg.freq_shift:
        x = augment.freq_shift(x, cfg.freq_shift, g)
    if cfg.spec_augment is not None:
        s = cfg.spec_augment
        x = augment.spec_augment(x, g, s.freq_mask, s.time_mask, s.n_freq_masks, s.n_time_masks)
    return x


def _call(hooks, name: str, *args) -> None:
    for hook in hooks:
        if hasattr(hook, name):
            getattr(hook, name)(*args)


def fit(model: torch.nn.Module, bundle: DataBundle, cfg: TrainConfig, *, seed: int, tune: FineTune = FineTune(),
        out_dir: str | Path | None = None, desc: str = "train", resume: bool = False, run_hash: str | None = None) -> History:
    """Train `model` in place on `bundle.x_train` and return its History (the model ends on the CPU, in eval mode).

    The weights of the best eligible epoch (validation macro accuracy, ties: lower loss) are
    restored at the end; with SWA the averaged weights are the result. With `out_dir`, `last.pt`
    and `history.json` are written there every epoch and `resume=True` continues from `last.pt`;
    `run_hash` (the recipe's hash) makes another run's checkpoint a refused one.
    """
    epochs = cfg.epochs if tune.epochs is None else tune.epochs
    lr = cfg.lr if tune.lr is None else tune.lr
    check_loss(cfg, tune.loss_fn, desc)
    ctx = distributed.current()
    if ctx.active and cfg.batch_size < ctx.world_size:
        raise UserError(f"train.batch_size {cfg.batch_size} is smaller than the {ctx.world_size} processes sharing each batch")
    device = distributed.resolve_device(cfg.device, ctx.local_rank)
    prec = precision.resolve(cfg.precision, device)
    seed_everything(seed)
    write = out_dir is not None and ctx.is_main
    checkpoint = Checkpoint(Path(out_dir) / "last.pt", run_identity(model, replace(cfg, precision=prec.name), seed, epochs, lr, tune.eligible is None, run_hash)) \
        if out_dir is not None else None  # fmt: skip

    model.to(device, memory_format=precision.MEMORY_FORMAT)
    train_model = distributed.wrap(model, device)
    train_model = torch.compile(train_model) if cfg.compile else train_model
    optimizer = schedules.make_optimizer(model.parameters(), cfg.optimizer, lr, cfg.weight_decay, cfg.momentum, cfg.nesterov)
    scheduler = make_scheduler(optimizer, cfg, epochs, len(batch_plan(bundle, cfg, seed, 1)))
    scaler = prec.scaler()
    swa = schedules.SWA(model, cfg.swa.start_epoch, cfg.swa.every) if cfg.swa is not None else None
    best, history = BestEpoch(tune.eligible), History()
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler, "swa": swa, "best": best,
             "history": history}
    loss_of = tune.loss_fn or (lambda logits, y, idx: augment.soft_cross_entropy(logits, y, cfg.label_smoothing))
    start_epoch = 1
    if resume and checkpoint is not None and checkpoint.path.is_file():
        start_epoch = checkpoint.resume(parts, device) + 1
        if ctx.is_main:
            tqdm.write(f"[{desc}] resuming from {checkpoint.path} after epoch {start_epoch - 1}")
    elif resume and write:
        tqdm.write(f"[{desc}] no checkpoint in {out_dir}: starting from epoch 1")

    feed = Feed(bundle.x_train, bundle.y_train, partial(batch_plan, bundle, cfg, seed), seed=seed, rank=ctx.rank,
                world_size=ctx.world_size, mixup_alpha=cfg.mixup_alpha, n_classes=bundle.n_classes,
                augment_example=partial(augment_example, cfg=cfg), workers=cfg.loader_workers,
                pin_memory=device.type == "cuda")
    bar = tqdm(range(start_epoch, epochs + 1), desc=desc, unit="epoch", disable=None if ctx.is_main else True, leave=False)
    for epoch in bar:
        start, data_seconds = time.perf_counter(), 0.0
        _call(tune.hooks, "on_epoch_start", epoch, model)
        train_model.train()
        total, count = torch.zeros((), dtype=torch.float64), 0
        for x, y, idx_local, global_size in feed.epoch(epoch):
            t0 = time.perf_counter()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            data_seconds += time.perf_counter() - t0
            with prec.autocast():
                logits = train_model(x.contiguous(memory_format=precision.MEMORY_FORMAT))
            loss = loss_of(logits.float(), y, idx_local)
            # DDP averages gradients over ranks; weigh each rank's mean by its share of the global batch.
            scale = len(idx_local) * ctx.world_size / global_size if ctx.active else 1.0
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * scale).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            _call(tune.hooks, "after_step", model)
            total += loss.detach().double().cpu() * len(idx_local)
            count += len(idx_local)
        train_seconds, data_seconds = time.perf_counter() - start, data_seconds + feed.seconds
        if ctx.active:
            sums = torch.tensor([float(total), float(count)], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
            dist.all_reduce(sums)
            total, count = sums.cpu()
        total, count = float(total), int(count)
        _call(tune.hooks, "on_epoch_end", epoch, model)
        if swa is not None:
            swa.update(model, epoch)
        val_accuracy, val_loss = validate(model, bundle, cfg.batch_size)
        history.epochs.append({
            "epoch": epoch, "train_loss": total / max(count, 1), "val_loss": val_loss, "val_accuracy": val_accuracy,
            "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - start,
            "train_seconds": train_seconds,  # the mini-batch loop (no validation)
            "data_seconds": data_seconds,  # of which: waiting for the feed, copies to the device
        })  # fmt: skip
        if best.update(epoch, val_accuracy, val_loss, model):
            history.best_epoch = epoch
        bar.set_postfix(loss=f"{history.epochs[-1]['train_loss']:.3f}", val_acc=f"{val_accuracy:.1f}")
        if write:
            checkpoint.save(epoch, parts, device)
            atomic_write(Path(out_dir) / "history.json", json.dumps(history.to_json(), indent=1))

    if swa is not None and swa.n_averaged > 0:
        # The averaged weights need batch-norm statistics of their own: one pass over the training set.
        # Under torchrun each rank reads every world_size-th batch and the statistics are merged.
        batches = sampling.shuffled_batches(len(bundle.x_train), cfg.batch_size, seed, 0)[ctx.rank :: ctx.world_size]
        swa.finish(model, (bundle.x_train[i] for i in batches))
        distributed.merge_batchnorm(model, ctx)
        val_accuracy, val_loss = validate(model, bundle, cfg.batch_size)
        history.swa = {"n_averaged": swa.n_averaged, "val_accuracy": val_accuracy, "val_loss": val_loss}
        history.best_epoch = epochs
    elif best.restore(model) is None:
        history.best_epoch = epochs
    if write:
        atomic_write(Path(out_dir) / "history.json", json.dumps(history.to_json(), indent=1))
    distributed.unwrap(model)
    model.to("cpu", memory_format=torch.contiguous_format).eval()
    return history
