"""Knowledge distillation: fine-tune the model on a teacher's temperature-softened outputs plus the labels.

Recipe step:

    {method: distill, teacher: runs/big, temperature: 4, alpha: 0.9, epochs: 20}
    {method: distill, teacher: [runs/seed0, runs/seed1, runs/seed2]}            # ensemble of runs
    {method: distill, teacher: {model: dcase2020_baseline, params: {conv_filters: [64, 128]}, epochs: 30}}

A teacher is a run folder (its `float32/model.safetensors` variant), a variant folder or file, a
list of those (an ensemble: their softened probabilities are averaged), or a bigger network trained
inline on the same data (`{model, params, epochs, lr}`, trained with the recipe's train settings).
Loss (Hinton et al. 2015):

    alpha * T^2 * KL(p_teacher,T || p_student,T) + (1 - alpha) * cross-entropy(student, labels)

with p_T = softmax(logits / T); T^2 keeps the soft-target gradients on the scale of the hard ones.
Teacher logits on the training inputs are computed once and cached as .npy in
`ctx.work_dir/teacher_logits/`, keyed by a hash of the teacher (file bytes, or the inline
definition, seed and the run's train settings) and of the training data: a change to either
recomputes them. Exact zeros in the student's weights (an earlier pruning step) stay zero.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dcase_effdl.compress.registry import StepConfig, register_method
from dcase_effdl.compress.storage import require_not
from dcase_effdl.compress.surgery import weight_layers
from dcase_effdl.errors import UserError
from dcase_effdl.rundir import RunDir, VariantDir
from dcase_effdl.training.loop import FineTune, predict_logits

INLINE_KEYS = {"model", "params", "epochs", "lr"}


def kd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE; `teacher_probs` already softened at T."""
    log_p = F.log_softmax(student_logits / temperature, dim=1)
    kl = F.kl_div(log_p, teacher_probs, reduction="batchmean")
    return alpha * temperature**2 * kl + (1.0 - alpha) * F.cross_entropy(student_logits, y)


def soft_targets(teacher_logits: list[torch.Tensor], temperature: float) -> torch.Tensor:
    """Mean over teachers of softmax(logits / T): (N, n_classes)."""
    return torch.stack([torch.softmax(z / temperature, dim=1) for z in teacher_logits]).mean(dim=0)


