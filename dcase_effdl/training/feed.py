"""The training data feed: this rank's share of each planned batch, read and augmented in worker processes ahead of the step.

`Feed(...).epoch(epoch)` yields one `Share` per global batch of the epoch's plan (`sampling.py`),
in order. A share is the rows at positions rank, rank + world_size, ... of the global batch: a
rank reads only those rows, plus, with mixup, the rows of their partners. Every random draw is
keyed, not sequential: an example's crop, roll, swap and masks come from
`sampling.example_generator(seed, epoch, batch, position)` and mixup's partners and lambdas from
`sampling.batch_generator(seed, epoch, batch)`, so an example is augmented the same whichever
rank reads it, in whichever worker, and a share holds exactly the rows one process would have
given that rank (the 2-rank test checks it bit for bit). Mixup stays batch-level: it pairs
positions of the global batch.

With `workers` > 0 a torch DataLoader reads in that many processes (persistent across epochs, 2
batches each ahead), so reading, float16 -> float32, normalisation and augmentation overlap the
step; pinned memory on CUDA. No worker draws from torch's global generator (dropout's, saved in
the checkpoint), so resumed runs and any `workers` give the same numbers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from typing import Callable, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dcase_effdl.errors import UserError
from dcase_effdl.training import augment, sampling


# glibc's mallopt(M_MMAP_THRESHOLD): a fixed threshold also turns off glibc's habit of raising it (up to
# 32 MiB) each time a large block is freed, after which a worker's multi-MB batches came from its heap
# and freed ones stayed mapped. Measured with one worker handing on 200 batches of 8 x 2 x 256 x 431
# float32 (7 MB): peak PSS 429-523 MB with glibc's default, 108 MB with this.
_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES = -3, 128 * 1024


def _fixed_mmap_threshold(_worker_id: int = 0) -> None:
    """In a loader worker: blocks of 128 KiB and more are mapped and unmapped, never kept in the heap."""
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "mallopt"):  # glibc (and musl, where it is a no-op)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


class Share(NamedTuple):
    """One rank's share of a global batch: inputs, targets (class indices or soft labels), training-set indices."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    global_size: int  # examples in the whole global batch (all ranks)


def read_share(x, y: torch.Tensor, idx: torch.Tensor, *, batch: int, epoch: int, seed: int, rank: int, world_size: int,
               mixup_alpha: float, n_classes: int, augment_example: Callable) -> Share:
    """The share of global batch number `batch` (training-set indices `idx`) at positions rank::world_size.

    Reads the rows of those positions and, with mixup, of their partners, once each (one read of
    `x`, a tensor or `data.bundle.Features`); `augment_example(row (1, C, F, T), g=generator)` augments
    each row with its position's generator.
    """
    positions = torch.arange(rank, len(idx), world_size)
    needed = positions
    if mixup_alpha > 0:
        lam, partner = augment.mixup_draw(len(idx), mixup_alpha, sampling.batch_generator(seed, epoch, batch))
        needed = torch.unique(torch.cat([positions, partner[positions]]))  # sorted, each row once
    rows = x[idx[needed]]
    parts = [rows[k : k + 1] for k in range(len(needed))]
    augmented = [augment_example(part, g=sampling.example_generator(seed, epoch, batch, int(p)))
                 for part, p in zip(parts, needed.tolist())]
    if any(a is not p for a, p in zip(augmented, parts)):  # no per-example augmentation: no copy
        rows = torch.cat(augmented)
    where = torch.empty(len(idx), dtype=torch.int64)
    where[needed] = torch.arange(len(needed))  # position in the global batch -> row of `rows`
    xs, ys = rows[where[positions]], y[idx[positions]]
    if mixup_alpha > 0:
        mates = partner[positions]
        xs, ys = augment.mix(xs, ys, rows[where[mates]], y[idx[mates]], lam[positions], n_classes)
    return Share(xs, ys, idx[positions], len(idx))


class _Shares(Dataset):
    """Item (epoch, batch number, global indices) -> that batch's `Share` for this rank."""

    def __init__(self, x, y, **fixed):
        self.x, self.y, self.fixed = x, y, fixed

    def __getitem__(self, item) -> Share | UserError:
        epoch, batch, idx = item
        try:
            return read_share(self.x, self.y, idx, batch=batch, epoch=epoch, **self.fixed)
        except UserError as exc:  # re-raised by Feed.epoch as it is: a worker's would carry its traceback
            return exc


class _Plan(Sampler):
    """The epoch's batch plan as DataLoader items; iterated in the main process, so `epoch` set there reaches
    persistent workers."""

    def __init__(self, plan: Callable[[int], list[torch.Tensor]]):
        self.plan, self.epoch = plan, 1

    def __iter__(self):
        return ((self.epoch, b, idx) for b, idx in enumerate(self.plan(self.epoch)))

    def __len__(self) -> int:
        return len(self.plan(self.epoch))


class Feed:
    """Shares of every global batch of `plan(epoch)` for rank `rank` of `world_size`, `workers` processes ahead.

    `seconds` after an epoch: how long the training loop waited for its batches.
    """

    def __init__(self, x, y: torch.Tensor, plan: Callable[[int], list[torch.Tensor]], *, seed: int, rank: int,
                 world_size: int, mixup_alpha: float, n_classes: int, augment_example: Callable, workers: int = 0,
                 pin_memory: bool = False):
        self.sampler = _Plan(plan)
        shares = _Shares(x, y, seed=seed, rank=rank, world_size=world_size, mixup_alpha=mixup_alpha,
                         n_classes=n_classes, augment_example=augment_example)
        # batch_size=None: each sampler item is a whole batch, read in one call. The loader's own
        # generator seeds its workers; without one it would draw from torch's global generator.
        self.loader = DataLoader(shares, batch_size=None, sampler=self.sampler, num_workers=workers,
                                 pin_memory=pin_memory, persistent_workers=workers > 0,
                                 prefetch_factor=2 if workers else None, generator=torch.Generator().manual_seed(seed),
                                 worker_init_fn=_fixed_mmap_threshold if workers else None)
        self.seconds = 0.0

    def epoch(self, epoch: int):
        """The epoch's shares, in plan order."""
        self.sampler.epoch, self.seconds = epoch, 0.0
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            share = next(batches, None)
            self.seconds += time.perf_counter() - start
            if share is None:
                return
            if isinstance(share, UserError):
                raise share
            yield share
