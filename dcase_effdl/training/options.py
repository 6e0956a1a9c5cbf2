"""Training options checked against the features' shape and the model: the pipeline's resolve step runs
these before any data is touched, `fit` checks the loss it is given."""

from __future__ import annotations

import torch

from dcase_effdl.config import TrainConfig
from dcase_effdl.errors import UserError


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
                                    ("spec_augment.freq_mask", cfg.spec_augment and cfg.spec_augment.freq_mask, mels, "mel bands"),
                                    ("filter_augment.n_bands", cfg.filter_augment and cfg.filter_augment.n_bands, mels, "mel bands")):
        if value and value > limit:
            raise UserError(f"train.{key} = {value} is more than the {limit} {unit} of a training input")
    if cfg.freq_shift >= mels:
        raise UserError(f"train.freq_shift = {cfg.freq_shift} bins would move every band of the {mels} mel bands out of a training input")


def check_loss(cfg: TrainConfig, loss_fn, where: str) -> None:
    """Mixup makes soft labels: a custom loss must say it takes them (`loss_fn.accepts_soft_targets`)."""
    if cfg.mixup_alpha > 0 and loss_fn is not None and not getattr(loss_fn, "accepts_soft_targets", False):
        raise UserError(
            f"{where}: train.mixup_alpha = {cfg.mixup_alpha} needs a loss that takes soft (mixed) labels, but this training "
            f"uses {getattr(loss_fn, '__name__', type(loss_fn).__name__)}, which takes class indices; set mixup_alpha: 0"
        )


@torch.no_grad()
def check_crop(model: torch.nn.Module, cfg: TrainConfig, input_shape: tuple[int, int, int]) -> None:
    """Training on crops and validating on whole clips needs a model (on the CPU, in eval mode) that takes any length."""
    c, f, t = input_shape
    try:
        if cfg.time_crop:
            model(torch.zeros(2, c, f, cfg.time_crop))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"train.time_crop = {cfg.time_crop} frames: this model cannot take {cfg.time_crop}-frame inputs "
            f"(it was built for {t}; {first}); use a fully convolutional model or set time_crop: 0"
        ) from None
