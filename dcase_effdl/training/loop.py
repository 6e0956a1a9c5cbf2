"""The training loop: seeded batch plans, augmentation, schedules, checkpoints, AMP and DDP; best epoch by validation accuracy.

`fit(model, bundle, cfg, seed=...)` trains in place. Every random choice of an epoch (batch order,
augmentation) comes from generators seeded by (seed, epoch), and the only other random state (torch's
global generator, used by dropout) is saved in the checkpoint, so a run resumed from
`<out_dir>/last.pt` ends with exactly the numbers of an uninterrupted run. Under torchrun, every rank
computes the same global batch plan and augmentation, takes its share of each batch, and
DistributedDataParallel averages the gradients, so results match a single process up to float
rounding (batch-norm statistics are per rank on CPU: SyncBatchNorm needs CUDA).

One epoch:

    for each global batch (shuffled or class-balanced, sampling.py):
        x, y = training examples; augment: time crop -> time roll -> L/R swap -> SpecAugment -> mixup
        loss = loss_fn(logits, y, idx) or soft cross-entropy with label smoothing
        step the optimiser (AMP on CUDA), then the per-batch lr schedule, then hooks' after_step
    validate (macro accuracy, log loss), keep the best weights, write last.pt and history.json
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from dcase_effdl.training import augment, sampling, schedules
from dcase_effdl.config import TrainConfig, to_dict
from dcase_effdl.data.bundle import DataBundle
from dcase_effdl.training.distributed import current, resolve_device
from dcase_effdl.errors import UserError
from dcase_effdl.metrics import compute_metrics

CHECKPOINT_FORMAT = "dcase_effdl.training.loop/1"
# Settings that change neither the numbers nor the plan: a run may resume with other values.
NOT_HASHED = ("num_workers", "threads")


@dataclass
class History:
    """Per-epoch numbers: {epoch, train_loss, val_loss, val_accuracy (macro %), lr, seconds, ...}."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    swa: dict | None = None  # {n_averaged, val_accuracy, val_loss} when SWA replaced the best epoch

    def to_json(self) -> dict:
        out = {"best_epoch": self.best_epoch, "epochs": self.epochs}
        if self.swa is not None:
            out["swa"] = self.swa
        return out


@dataclass(frozen=True)
class FineTune:
    """What one call of `fit` changes from the recipe's train settings (a compression step's fine-tuning).

    `loss_fn(logits, y, idx)` may look up per-sample data by `idx` (indices into bundle.x_train);
    with mixup, y holds soft labels and the loss must say it takes them (`accepts_soft_targets`).
    `hooks` have any of on_epoch_start(epoch, model), after_step(model), on_epoch_end(epoch, model).
    """

    epochs: int | None = None  # None: train.epochs
    lr: float | None = None  # None: train.lr
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    hooks: tuple = ()
    select_best: bool = True  # restore the best validation epoch (False: keep the last one)


def seed_everything(seed: int) -> None:
    """Seed every generator the loop touches, so the same recipe and seed give the same numbers."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    return schedules.make_optimizer(model.parameters(), cfg.optimizer, lr, cfg.weight_decay, cfg.momentum, cfg.nesterov)


def batch_plan(bundle: DataBundle, cfg: TrainConfig, seed: int, epoch: int) -> list[torch.Tensor]:
    """The epoch's global mini-batches (index tensors into bundle.x_train); a function of (seed, epoch)."""
    if cfg.balanced_batches:
        return sampling.balanced_batches(bundle.y_train, cfg.batch_size, seed, epoch)
    return sampling.shuffled_batches(len(bundle.x_train), cfg.batch_size, seed, epoch)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, n_classes) as float64, computed in eval mode on the model's device."""
    model.eval()
    params = next(model.parameters(), None)
    device = params.device if params is not None else torch.device("cpu")
    out = [torch.softmax(model(x[i : i + batch_size].to(device)).float(), dim=1).cpu() for i in range(0, len(x), batch_size)]
    if not out:
        return np.zeros((0, 0))
    return torch.cat(out).double().numpy()


def _call(hooks: Iterable, name: str, *args) -> None:
    for hook in hooks:
        fn = getattr(hook, name, None)
        if fn is not None:
            fn(*args)


