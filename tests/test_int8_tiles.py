"""int8 convs that pool their codes in tiles: tiles cover the output once, 1 or 2 threads give the kernel's codes."""

from __future__ import annotations

import threading
import time

import pytest
import torch
import torch.nn as nn

from dcase_effdl.compress import int8_kernels as K
from test_compress_int8 import _OpLog  # the op log the int8 tests share

# (conv, pool, input (C, H, W)): a first layer on one channel, a strided one on three whose pooling
# floors (rows and columns left over), a wide pool over few rows (the baseline's second block).
CASES = [
    (nn.Conv2d(1, 8, 7, padding=3), (5, 5), (1, 23, 47)),
    (nn.Conv2d(3, 16, 3, stride=(2, 1), padding=1), (2, 3), (3, 19, 20)),
    (nn.Conv2d(8, 16, 7, padding=3), (4, 10), (8, 9, 31)),
]


@pytest.fixture
def two_threads():
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


def _layers(conv: nn.Conv2d, pool):
    """The same quantized conv twice: pooling its own codes in tiles, and whole (pooled afterwards)."""
    torch.manual_seed(0)
    codes, scale = K.weight_qparams(conv.weight, True)
    out = []
    for p in (pool, None):
        layer = K.Int8Conv2d.like(conv, per_channel=True, act_qmax=127, relu=True, uint8_out=True, pool=p)
        layer.set_quantized(codes, scale, conv.bias, 0.05, 40)
        layer.set_output(0.02, 0)
        out.append(layer)
    return out


def _within_one_code(got: torch.Tensor, want: torch.Tensor) -> None:
    # The integer sums are exact; kernels for other shapes round the rescaled sums alike, but their
    # rounding is not documented: allow one code at ties, rarely.
    assert got.dtype == want.dtype == torch.uint8 and got.shape == want.shape
    assert (got.int() - want.int()).abs().max() <= 1
    assert (got != want).float().mean() < 0.01


@pytest.mark.parametrize("batch, rows, example_bytes, threads", [
    (64, 8, 32 * 40 * 500, 2), (64, 8, 32 * 40 * 500, 1), (7, 4, 100, 2), (1, 8, 10_000, 2), (3, 5, 10, 4),
    (1, 1, 10, 2), (5, 2, 2 << 20, 2)])
def test_pool_tiles_cover_the_output_once_in_even_shares(batch, rows, example_bytes, threads):
    tiles = K.pool_tiles(batch, rows, example_bytes, threads)
    covered = torch.zeros(batch, rows, dtype=torch.int)
    for b0, b1, p0, p1 in tiles:
        assert 0 <= b0 < b1 <= batch and 0 <= p0 < p1 <= rows
        covered[b0:b1, p0:p1] += 1
    assert torch.equal(covered, torch.ones_like(covered))
    sizes = [(b1 - b0) * (p1 - p0) for b0, b1, p0, p1 in tiles]
    assert max(sizes) - min(sizes) <= max(1, rows if batch >= threads else 1)
    if batch >= threads:  # whole examples, within the cache budget, a multiple of the threads where possible
        assert all(p0 == 0 and p1 == rows for _, _, p0, p1 in tiles)
        assert max(b1 - b0 for b0, b1, _, _ in tiles) <= max(1, K.POOL_CHUNK_BYTES // example_bytes)
        assert len(tiles) % threads == 0 or len(tiles) == batch
    elif rows > 1:  # fewer examples than threads: each example's rows are shared out
        assert len(tiles) >= threads


@pytest.mark.parametrize("conv, pool, shape", CASES)
@pytest.mark.parametrize("batch", [1, 3, 6])
@pytest.mark.parametrize("threads", [1, 2])
def test_tiled_conv_gives_the_kernels_codes(conv, pool, shape, batch, threads, monkeypatch, two_threads):
    """Batch tiles, row tiles (batch 1 at 2 threads) and the worker threads: codes of conv, then pool."""
    torch.set_num_threads(threads)
    tiled, whole = _layers(conv, pool)
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(batch))
    monkeypatch.setattr(K, "POOL_CHUNK_BYTES", 2 * conv.out_channels * shape[1] * shape[2])  # 2 examples a tile
    with torch.inference_mode():  # the workers write into the caller's output: an inference tensor
        want = K.CodeMaxPool2d.like(nn.MaxPool2d(pool))(whole(x))
        for parallel_macs in (K.PARALLEL_MACS, 0):  # the default (small: one thread) and always split
            monkeypatch.setattr(K, "PARALLEL_MACS", parallel_macs)
            got = tiled(x)
            _within_one_code(got, want)
            assert got.is_contiguous(memory_format=torch.channels_last)
            _within_one_code(got, K.reference_forward(tiled, x))  # float64 conv, pool, quantize
    assert 0 < int(want.max()) and int(want.min()) < 127  # not all codes clamped


