"""Packed training cache and per-batch features: rows, keying, rebuilds, streaming statistics, bounded reads."""

from __future__ import annotations

import copy
import os
import pickle
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from dcase_effdl.config import SWAConfig

from dcase_effdl.compress import CompressContext, apply_steps, parse_steps
from dcase_effdl.compress.binary import bn_rows
from dcase_effdl.compress.distill import data_digest
from dcase_effdl.errors import UserError
from dcase_effdl.data.bundle import DataBundle, Features, even_batches, normalization_stats
from dcase_effdl.features.cache import extract_features
from dcase_effdl.features.packed import PACKED_DIR, PackedFeatures, open_packed, pack
from dcase_effdl.training import augment, sampling
from dcase_effdl.training.feed import Feed, read_share
from dcase_effdl.training.loop import augment_example, fit, predict, predict_rows
from tests.test_feature_cache import CFG, SHAPE, _clips, _write
from tests.train_helpers import SHAPE as TINY_SHAPE
from tests.train_helpers import all_techniques, tiny_model


@pytest.fixture()
def store(tmp_path):
    root = tmp_path / "data"
    names = _clips(root, 6)
    return root, names, extract_features(root, names, CFG, tmp_path / "cache", workers=1, progress=False)


def test_pack_holds_the_entries_in_order_and_is_reused(store):
    root, names, st = store
    packed = pack(st, names)
    assert len(packed) == 6 and packed.row_shape == SHAPE and packed.dtype == np.float16
    stored = np.stack([st.load_stored(n) for n in names])
    rows = [4, 0, 4, 5, 2]  # any order, repeats: one read per run of consecutive rows
    np.testing.assert_array_equal(packed.read(rows), stored[rows])  # copies of float16 bits
    np.testing.assert_array_equal(np.load(packed.path, mmap_mode="r"), stored)  # a plain .npy
    # A spawned loader worker gets a pickled copy, without the open file handle, and opens its own.
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(packed)).read(rows), stored[rows])
    mtime = packed.path.stat().st_mtime_ns
    again = pack(st, names)
    assert again.path == packed.path and again.path.stat().st_mtime_ns == mtime  # reused, not rewritten
    assert pack(st, names[::-1]).path != packed.path  # another order is another pack
    assert not [p for p in packed.path.parent.iterdir() if p.name.endswith(".tmp")]


def test_an_edited_clip_packs_a_new_file_and_deletes_the_stale_one(store, tmp_path):
    root, names, st = store
    old, other_order, fewer = pack(st, names), pack(st, names[::-1]), pack(st, names[:4])
    old_rows = old.read([2])
    folder = old.path.parent
    foreign = [folder / "notes.json", folder / "notes.npy"]  # not names this module writes: never touched
    for path in foreign:
        path.write_text(old.path.with_suffix(".json").read_text())
    time.sleep(0.01)
    _write(root, names[2], seed=99)  # new content, new mtime: a new per-clip entry version
    st2 = extract_features(root, names, CFG, tmp_path / "cache", workers=1, progress=False)
    new = pack(st2, names)
    assert new.path != old.path
    np.testing.assert_array_equal(new.read([2])[0], st2.load_stored(names[2]))
    assert not np.array_equal(new.read([2]), old_rows)
    # The same split's older pack is gone (array and index); other splits and orders stay until rebuilt.
    assert not old.path.exists() and not old.path.with_suffix(".json").exists()
    assert other_order.path.is_file() and fewer.path.is_file() and all(p.is_file() for p in foreign)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [p.name for p in foreign] + [f"{q.path.stem}{ext}" for q in (new, other_order, fewer) for ext in (".json", ".npy")])


def test_a_damaged_or_mismatched_pack_is_rebuilt(store):
    root, names, st = store
    packed = pack(st, names)
    with open(packed.path, "r+b") as f:
        f.truncate(packed.path.stat().st_size - 10)  # a short file: a power cut, a full disk
    assert open_packed(packed.path, names, np.dtype(np.float16), SHAPE) is None
    rebuilt = pack(st, names)
    np.testing.assert_array_equal(rebuilt.read(range(6)), np.stack([st.load_stored(n) for n in names]))
    packed.path.with_suffix(".json").write_text('{"names": ["other.wav"]}')  # an index that does not match
    assert open_packed(packed.path, names, np.dtype(np.float16), SHAPE) is None
    current = pack(st, names)
    assert len(current) == 6
    with open(current.path, "r+b") as f:  # damaged after it was checked: named, never read as zeros
        f.truncate(current.offset + current.row_bytes)
    with pytest.raises(UserError, match="shorter than its header"):
        current.read([3])


