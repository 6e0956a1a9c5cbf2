"""Mini-batch index plans per epoch: shuffled or class-balanced, a pure function of (seed, epoch).

A plan is a list of index tensors into the training set, one per global mini-batch. Because a plan
depends only on the seed and the epoch number (not on how many random numbers earlier epochs
drew), a resumed run sees the same batches as an uninterrupted one, and every DistributedDataParallel
rank can compute the same plan and take its own share of each batch (`shard`). Augmentation draws
likewise come from generators keyed by (seed, epoch, batch) and (seed, epoch, batch, position in
the batch), so a rank that reads only its share augments each example as one process would.

Class-balanced batches (Hu et al., McDonnell): each batch holds batch_size // n_classes examples of
every class (the remainder goes to classes chosen at random per batch). Each class is drawn from
its own reshuffled cycle, so small classes are oversampled and large ones undersampled; an epoch
has as many batches as plain shuffling would (N // batch_size, at least 1).
"""

from __future__ import annotations

import hashlib

import torch

_EPOCH_STRIDE = 1_000_003  # decorrelates (seed, epoch) pairs: seed * stride + epoch


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A generator for one epoch's random numbers; `stream` separates independent uses (sampling, augmentation)."""
    return torch.Generator().manual_seed((seed * _EPOCH_STRIDE + epoch) * 8 + stream)


def _keyed(*key: int) -> torch.Generator:
    """A generator seeded by a 63-bit hash of `key` (nearby keys give unrelated streams)."""
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The generator of one global batch's batch-level draws (mixup's partners and lambdas)."""
    return _keyed(seed, epoch, batch, -1)


def example_generator(seed: int, epoch: int, batch: int, position: int) -> torch.Generator:
    """The generator of one example's draws (crop, roll, swap, masks): position `position` of global batch `batch`."""
    return _keyed(seed, epoch, batch, position)


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """A random permutation cut into batches; a trailing batch of one joins the previous one (batch norm needs 2)."""
    perm = torch.randperm(n, generator=epoch_generator(seed, epoch))
    chunks = list(torch.split(perm, batch_size))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        last = chunks.pop()
        chunks[-1] = torch.cat([chunks[-1], last])
    return chunks


def balanced_batches(labels: torch.Tensor, batch_size: int, seed: int, epoch: int, n_batches: int | None = None) -> list[torch.Tensor]:
    """Batches with (nearly) equal counts per class present in `labels` (B // K each, remainder at random)."""
    labels = torch.as_tensor(labels)
    classes = torch.unique(labels)
    k = len(classes)
    if batch_size < k:
        raise ValueError(f"class-balanced batches need batch_size >= number of classes ({k}), got {batch_size}")
    g = epoch_generator(seed, epoch)
    pools = [torch.nonzero(labels == c).flatten() for c in classes]
    orders = [pool[torch.randperm(len(pool), generator=g)] for pool in pools]
    cursors = [0] * k
    n_batches = n_batches if n_batches is not None else max(1, len(labels) // batch_size)
    base, extra = divmod(batch_size, k)
    plan = []
    for _ in range(n_batches):
        counts = [base] * k
        for c in torch.randperm(k, generator=g)[:extra].tolist():
            counts[c] += 1
        batch = []
        for c in range(k):
            for _ in range(counts[c]):
                if cursors[c] == len(orders[c]):  # cycle exhausted: reshuffle this class
                    orders[c] = pools[c][torch.randperm(len(pools[c]), generator=g)]
                    cursors[c] = 0
                batch.append(orders[c][cursors[c]])
                cursors[c] += 1
        batch = torch.stack(batch)
        plan.append(batch[torch.randperm(len(batch), generator=g)])
    return plan


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of a global batch (every world_size-th index, starting at rank)."""
    return batch[rank::world_size]