def _validate(model, bundle: DataBundle) -> tuple[float, float]:
    """(macro accuracy %, log loss) on the validation split."""
    if len(bundle.x_val) == 0:
        return float("nan"), float("nan")
    probs = predict(model, bundle.x_val)
    m = compute_metrics(bundle.y_val.numpy(), probs, bundle.classes)
    return m["accuracy"], m["log_loss"]


# ---------------------------------------------------------------- augmentation


def check_options(cfg: TrainConfig, input_shape: tuple[int, int, int]) -> None:
    """Refuse options the features' shape (channels, mels, frames) cannot serve (one line each; ranges are
    checked when the recipe loads)."""
    channels, mels, frames = input_shape
    if cfg.channel_swap and channels % 2:
        raise UserError(
            f"train.channel_swap needs stereo features (an even channel count), but the features have {channels} "
            "channel(s); use a stereo feature definition or set channel_swap: false"
        )
    if cfg.time_crop and not 0 < cfg.time_crop <= frames:
        raise UserError(f"train.time_crop = {cfg.time_crop} frames, but the features have {frames} frames")
    frames = cfg.time_crop or frames  # what the later augmentations see
    for key, value, limit, unit in (("time_roll", cfg.time_roll, frames, "frames"),
                                    ("spec_augment.time_mask", cfg.spec_augment and cfg.spec_augment.time_mask, frames, "frames"),
                                    ("spec_augment.freq_mask", cfg.spec_augment and cfg.spec_augment.freq_mask, mels, "mel bands")):
        if value and value > limit:
            raise UserError(f"train.{key} = {value} is more than the {limit} {unit} of a training input")


def check_loss(cfg: TrainConfig, loss_fn, where: str) -> None:
    """Mixup makes soft labels: a custom loss must say it takes them (`loss_fn.accepts_soft_targets`)."""
    if cfg.mixup_alpha > 0 and loss_fn is not None and not getattr(loss_fn, "accepts_soft_targets", False):
        raise UserError(
            f"{where}: train.mixup_alpha = {cfg.mixup_alpha} needs a loss that takes soft (mixed) labels, but this training "
            f"uses {getattr(loss_fn, '__name__', type(loss_fn).__name__)}, which takes class indices; set mixup_alpha: 0"
        )


def check_crop(model: torch.nn.Module, cfg: TrainConfig, input_shape: tuple[int, int, int]) -> None:
    """Training on crops and validating on whole clips needs a model that takes any length."""
    c, f, t = input_shape
    if not cfg.time_crop:
        return
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(2, c, f, cfg.time_crop, device=next(model.parameters()).device))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"train.time_crop = {cfg.time_crop} frames: this model cannot take {cfg.time_crop}-frame inputs "
            f"(it was built for {t}; {first}); use a fully convolutional model or set time_crop: 0"
        ) from None
    finally:
        model.train(was_training)


def augment_batch(x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, n_classes: int, g: torch.Generator):
    """The recipe's augmentations on one global batch; returns (x, targets: class indices or soft labels)."""
    if cfg.time_crop:
        x = augment.time_crop(x, cfg.time_crop, g)
    if cfg.time_roll:
        x = augment.time_roll(x, cfg.time_roll, g)
    if cfg.channel_swap:
        x = augment.channel_swap(x, g)
    if cfg.spec_augment is not None:
        s = cfg.spec_augment
        x = augment.spec_augment(x, g, s.freq_mask, s.time_mask, s.n_freq_masks, s.n_time_masks)
    if cfg.mixup_alpha > 0:
        x, y, _ = augment.mixup(x, y, cfg.mixup_alpha, n_classes, g)
    return x, y


# ---------------------------------------------------------------- checkpoints


def run_identity(model: torch.nn.Module, cfg: TrainConfig, seed: int, epochs: int, lr: float, select_best: bool, run_hash: str | None) -> str:
    """Hash of everything that determines the training numbers: a checkpoint only resumes the same run."""
    train = {k: v for k, v in to_dict(cfg).items() if k not in NOT_HASHED}
    arch = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    payload = {"train": train, "seed": seed, "epochs": epochs, "lr": lr, "select_best": select_best, "arch": arch, "run": run_hash}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _atomic_torch_save(obj, path: Path) -> None:
    """Write to a temporary file, flush it to disk, then rename: a kill leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, identity: str) -> dict:
    """Read last.pt (weights_only: no code runs); a truncated file or another run's file is a UserError."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, ...: all mean "unreadable"
        raise UserError(f"{path}: truncated or unreadable checkpoint ({type(exc).__name__}); delete it to start over") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a dcase-effdl training checkpoint; delete it to start over")
    if ckpt.get("identity") != identity:
        raise UserError(
            f"{path}: checkpoint of another recipe or model (run hash {ckpt.get('identity')}, this run {identity}); "
            "resume with the recipe that wrote it, or delete it to start over"
        )
    return ckpt


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# ---------------------------------------------------------------- the loop