def test_streaming_statistics_and_per_batch_normalisation(store):
    root, names, st = store
    packed = pack(st, names)
    x = torch.from_numpy(np.stack([st.load(n) for n in names]))
    stats = normalization_stats(packed)
    # The in-memory reference (two passes over all clips in float64): the same numbers up to float64
    # rounding of sums over 6 x 101 values per band (~1e-15 relative; 1e-12 leaves room).
    np.testing.assert_allclose(stats["mean"], x.double().mean(dim=(0, 3)).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats["std"], x.double().std(dim=(0, 3)).numpy(), rtol=1e-12)
    feats = Features(packed, stats)
    assert len(feats) == 6 and feats.shape == (6, *SHAPE)
    mean = torch.tensor(stats["mean"], dtype=torch.float32)[None, :, :, None]
    std = torch.tensor(stats["std"], dtype=torch.float32)[None, :, :, None]
    whole = (x - mean) / std
    # Exact: the same float32 inputs, mean and std, elementwise ops only (no reduction), so the batch
    # a row is read in cannot change its bits.
    assert torch.equal(feats[torch.tensor([5, 1, 1])], whole[[5, 1, 1]])
    assert torch.equal(feats[2:4], whole[2:4]) and torch.equal(feats[3], whole[3]) and len(feats[:0]) == 0
    assert [len(b) for b in even_batches(feats, 4)] == [len(b) for b in torch.tensor_split(whole, 4)]
    assert data_digest(feats) == data_digest(whole)  # distillation's cache key does not depend on the source


class CountingPacked(PackedFeatures):
    """Records the rows of every read: the largest read must be a batch, not the split."""

    largest = 0
    total = 0

    def read(self, rows):
        out = super().read(rows)
        CountingPacked.largest = max(CountingPacked.largest, len(out))
        CountingPacked.total += len(out)
        return out


def _packed_split(folder, n, seed):
    g = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = g.standard_normal((n, *TINY_SHAPE)).astype(np.float16)
    for k in range(3):
        x[y == k, :, 5 * k : 5 * k + 5] += 1.5
    path = folder / f"{seed}.npy"
    np.save(path, x)
    path.with_suffix(".json").write_text('{"names": [%s]}' % ", ".join(f'"{i}.wav"' for i in range(n)))
    base = open_packed(path, [f"{i}.wav" for i in range(n)], np.dtype(np.float16), TINY_SHAPE)
    packed = CountingPacked(path, base.names, base.dtype, (n, *base.row_shape), base.offset)
    return packed, torch.as_tensor(y)


def test_training_compression_and_prediction_read_a_batch_at_a_time(tmp_path):
    """Fails when any stage loads a whole split: 300 training clips, every read at most 256 rows
    (predict's and binary's batch-norm pass; training reads train.batch_size = 32)."""
    (tmp_path / PACKED_DIR).mkdir()
    (train, y_train), (val, y_val), (test, y_test) = (_packed_split(tmp_path / PACKED_DIR, n, s) for n, s in
                                                      ((300, 0), (30, 1), (60, 2)))
    stats = normalization_stats(train)
    bundle = DataBundle(["a", "b", "c"], Features(train, stats), y_train, Features(val, stats), y_val,
                        Features(test, stats), y_test, [f"{i}.wav" for i in range(60)], stats)
    CountingPacked.largest = CountingPacked.total = 0
    # mixup, SWA's batch-norm pass, balanced batches: every reader of x_train; the feed reads in this
    # process (loader_workers=0), where the counter can see it (a worker reads the same way).
    cfg = all_techniques(epochs=1, batch_size=32, swa=SWAConfig(start_epoch=1, every=1), loader_workers=0)
    model = tiny_model()
    fit(model, bundle, cfg, seed=0)
    assert CountingPacked.largest <= 256 and CountingPacked.total >= 2 * 300  # an epoch and SWA's batch-norm pass
    probs = predict(model, bundle.x_test)
    assert probs.shape == (60, 3) and CountingPacked.largest <= 256
    # Prediction batches are bounded in bytes: a 256-band stereo front end predicts 4 clips at a time.
    assert predict_rows(torch.zeros(1, 1, 40, 501)) == 52 and predict_rows(torch.zeros(1, 2, 256, 431)) == 4
    assert predict_rows(bundle.x_test) == 256
    # Binary's batch-norm re-estimation likewise, by 16 MiB of input: 19 rows of 2 x 256 x 431, 209 of 1 x 40 x 501.
    assert bn_rows(torch.zeros(1, 2, 256, 431)) == 19 and bn_rows(torch.zeros(1, 1, 40, 501)) == 209
    assert bn_rows(bundle.x_train) == 256
    for step in ({"method": "binary", "epochs": 0}, {"method": "int8", "calibration_samples": 280}):
        apply_steps(copy.deepcopy(model), parse_steps([step], "r"), CompressContext(size_policy="dcase2020", bundle=bundle))
    assert CountingPacked.largest <= 256
    assert os.path.getsize(train.path) > 256 * train.row_bytes  # the split really is larger than any read


