"""Tiny data and models shared by the training tests (and the scripts they start in subprocesses)."""

from __future__ import annotations

import pytest
import torch

from dcase_effdl.config import SpecAugmentConfig, SWAConfig, TrainConfig
from dcase_effdl.data.bundle import DataBundle
from dcase_effdl.models import build_model

SHAPE = (2, 16, 24)  # stereo, 16 mel bands, 24 frames


def tiny_bundle(n_train: int = 48, seed: int = 0) -> DataBundle:
    """Three classes that differ in which band range carries energy (learnable in a few epochs)."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.arange(n) % 3
        x = torch.randn(n, *SHAPE, generator=g)
        for k in range(3):
            x[y == k, :, 5 * k : 5 * k + 5] += 1.5
        return x, y

    x_train, y_train = split(n_train)
    x_val, y_val = split(15)
    x_test, y_test = split(15)
    return DataBundle(
        classes=["indoor", "outdoor", "transportation"], x_train=x_train, y_train=y_train, x_val=x_val,
        y_val=y_val, x_test=x_test, y_test=y_test, test_filenames=[f"audio/{i}.wav" for i in range(15)],
    )  # fmt: skip


def tiny_model(batch_norm: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    params = dict(conv_filters=[4, 8], kernel_size=3, pool_sizes=[[2, 2], [2, 2]], dense_units=8, batch_norm=batch_norm,
                  dropout=0.1 if batch_norm else 0.0)  # fmt: skip
    return build_model("dcase2020_baseline", params, n_classes=3, in_channels=SHAPE[0], n_mels=SHAPE[1], n_frames=SHAPE[2])


def all_techniques(**overrides) -> TrainConfig:
    """Every recipe option at once: the strictest test of exact resumption."""
    cfg = dict(
        epochs=5, batch_size=8, optimizer="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4,
        schedule="warm_restarts", warmup_epochs=1, restart_epochs=1, restart_mult=2, min_lr_ratio=0.01,
        mixup_alpha=0.4, spec_augment=SpecAugmentConfig(freq_mask=4, time_mask=6), time_roll=3,
        channel_swap=True, balanced_batches=True, label_smoothing=0.1, swa=SWAConfig(start_epoch=3, every=1),
        device="cpu",
    )  # fmt: skip
    cfg.update(overrides)
    return TrainConfig(**cfg)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster, and far faster when other jobs share the cores.
    Autouse in every test module that imports it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