def data_digest(*tensors) -> str:
    """sha256 of the tensors' shapes and bytes (what the teacher outputs depend on); tensors or `Features`,
    read 256 rows at a time (the same digest as hashing the whole tensor: sha256 is a stream)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{np.dtype(str(t.dtype).removeprefix('torch.'))}{tuple(t.shape)}".encode())
        for start in range(0, len(t), 256):
            h.update(memoryview(t[start : start + 256].detach().cpu().contiguous().numpy()).cast("B"))
    return h.hexdigest()


def resolve_teacher_file(entry: str, where: str) -> Path:
    """A variant file, a variant folder (model.safetensors) or a run folder (float32/model.safetensors)."""
    path = Path(entry)
    for candidate in (path, VariantDir(path).model_path, RunDir(path).variant("float32").model_path):
        if candidate.is_file():
            return candidate
    raise UserError(f"{where}: teacher '{entry}' is not a variant file, variant folder or run folder with float32/model.safetensors")


class KeepZeros:
    """fit() hook: weights that were exactly zero (pruned) before fine-tuning stay zero."""

    def __init__(self, model: nn.Module):
        self.masks = {n: m.weight.detach() != 0 for n, m in weight_layers(model) if bool((m.weight == 0).any())}

    @torch.no_grad()
    def after_step(self, model: nn.Module) -> None:
        for name, keep in self.masks.items():
            model.get_submodule(name).weight.mul_(keep)


@dataclass
class DistillConfig(StepConfig):
    teacher: Any = None  # RUNDIR | [RUNDIR, ...] | {model: NAME, params: {...}, epochs: N, lr: X}
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the distillation term; 1 - alpha weighs the label loss
    epochs: int = 10  # student fine-tuning epochs
    lr: Optional[float] = None  # student learning rate (None: the recipe's train.lr)

    def __post_init__(self):
        t = self.teacher
        if isinstance(t, str):
            pass
        elif isinstance(t, list):
            if not t or not all(isinstance(e, str) for e in t):
                raise ValueError(f"teacher: expected a non-empty list of run folders, got {t!r}")
        elif isinstance(t, dict):
            unknown = set(t) - INLINE_KEYS
            if unknown:
                raise ValueError(f"teacher: unknown key '{sorted(unknown)[0]}' (known: {', '.join(sorted(INLINE_KEYS))})")
            if not isinstance(t.get("model"), str):
                raise ValueError("teacher: an inline teacher needs 'model' (a model name)")
            if not isinstance(t.get("epochs"), int) or isinstance(t.get("epochs"), bool) or t["epochs"] < 1:
                raise ValueError(f"teacher: an inline teacher needs 'epochs' >= 1, got {t.get('epochs')!r}")
            if not isinstance(t.get("params", {}), dict):
                raise ValueError(f"teacher.params: expected a mapping, got {t.get('params')!r}")
            if t.get("lr") is not None and not isinstance(t["lr"], (int, float)):
                raise ValueError(f"teacher.lr: expected a number, got {t['lr']!r}")
        else:
            raise ValueError(f"teacher: expected a run folder, a list of run folders or {{model, params, epochs}}, got {t!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


def _cached(ctx, key: str, compute) -> tuple[torch.Tensor, bool]:
    """Teacher logits from `work_dir/teacher_logits/<key>.npy`, computing and writing them on a miss."""
    if ctx.work_dir is None:
        return compute(), False
    path = Path(ctx.work_dir) / "teacher_logits" / f"{key}.npy"
    if path.is_file():
        try:
            return torch.from_numpy(np.load(path, allow_pickle=False)), True
        except (ValueError, OSError):
            pass  # a damaged cache file is recomputed
    logits = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, logits.numpy(), allow_pickle=False)
    tmp.replace(path)
    return logits, False


def teacher_logits(cfg: DistillConfig, ctx) -> list[torch.Tensor]:
    """Logits (N_train, n_classes) of each teacher on ctx.bundle.x_train, cached by content."""
    from dcase_effdl.compress.variant import load_variant
    from dcase_effdl.models import ModelSpec, model_params

    bundle = ctx.need_data(cfg.where, "distillation")
    x = bundle.x_train
    data_key = data_digest(x)
    out = []
    if isinstance(cfg.teacher, dict):
        spec = ctx.model_spec
        if spec is None:
            raise UserError(f"{cfg.where}: an inline teacher needs the model spec (input shape, classes)")
        t = cfg.teacher
        # The train settings behind `fine_tune` are not in the key: the pipeline's work_dir lies in a run
        # folder, whose config hash (train section included) refuses a run with other settings.
        ident = {"inline": t, "seed": ctx.seed, "shape": [spec.n_classes, *spec.input_shape],
                 "val": data_digest(bundle.x_val, bundle.y_val, bundle.y_train)}
        key = hashlib.sha256((json.dumps(ident, sort_keys=True, default=str) + data_key).encode()).hexdigest()[:24]

        def compute():
            fine_tune = ctx.need_fine_tune(cfg.where, "an inline teacher")
            torch.manual_seed(ctx.seed)
            params = model_params(t["model"], t.get("params"), cfg.where, "teacher.params")
            teacher = ModelSpec(t["model"], params, spec.n_classes, *spec.input_shape).build()
            ctx.log(f"distill: training teacher '{t['model']}' ({sum(p.numel() for p in teacher.parameters()):,} parameters) for {t['epochs']} epochs")
            fine_tune(teacher, FineTune(t["epochs"], t.get("lr")))
            return predict_logits(teacher, x)

        logits, hit = _cached(ctx, key, compute)
        ctx.log(f"distill: teacher '{t['model']}' logits {'from cache' if hit else 'computed'} ({key})")
        out.append(logits)
    else:
        entries = [cfg.teacher] if isinstance(cfg.teacher, str) else list(cfg.teacher)
        for entry in entries:
            path = resolve_teacher_file(entry, cfg.where)
            file_key = hashlib.sha256(path.read_bytes()).hexdigest()
            key = hashlib.sha256((file_key + data_key).encode()).hexdigest()[:24]

            def compute(path=path):
                teacher = load_variant(path).module
                try:
                    return predict_logits(teacher, x)
                except RuntimeError as exc:
                    raise UserError(f"{cfg.where}: teacher {path} does not accept this run's inputs {tuple(x.shape[1:])} "
                                    f"({str(exc).splitlines()[0]})") from None

            logits, hit = _cached(ctx, key, compute)
            ctx.log(f"distill: teacher {path} logits {'from cache' if hit else 'computed'} ({key})")
            out.append(logits)
    n_classes = len(bundle.classes)
    for logits in out:
        if logits.shape != (len(x), n_classes):
            raise UserError(f"{cfg.where}: a teacher gives {tuple(logits.shape[1:])} outputs, the data has {n_classes} classes")
    return out


@register_method("distill", DistillConfig, label="knowledge distillation")
def apply_distill(model: nn.Module, cfg: DistillConfig, ctx):
    require_not(model, {"int8", "uint8", "binary", "float16", "bfloat16"}, cfg.where, "distill (fine-tuning; put it before quantisation)")
    fine_tune = ctx.need_fine_tune(cfg.where, "distill")
    bundle = ctx.need_data(cfg.where, "distillation")
    targets = soft_targets(teacher_logits(cfg, ctx), cfg.temperature)
    teacher_acc = float((targets.argmax(1) == bundle.y_train).float().mean()) * 100

    def loss_fn(logits, y, idx):
        return kd_loss(logits, targets[idx], y, cfg.temperature, cfg.alpha)

    keep = KeepZeros(model)
    fine_tune(model, FineTune(cfg.epochs, cfg.lr, loss_fn=loss_fn, hooks=(keep,) if keep.masks else ()))
    ctx.log(f"distill: student fine-tuned {cfg.epochs} epochs (T={cfg.temperature}, alpha={cfg.alpha}); "
            f"teacher training accuracy {teacher_acc:.1f} %")
    return model, {"teacher_train_accuracy": round(teacher_acc, 3)}