def _revert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm (used for multi-GPU training) back to BatchNorm2d with the same state."""
    if isinstance(module, torch.nn.SyncBatchNorm):
        bn = torch.nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        return bn.to(next(module.buffers()).device) if list(module.buffers()) else bn
    for name, child in module.named_children():
        setattr(module, name, _revert_sync_batchnorm(child))
    return module


def fit(
    model: torch.nn.Module,
    bundle: DataBundle,
    cfg: TrainConfig,
    *,
    seed: int,
    tune: FineTune = FineTune(),
    out_dir: str | Path | None = None,
    desc: str = "train",
    resume: bool = False,
    run_hash: str | None = None,
) -> History:
    """Train `model` in place on `bundle.x_train` and return its History (the model ends on the CPU, in eval mode).

    Mini-batches are (x, y, idx) with idx indexing bundle.x_train, so a `loss_fn(logits, y, idx)`
    can look up per-sample data (e.g. cached teacher outputs); with mixup, y holds soft labels and
    the loss must say so (`loss_fn.accepts_soft_targets = True`). With `select_best`, the weights of
    the epoch with the best validation macro accuracy (ties: lower validation loss) are restored at
    the end; compression steps whose last epoch matters (gradual pruning) pass False. With SWA the
    averaged weights are the result. With `out_dir`, `last.pt` (atomic, every epoch) and
    `history.json` are written there, and `resume=True` continues from `last.pt`; `run_hash`
    identifies the run (e.g. the recipe's hash), so another run's checkpoint is refused.
    """
    epochs = cfg.epochs if tune.epochs is None else tune.epochs
    lr = cfg.lr if tune.lr is None else tune.lr
    hooks, loss_fn, select_best = list(tune.hooks), tune.loss_fn, tune.select_best
    check_loss(cfg, loss_fn, desc)
    ctx = current()
    ddp = ctx.active
    if ddp and cfg.batch_size < ctx.world_size:
        raise UserError(f"train.batch_size {cfg.batch_size} is smaller than the {ctx.world_size} processes sharing each batch")
    device = resolve_device(cfg.device, ctx.local_rank)
    use_amp = cfg.amp and device.type == "cuda"
    seed_everything(seed)
    out_dir = Path(out_dir) if out_dir is not None else None
    checkpoint = out_dir / "last.pt" if out_dir is not None else None
    identity = run_identity(model, cfg, seed, epochs, lr, select_best, run_hash)

    model.to(device)
    train_model = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, cfg, lr)
    steps_per_epoch = len(batch_plan(bundle, cfg, seed, 1))
    factor = partial(
        schedules.lr_factor, steps_per_epoch=steps_per_epoch, total_epochs=epochs, schedule=cfg.schedule,
        warmup_epochs=cfg.warmup_epochs, min_factor=cfg.min_lr_ratio, restart_epochs=cfg.restart_epochs,
        restart_mult=cfg.restart_mult, decay_start_epoch=cfg.decay_start_epoch, decay_epochs=cfg.decay_epochs,
    )  # fmt: skip
    scheduler = schedules.make_scheduler(optimizer, factor)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    swa = schedules.SWA(model, cfg.swa.start_epoch, cfg.swa.every) if cfg.swa is not None else None

    history = History()
    best_key, best_state, start_epoch = None, None, 1
    if resume and checkpoint is not None and checkpoint.is_file():
        ckpt = load_checkpoint(checkpoint, identity)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        if swa is not None and ckpt.get("swa") is not None:
            swa.load_state_dict(ckpt["swa"])
        saved = json.loads(ckpt["history"])
        history.epochs, history.best_epoch = saved["epochs"], saved["best_epoch"]
        best_key = tuple(ckpt["best_key"]) if ckpt.get("best_key") is not None else None
        best_state = ckpt.get("best_state")
        _set_rng_state(ckpt["rng"], device)
        start_epoch = int(ckpt["epoch"]) + 1
        if ctx.is_main:
            tqdm.write(f"[{desc}] resuming from {checkpoint} after epoch {ckpt['epoch']}")
    elif resume and checkpoint is not None and ctx.is_main:
        tqdm.write(f"[{desc}] no checkpoint in {out_dir}: starting from epoch 1")
    if out_dir is not None and ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)

    def loss_of(logits, target, idx):
        if loss_fn is not None:
            return loss_fn(logits, target, idx)
        return augment.soft_cross_entropy(logits.float(), target, cfg.label_smoothing)

    bar = tqdm(range(start_epoch, epochs + 1), desc=desc, unit="epoch", disable=None if ctx.is_main else True, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        data_seconds = 0.0
        _call(hooks, "on_epoch_start", epoch, model)
        train_model.train()
        aug_gen = sampling.epoch_generator(seed, epoch, stream=1)
        total, count = torch.zeros((), dtype=torch.float64), 0
        for idx in batch_plan(bundle, cfg, seed, epoch):
            t0 = time.perf_counter()
            x, y = augment_batch(bundle.x_train[idx], bundle.y_train[idx], cfg, bundle.n_classes, aug_gen)
            local = slice(None)
            if ddp:
                local = slice(ctx.rank, None, ctx.world_size)
            x, y, idx_local = x[local].to(device, non_blocking=True), y[local].to(device, non_blocking=True), idx[local]
            data_seconds += time.perf_counter() - t0
            with torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext():
                logits = train_model(x)
            loss = loss_of(logits.float(), y, idx_local)
            # DDP averages gradients over ranks; weigh each rank's mean by its share of the global batch.
            scale = len(idx_local) * ctx.world_size / len(idx) if ddp else 1.0
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss * scale).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            _call(hooks, "after_step", model)
            total += loss.detach().double().cpu() * len(idx_local)
            count += len(idx_local)
        train_seconds = time.perf_counter() - start
        if ddp:
            sums = torch.tensor([float(total), float(count)], dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
            dist.all_reduce(sums)
            total, count = sums[0].cpu(), int(sums[1].item())
        _call(hooks, "on_epoch_end", epoch, model)
        if swa is not None:
            swa.update(model, epoch)
        val_accuracy, val_loss = _validate(model, bundle)
        row = {
            "epoch": epoch,
            "train_loss": float(total) / max(count, 1),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
            "train_seconds": train_seconds,  # the mini-batch loop (no validation)
            "data_seconds": data_seconds,  # of which: indexing, augmentation, copies to the device
        }
        history.epochs.append(row)
        key = (float(np.nan_to_num(val_accuracy, nan=-1.0)), float(-np.nan_to_num(val_loss, nan=np.inf)))
        if best_key is None or key > best_key:
            best_key, history.best_epoch = key, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{val_accuracy:.1f}")
        if out_dir is not None and ctx.is_main:
            _atomic_torch_save(
                {
                    "format": CHECKPOINT_FORMAT, "identity": identity, "epoch": epoch,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                    "swa": swa.state_dict() if swa is not None else None,
                    "best_state": best_state, "best_key": list(best_key),
                    "history": json.dumps(history.to_json()), "rng": _rng_state(device),
                },
                checkpoint,
            )  # fmt: skip
            (out_dir / "history.json").write_text(json.dumps(history.to_json(), indent=1))

    if swa is not None and swa.n_averaged > 0:
        # The averaged weights need batch-norm statistics of their own: one pass over the training set.
        swa.finish(model, [bundle.x_train[i].to(device) for i in sampling.shuffled_batches(len(bundle.x_train), cfg.batch_size, seed, 0)])
        val_accuracy, val_loss = _validate(model, bundle)
        history.swa = {"n_averaged": swa.n_averaged, "val_accuracy": val_accuracy, "val_loss": val_loss}
        history.best_epoch = epochs
    elif select_best and best_state is not None:
        model.load_state_dict(best_state)
    else:
        history.best_epoch = epochs
    if out_dir is not None and ctx.is_main:
        (out_dir / "history.json").write_text(json.dumps(history.to_json(), indent=1))
    if ddp and device.type == "cuda":
        _revert_sync_batchnorm(model)
    model.to("cpu")
    model.eval()
    return history
