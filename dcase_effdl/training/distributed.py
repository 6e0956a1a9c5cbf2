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