def test_tiles_run_on_the_caller_and_workers_with_one_intra_op_thread_each(monkeypatch, two_threads):
    conv, pool, shape = CASES[0]
    tiled, _ = _layers(conv, pool)
    seen, caller = [], threading.get_ident()
    kernel = tiled._conv

    def spy(qx, row_pad):
        seen.append((threading.get_ident(), torch.get_num_threads(), len(qx)))
        if threading.get_ident() == caller:
            time.sleep(0.01)  # a slow caller: the worker surely takes tiles too
        return kernel(qx, row_pad)

    monkeypatch.setattr(tiled, "_conv", spy)
    x = torch.randn(8, *shape)
    with torch.no_grad():
        tiled(x)  # small: on the calling thread alone
        assert seen == [(threading.get_ident(), 1, 8)] and torch.get_num_threads() == 2
        seen.clear()
        monkeypatch.setattr(K, "PARALLEL_MACS", 0)
        monkeypatch.setattr(K, "POOL_CHUNK_BYTES", conv.out_channels * shape[1] * shape[2])  # 1 example a tile
        for _ in range(3):  # the threads are kept
            tiled(x)
    assert len(seen) == 24 and sum(n for _, _, n in seen) == 24
    assert {threads for _, threads, _ in seen} == {1}
    assert len({t for t, _, _ in seen}) == 2 and caller in {t for t, _, _ in seen}  # the caller and one worker
    assert torch.get_num_threads() == 2
    # The workers' set_num_threads(1) does not become what new threads start with.
    counts = []
    t = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert counts == [2]


def test_a_worker_error_reaches_the_caller(monkeypatch, two_threads):
    conv, pool, shape = CASES[0]
    tiled, _ = _layers(conv, pool)
    monkeypatch.setattr(K, "PARALLEL_MACS", 0)

    def broken(qx, row_pad):
        raise RuntimeError("tile failed")

    monkeypatch.setattr(tiled, "_conv", broken)
    with torch.no_grad(), pytest.raises(RuntimeError, match="tile failed"):
        tiled(torch.randn(4, *shape))


def test_a_dispatch_mode_sees_every_kernel_call(monkeypatch, two_threads):
    """Modes watch the calling thread only: under one, the tiles run there (the MAC counter, op logs)."""
    conv, pool, shape = CASES[0]
    tiled, _ = _layers(conv, pool)
    monkeypatch.setattr(K, "PARALLEL_MACS", 0)
    monkeypatch.setattr(K, "POOL_CHUNK_BYTES", 2 * conv.out_channels * shape[1] * shape[2])
    log = _OpLog()
    with torch.no_grad(), log:
        tiled(torch.randn(6, *shape))
    assert log.ops.count("onednn::qconv2d_pointwise") == 3


@pytest.mark.parametrize("kh, kw", [(2, 1), (5, 5), (4, 10)])
def test_pooled_codes_are_channels_last_contiguous(kh, kw):
    # A conv whose output is one tile returns max_pool_codes' result as it is: the next conv takes it
    # without a copy only if it is channels-last contiguous.
    x = torch.randint(0, 128, (2, 8, 11, 23), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    got = K.max_pool_codes(x, kh, kw)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, torch.nn.functional.max_pool2d(x.float(), (kh, kw)).to(torch.uint8))