def test_a_rank_reads_only_its_share_and_its_partners(tmp_path):
    """Under torchrun each rank reads the rows of its positions plus their mixup partners, and gets exactly
    the rows one process gives those positions."""
    (tmp_path / PACKED_DIR).mkdir()
    train, y = _packed_split(tmp_path / PACKED_DIR, 40, 0)
    x = Features(train, normalization_stats(train))
    cfg = all_techniques(batch_size=16)  # mixup, SpecAugment, roll, L/R swap, balanced batches
    plan = sampling.balanced_batches(y, 16, 0, 1)
    kw = dict(epoch=1, seed=0, mixup_alpha=cfg.mixup_alpha, n_classes=3, augment_example=partial(augment_example, cfg=cfg))
    smaller = 0
    for b, idx in enumerate(plan):
        one = read_share(x, y, idx, batch=b, rank=0, world_size=1, **kw)
        _, partner = augment.mixup_draw(16, cfg.mixup_alpha, sampling.batch_generator(0, 1, b))
        for rank in range(2):
            CountingPacked.largest = CountingPacked.total = 0
            share = read_share(x, y, idx, batch=b, rank=rank, world_size=2, **kw)
            positions = torch.arange(rank, 16, 2)
            needed = set(positions.tolist()) | set(partner[positions].tolist())
            assert CountingPacked.total == len(needed)  # one read of its rows and its partners', nothing else
            smaller += len(needed) < 16
            # Bit-exact: each row gets the same ops with the same keyed generator whichever rank reads it,
            # and mixing is elementwise, so no reduction order differs.
            assert torch.equal(share.x, one.x[rank::2]) and torch.equal(share.y, one.y[rank::2])
            assert torch.equal(share.idx, idx[rank::2]) and share.global_size == 16
    assert smaller > 0  # the shares really are smaller than the batch
    # A worker process gives the same batches as reading in the loop (fork: the counter stays here).
    feeds = [Feed(x, y, lambda epoch: plan, seed=0, rank=1, world_size=2, mixup_alpha=cfg.mixup_alpha, n_classes=3,
                  augment_example=partial(augment_example, cfg=cfg), workers=w) for w in (0, 1)]
    in_loop, in_worker = (list(f.epoch(1)) for f in feeds)
    assert len(in_loop) == len(plan) and all(torch.equal(a.x, b.x) and torch.equal(a.y, b.y) for a, b in zip(in_loop, in_worker))


def test_a_damaged_pack_read_in_a_worker_is_one_line(tmp_path):
    (tmp_path / PACKED_DIR).mkdir()
    train, y = _packed_split(tmp_path / PACKED_DIR, 20, 0)
    x = Features(train, {"mean": np.zeros(TINY_SHAPE[:2]).tolist(), "std": np.ones(TINY_SHAPE[:2]).tolist()})
    with open(train.path, "r+b") as f:
        f.truncate(train.offset + 5 * train.row_bytes)
    feed = Feed(x, y, lambda epoch: [torch.arange(20)], seed=0, rank=0, world_size=1, mixup_alpha=0.0, n_classes=3,
                augment_example=lambda row, g: row, workers=1)
    with pytest.raises(UserError, match="shorter than its header") as caught:
        list(feed.epoch(1))
    assert "\n" not in str(caught.value) and "worker" not in str(caught.value)


_WORKER_PEAK = """
import multiprocessing, sys
import torch
from dcase_effdl.training.feed import Feed

class RandomRows:  # inputs of the 256-band stereo front end's shape, made up per read (nothing held)
    shape = (1600, 2, 256, 431)
    def __len__(self):
        return self.shape[0]
    def __getitem__(self, idx):
        return torch.randn(len(idx), *self.shape[1:])

def pss_mb(pid):
    with open(f"/proc/{pid}/smaps_rollup") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Pss:")) / 1024

plan = lambda epoch: [torch.arange(i, i + 8) for i in range(0, 1600, 8)]
feed = Feed(RandomRows(), torch.zeros(1600, dtype=torch.long), plan, seed=0, rank=0, world_size=1, mixup_alpha=0.0,
            n_classes=3, augment_example=lambda x, g: x, workers=1)
peak = 0.0
for share in feed.epoch(1):
    assert share.x.shape == (8, 2, 256, 431)
    peak = max([peak, *(pss_mb(child.pid) for child in multiprocessing.active_children())])
print(peak)
"""


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's /proc/<pid>/smaps_rollup")
def test_a_loader_worker_does_not_keep_the_batches_it_handed_on():
    # 200 batches of 8 x 2 x 256 x 431 float32 (7 MB each, 1.4 GB in all) through one worker. With glibc's
    # default malloc its peak PSS reached 581-594 MB (freed batches stayed in its heap); with feed's fixed
    # mmap threshold, 108 MB, most of it torch's own libraries. In a fresh interpreter: a worker forked
    # from this test process would count a share of everything earlier tests left in it.
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _WORKER_PEAK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    peak = float(out.stdout.split()[-1])
    assert 0 < peak < 200, peak
