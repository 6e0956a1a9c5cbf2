"""The training loop: mini-batches from a DataBundle, best epoch by validation macro accuracy."""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dcase_effdl.config import TrainConfig
from dcase_effdl.data_bundle import DataBundle
from dcase_effdl.metrics import compute_metrics


@dataclass
class History:
    """Per-epoch numbers: {epoch, train_loss, val_loss, val_accuracy (macro %), lr, seconds}."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None

    def to_json(self) -> dict:
        return {"best_epoch": self.best_epoch, "epochs": self.epochs}


def seed_everything(seed: int) -> None:
    """Seed every generator the loop touches, so the same recipe and seed give the same numbers."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; a trailing batch of one joins the previous one (batch norm needs 2)."""
    perm = torch.randperm(n, generator=generator)
    chunks = list(torch.split(perm, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks[-2] = torch.cat([chunks[-2], chunks.pop()])
    return chunks


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, n_classes) as float64, computed in eval mode."""
    model.eval()
    out = [torch.softmax(model(x[i : i + batch_size]).float(), dim=1) for i in range(0, len(x), batch_size)]
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


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def fit(
    model: torch.nn.Module,
    bundle: DataBundle,
    cfg: TrainConfig,
    *,
    seed: int,
    epochs: int | None = None,
    lr: float | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    hooks: Iterable = (),
    out_dir: str | Path | None = None,
    desc: str = "train",
    select_best: bool = True,
) -> History:
    """Train `model` in place on `bundle.x_train` and return its History.

    Mini-batches are (x, y, idx) with idx indexing bundle.x_train, so a `loss_fn(logits, y, idx)`
    can look up per-sample data (e.g. cached teacher outputs). With `select_best`, the weights of
    the epoch with the best validation macro accuracy (ties: lower validation loss) are restored at
    the end; compression steps whose last epoch matters (gradual pruning) pass False.
    """
    epochs = cfg.epochs if epochs is None else epochs
    lr = cfg.lr if lr is None else lr
    hooks = list(hooks)
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(model, cfg, lr)
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)

    history = History()
    best_key, best_state = None, None
    bar = tqdm(range(1, epochs + 1), desc=desc, unit="epoch", disable=None, leave=False)
    for epoch in bar:
        start = time.perf_counter()
        _call(hooks, "on_epoch_start", epoch, model)
        model.train()
        total, count = 0.0, 0
        for idx in batches(len(bundle.x_train), cfg.batch_size, generator):
            x, y = bundle.x_train[idx], bundle.y_train[idx]
            logits = model(x)
            loss = loss_fn(logits, y, idx) if loss_fn is not None else F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _call(hooks, "after_step", model)
            total += loss.item() * len(idx)
            count += len(idx)
        _call(hooks, "on_epoch_end", epoch, model)
        val_accuracy, val_loss = _validate(model, bundle)
        row = {
            "epoch": epoch,
            "train_loss": total / max(count, 1),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
        }
        history.epochs.append(row)
        key = (np.nan_to_num(val_accuracy, nan=-1.0), -np.nan_to_num(val_loss, nan=np.inf))
        if best_key is None or key > best_key:
            best_key, best_state, history.best_epoch = key, copy.deepcopy(model.state_dict()), epoch
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{val_accuracy:.1f}")
        if out_dir is not None:
            _atomic_torch_save({"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict()}, out_dir / "last.pt")
            (out_dir / "history.json").write_text(json.dumps(history.to_json(), indent=1))
    if select_best and best_state is not None:
        model.load_state_dict(best_state)
    else:
        history.best_epoch = epochs
    if out_dir is not None:
        (out_dir / "history.json").write_text(json.dumps(history.to_json(), indent=1))
    model.eval()
    return history
