"""torchrun / DistributedDataParallel plumbing: who am I, which device, one process group per run.

    torchrun --nproc_per_node 2 -m dcase_effdl run recipes/quickstart.yaml

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; `setup()` reads them and starts the process group
(NCCL on CUDA, gloo on CPU). Without them everything is single-process and nothing here does
anything. Rank 0 is the main process: it alone writes files and prints.
"""

from __future__ import annotations

import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dcase_effdl.errors import UserError


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def current() -> Context:
    """The running process's place in the process group (single-process: rank 0 of 1)."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return Context()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a torch.device; under torchrun 'cuda' means this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"train.device: '{name}' requested but no CUDA device is available (use 'cpu' or 'auto')")
        if name == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    elif name != "cpu":
        raise UserError(f"train.device: expected auto, cpu, cuda or cuda:N, got '{name}'")
    return torch.device(name)


def setup(device: str = "auto") -> Context:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); otherwise single-process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise UserError("torchrun started several processes but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    # Rank 0 may extract features while the others wait at a barrier: allow hours, not the default 30 min.
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=6))
    ctx = current()
    if not ctx.is_main:
        sys.stdout = open(os.devnull, "w")  # one voice: only rank 0 prints progress
    return ctx


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module to train: under torchrun DistributedDataParallel (SyncBatchNorm on CUDA), else `model`."""
    if not current().active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(n: int, ctx: Context) -> slice:
    """This rank's contiguous part of `n` rows (the first ranks take one more when `n` does not divide)."""
    per, extra = divmod(n, ctx.world_size)
    start = ctx.rank * per + min(ctx.rank, extra)
    return slice(start, start + per + (ctx.rank < extra))


def gather_rows(part: torch.Tensor, n: int, ctx: Context) -> torch.Tensor:
    """Every rank's `shard(n)` rows of a (rows, ...) CPU tensor, concatenated in rank order, on every rank."""
    if not ctx.active:
        return part
    sizes = [len(range(n)[shard(n, Context(r, ctx.world_size))]) for r in range(ctx.world_size)]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else part.device
    padded = torch.zeros((sizes[0], *part.shape[1:]), dtype=part.dtype, device=device)  # all_gather: equal shapes
    padded[: len(part)] = part
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:size] for p, size in zip(parts, sizes)]).cpu()


def broadcast_buffers(model: torch.nn.Module, ctx: Context) -> None:
    """Rank 0's buffers (batch-norm running statistics, per rank on CPU) on every rank, in place."""
    if ctx.active:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, 0)


def merge_batchnorm(model: torch.nn.Module, ctx: Context) -> None:
    """After each rank re-estimated batch-norm statistics on its own batches (cumulative averages, momentum
    None): the average over all ranks' batches, weighted by how many each saw, on every rank. Equal to one
    process reading every batch, up to float rounding."""
    if not ctx.active:
        return
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats):
        n = bn.num_batches_tracked.to(torch.float64).reshape(1)
        sums = torch.cat([bn.running_mean.double() * n, bn.running_var.double() * n, n])
        dist.all_reduce(sums)
        total = sums[-1].clamp(min=1)
        c = bn.num_features
        bn.running_mean.copy_(sums[:c] / total)
        bn.running_var.copy_(sums[c : 2 * c] / total)
        bn.num_batches_tracked.fill_(int(sums[-1]))


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """SyncBatchNorm layers (multi-GPU training) back to BatchNorm2d with the same state, in place."""
    if isinstance(module, torch.nn.SyncBatchNorm):
        bn = torch.nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        bn.load_state_dict(module.state_dict())
        return bn.to(next(module.buffers()).device) if list(module.buffers()) else bn
    for name, child in module.named_children():
        setattr(module, name, unwrap(child))
    return module


def teardown() -> None:
    """Leave the process group (after training: the later stages run on rank 0 alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
