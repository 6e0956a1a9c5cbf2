"""Log-mel front end: an STFT by torch.fft + librosa's mel filterbank, every library-dependent choice from FeatureConfig.

The output matches `librosa.feature.melspectrogram` with the same parameters followed by the log
step (tests/test_features.py checks it). The STFT and mel projection run in float32 by default (2.5x
faster than float64 on a CPU); bands too quiet for float32's precision are recomputed in float64
(FLOAT32_MIN_BAND_RATIO), so results stay within ~3e-5 dB of librosa's float64 (the 2020 baseline computed in float64: dcase_util read audio as float64). Each clip is computed on its own
with one intra-op thread, so its features are the same bits whatever batch, thread count or worker
computed them (the rule above `logmel_batch`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from typing import Any

import numpy as np
import torch

from dcase_effdl.config import FeatureConfig
from dcase_effdl.errors import UserError
from dcase_effdl.machine import one_intra_op_thread

# Bump whenever this module's output for an unchanged FeatureConfig changes: it is part of
# feature_key(), so cached features computed by older code are never reused.
# 2: float32 STFT + mel by default (was float64); 3: float64 only for the bands that need it;
# 4: the mel product by blocks of bands (other float32 rounding), the float64 bands of cosine-sum windows by one matmul
FEATURE_CODE_VERSION = 4

# librosa.feature.delta's default window (frames); delta-deltas use the same width.
DELTA_WIDTH = 9

# Window and mel basis per front-end parameters (numpy float64), and their torch copies per
# (device, dtype); the mel blocks and float64 DFT bases below too. Filled on first use, never at import.
_ARRAYS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_TENSORS: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_DELTA_OPS: dict[tuple, torch.Tensor] = {}


# ---------------------------------------------------------------- definition, key and shapes


def _check(cfg: FeatureConfig) -> None:
    if cfg.deltas not in (0, 1, 2):
        raise UserError(f"feature definition '{cfg.name}': deltas must be 0, 1 or 2, got {cfg.deltas}")
    if cfg.hop_length <= 0 or cfg.win_length <= 0 or cfg.n_fft <= 0 or cfg.n_mels <= 0:
        raise UserError(f"feature definition '{cfg.name}': n_fft, win_length, hop_length, n_mels must be > 0")
    if cfg.power <= 0:
        raise UserError(f"feature definition '{cfg.name}': power must be > 0, got {cfg.power}")


def definition(cfg: FeatureConfig) -> dict[str, Any]:
    """The fields that determine the features (canonical: `name` left out, fmax resolved to Hz)."""
    data = dataclasses.asdict(cfg)
    data.pop("name")  # a label: two files with the same parameters share one cache
    data["fmax"] = float(cfg.fmax if cfg.fmax is not None else cfg.sample_rate / 2)
    return data


def feature_key(cfg: FeatureConfig) -> str:
    """12 hex digits hashing the feature definition and FEATURE_CODE_VERSION (the cache folder name)."""
    payload = {"code_version": FEATURE_CODE_VERSION, "definition": definition(cfg)}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def n_samples(cfg: FeatureConfig) -> int:
    """Samples per clip after load_audio (`cfg.duration` must be set)."""
    if cfg.duration is None:
        raise UserError(f"feature definition '{cfg.name}': duration is not set, so clips have no fixed length")
    return int(round(cfg.duration * cfg.sample_rate))


def n_frames(cfg: FeatureConfig) -> int:
    """Time frames per clip: 1 + samples // hop when centred (501 for 10 s, hop 960 at 48 kHz)."""
    return _frames(n_samples(cfg), cfg)


def _frames(samples: int, cfg: FeatureConfig) -> int:
    if cfg.center:
        return 1 + samples // cfg.hop_length
    if samples < cfg.n_fft:
        raise UserError(f"feature definition '{cfg.name}': {samples} samples is shorter than n_fft {cfg.n_fft}")
    return 1 + (samples - cfg.n_fft) // cfg.hop_length


def n_channels(cfg: FeatureConfig) -> int:
    """Feature channels: audio channels (1 mono, 2 stereo) times (1 + deltas)."""
    return (1 if cfg.channels == "mono" else 2) * (1 + cfg.deltas)


def feature_shape(cfg: FeatureConfig) -> tuple[int, int, int]:
    """(channels, n_mels, frames) of one clip's features, e.g. (1, 40, 501) for the 2020 baseline."""
    return (n_channels(cfg), cfg.n_mels, n_frames(cfg))


# ---------------------------------------------------------------- window and mel basis


def _frontend_key(cfg: FeatureConfig) -> tuple:
    return (
        cfg.sample_rate, cfg.n_fft, cfg.win_length, cfg.window, cfg.window_periodic,
        cfg.n_mels, float(cfg.fmin), cfg.fmax, cfg.mel_scale, cfg.mel_norm,
    )  # fmt: skip


def frontend_arrays(cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """(window (n_fft,), mel basis (n_mels, n_fft // 2 + 1)) as float64, computed once per definition.

    The window is scipy's (librosa.filters.get_window), `win_length` long, zero-padded centred into
    n_fft exactly as librosa.stft does. The basis is librosa.filters.mel with the definition's scale
    and band normalisation.
    """
    key = _frontend_key(cfg)
    if key not in _ARRAYS:
        import librosa  # first call in a fresh environment compiles numba code (~25 s), so import late
        import scipy.signal

        _check(cfg)
        win = scipy.signal.get_window(cfg.window, cfg.win_length, fftbins=cfg.window_periodic)
        left = (cfg.n_fft - cfg.win_length) // 2
        window = np.zeros(cfg.n_fft, dtype=np.float64)
        window[left : left + cfg.win_length] = win
        mel = librosa.filters.mel(
            sr=cfg.sample_rate,
            n_fft=cfg.n_fft,
            n_mels=cfg.n_mels,
            fmin=cfg.fmin,
            fmax=cfg.fmax,
            htk=cfg.mel_scale == "htk",
            norm=cfg.mel_norm,
            dtype=np.float64,
        )
        _ARRAYS[key] = (window, np.ascontiguousarray(mel))
    return _ARRAYS[key]


def _frontend_tensors(cfg: FeatureConfig, device: torch.device, dtype: torch.dtype):
    key = (_frontend_key(cfg), str(device), dtype)
    if key not in _TENSORS:
        window, mel = frontend_arrays(cfg)
        _TENSORS[key] = (
            torch.as_tensor(window, dtype=dtype, device=device),
            torch.as_tensor(mel, dtype=dtype, device=device),
        )
    return _TENSORS[key]


def _delta_operator(n_frames_: int, order: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(T, T) matrix D with x @ D == librosa.feature.delta(x, width=9, order=order, mode='interp').

    librosa's delta is scipy's Savitzky-Golay filter, which is linear in its input: applying it to
    the identity gives the operator once per length, and a matmul then works on any device.
    """
    key = (n_frames_, order, str(device), dtype)
    if key not in _DELTA_OPS:
        import scipy.signal

        if n_frames_ < DELTA_WIDTH:
            raise UserError(f"deltas need at least {DELTA_WIDTH} frames, got {n_frames_}")
        eye = np.eye(n_frames_, dtype=np.float64)
        op = scipy.signal.savgol_filter(eye, DELTA_WIDTH, polyorder=order, deriv=order, axis=0, mode="interp")
        _DELTA_OPS[key] = torch.as_tensor(op.T.copy(), dtype=dtype, device=device)
    return _DELTA_OPS[key]


# ---------------------------------------------------------------- mel product by blocks of bands

# Each mel band weighs one contiguous range of FFT bins (a triangle), so the basis is nearly all zeros (0.8 % of the
# 256 x 1025 basis of koutini_256mel_22k_stereo is non-zero). The product runs as one matmul per block
# of consecutive bands, over the bins that block covers; the blocks minimise, over the whole basis, the
# sum of (bands x bins + MEL_BLOCK_OVERHEAD) per block (`_mel_block_ranges`). Measured per 10 s clip, one
# thread, loaded 2-core AVX-512 CPU: 256 bands stereo 4.7 ms dense, 0.9-1.1 ms in 11-21 blocks, 10 ms
# in one block per band (call overhead); the 40-band baseline 0.65 ms dense, 0.24-0.36 ms in 6-12 blocks.
MEL_BLOCK_OVERHEAD = 1000  # multiply-adds per frame that one more matmul call costs (optimum measured: 200-2000)

_BLOCKS: dict[tuple, tuple[list, torch.Tensor]] = {}


def _mel_block_ranges(mel: np.ndarray, overhead: float = MEL_BLOCK_OVERHEAD) -> list[tuple[int, int, int, int]]:
    """(first band, end band, first bin, end bin) of each block, blocks of consecutive bands covering all
    bands; a block's bins run from its bands' first non-zero weight to their last (none for empty bands).

    Dynamic programme over the block ends: cost[e] is the cheapest blocks for bands 0..e-1 (7 ms for
    256 bands, once per definition)."""
    n = mel.shape[0]
    has = mel.any(axis=1)
    first_bin = np.where(has, np.argmax(mel != 0, axis=1), np.inf)
    end_bin = np.where(has, mel.shape[1] - np.argmax(mel[:, ::-1] != 0, axis=1), -np.inf)
    cost, start = np.zeros(n + 1), np.zeros(n + 1, dtype=int)
    for end in range(1, n + 1):
        # candidate blocks first..end-1 for first = end-1, end-2, ..., 0
        lo = np.minimum.accumulate(first_bin[end - 1 :: -1])
        hi = np.maximum.accumulate(end_bin[end - 1 :: -1])
        bands = np.arange(1, end + 1)
        total = cost[end - 1 :: -1][: end] + bands * np.maximum(hi - lo, 0.0) + overhead
        best = int(np.argmin(total))
        cost[end], start[end] = total[best], end - 1 - best
    blocks, end = [], n
    while end > 0:
        first = int(start[end])
        lo, hi = first_bin[first:end].min(), end_bin[first:end].max()
        blocks.append((first, end, int(lo), int(hi)) if hi > lo else (first, end, 0, 0))
        end = first
    return blocks[::-1]


def _mel_blocks(cfg: FeatureConfig, device: torch.device, dtype: torch.dtype) -> tuple[list, torch.Tensor]:
    """([(first band, end band, first bin, end bin, weights (bands, bins))], sum of each band's weights (n_mels,))."""
    key = (_frontend_key(cfg), str(device), dtype)
    if key not in _BLOCKS:
        _, mel = frontend_arrays(cfg)
        blocks = [(b0, b1, lo, hi, torch.as_tensor(mel[b0:b1, lo:hi].copy(), dtype=dtype, device=device))
                  for b0, b1, lo, hi in _mel_block_ranges(mel)]
        _BLOCKS[key] = (blocks, torch.as_tensor(mel.sum(axis=1), dtype=dtype, device=device))
    return _BLOCKS[key]


def _mel_product(mags: torch.Tensor, blocks: list, out: torch.Tensor) -> None:
    """out (rows, n_mels, frames) = mel basis @ spectrum, from mags (rows, frames, bins), block by block.

    The bins a block leaves out have zero weight in all its bands, so this is the dense product with
    the (exactly zero) terms of other bands left out."""
    for row in range(mags.shape[0]):
        spectrum = mags[row].transpose(0, 1)  # (bins, frames) view: the matmul reads it transposed
        for b0, b1, lo, hi, weights in blocks:
            if hi > lo:
                torch.matmul(weights, spectrum[lo:hi], out=out[row, b0:b1])
            else:
                out[row, b0:b1].zero_()  # bands without any bin (librosa warns of empty filters)


# ---------------------------------------------------------------- log-mel

# float32 STFT rounding noise in a frequency bin is ~1e-7 of the frame's energy (its L2 norm);
# a mel band whose mean magnitude is below this fraction of that norm loses more than ~3e-5 dB of
# accuracy (measured: error <= 3.3e-5 dB for ratios >= 0.01, 2.6e-4 dB at 0.001, 1.2e-2 dB at 1e-5,
# on real recordings and 16 -> 48 kHz upsampled audio, whose top bands are nearly empty). Such rows
# are recomputed in float64, so float32 output stays within 1e-3 dB of librosa with a 30x margin.
FLOAT32_MIN_BAND_RATIO = 0.01


def magnitude(spec: torch.Tensor, power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(|X|**power, |X|**2) of a complex STFT, from re**2 + im**2: 3x faster than complex abs() on
    CPU, and exact for power 2. Shared with the exported front end (deploy/frontend.py)."""
    # Squaring the interleaved (re, im) pairs in one pass, then adding, gives the same bits as
    # squaring re and im apart, 25 % faster (12 vs 16 ms for a 256-band stereo clip, loaded CPU).
    squares = torch.view_as_real(spec).square()
    power2 = squares[..., 0] + squares[..., 1]
    if power == 1.0:
        return power2.sqrt(), power2
    if power == 2.0:
        return power2, power2
    return power2.pow(power / 2.0), power2


def _stft(x: torch.Tensor, cfg: FeatureConfig, window: torch.Tensor) -> torch.Tensor:
    """Complex STFT (rows, bins, frames) of audio rows (rows, samples), librosa.stft's framing (torch.stft)."""
    return torch.stft(
        x,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.n_fft,  # the window is already zero-padded into n_fft, as librosa does
        window=window,
        center=cfg.center,
        pad_mode=cfg.pad_mode,
        normalized=False,
        onesided=True,
        return_complex=True,
    )


# Why each thread reuses its buffers: fresh multi-MB tensors for every clip cost the 256-band stereo
# definition 4,200-5,000 page faults per clip, 9-10 ms of kernel time out of 35 ms (getrusage, one
# thread, loaded CPU); glibc returns freed blocks of that size to the system. `torch.fft.rfft` allocates
# its output whatever `out=` says (it copies into `out`), so only the FFT output is new per clip.
_LOCAL = threading.local()


def _scratch(cfg: FeatureConfig, rows: int, samples: int, dtype: torch.dtype, device: torch.device) -> dict:
    """This thread's buffers for clips of (rows, samples): padded audio, windowed frames, |X|**2, |X|**power,
    mel energies. Each thread keeps those of its latest clip shape (13 MB for a 256-band stereo clip, 3.5 MB
    more once it recomputes bands in float64)."""
    key = (_frontend_key(cfg), cfg.hop_length, cfg.center, cfg.power, rows, samples, dtype, str(device))
    held = getattr(_LOCAL, "scratch", None)
    if held is None or held[0] != key:
        frames, bins, pad = _frames(samples, cfg), cfg.n_fft // 2 + 1, (cfg.n_fft // 2 if cfg.center else 0)

        def new(*shape):  # a fresh allocation: 64-byte aligned, like every torch CPU tensor
            return torch.empty(shape, dtype=dtype, device=device)

        buffers = {"padded": new(rows, samples + 2 * pad), "frames": new(rows, frames, cfg.n_fft),
                   "power2": new(rows, frames, bins), "feats": new(rows, cfg.n_mels, frames)}
        buffers["mags"] = buffers["power2"] if cfg.power == 2.0 else new(rows, frames, bins)
        held = _LOCAL.scratch = (key, buffers)
    return held[1]


def _pad_into(clip: torch.Tensor, cfg: FeatureConfig, padded: torch.Tensor) -> None:
    """`padded` = audio rows (rows, samples) padded by n_fft // 2 each side when centred, as torch.stft pads."""
    n = clip.shape[-1]
    p = cfg.n_fft // 2 if cfg.center else 0
    padded[:, p : p + n].copy_(clip)
    if p == 0:
        return
    if cfg.pad_mode == "constant":
        padded[:, :p].zero_()
        padded[:, p + n :].zero_()
        return
    if n <= p:
        raise UserError(f"feature definition '{cfg.name}': {n} samples is too short for reflect padding by {p}")
    # reflect: x[p], ..., x[1] before x[0]; x[n - 2], ..., x[n - 1 - p] after x[n - 1]
    padded[:, :p].copy_(padded[:, p + 1 : 2 * p + 1].flip(-1))
    padded[:, p + n :].copy_(padded[:, n - 1 : p + n - 1].flip(-1))


def _framed_fft(padded: torch.Tensor, cfg: FeatureConfig, window: torch.Tensor, windowed=None) -> torch.Tensor:
    """Complex one-sided FFT (rows, frames, bins) of the windowed frames of padded audio rows (rows, samples),
    into `windowed` (rows, frames, n_fft) when given: what torch.stft computes after padding."""
    rows, n_fft, hop = padded.shape[0], cfg.n_fft, cfg.hop_length
    n_frames_ = 1 + (padded.shape[-1] - n_fft) // hop
    frames = padded.as_strided((rows, n_frames_, n_fft), (padded.stride(0), hop, 1))  # a view, no copy
    windowed = torch.mul(frames, window, out=windowed) if windowed is not None else frames * window
    return torch.fft.rfft(windowed, dim=-1)


def _power_into(spec: torch.Tensor, power2: torch.Tensor) -> None:
    """power2 = re**2 + im**2 of a complex tensor, squaring `spec`'s parts in place (the same bits as
    `magnitude`, which allocates its results). Measured on a 256-band stereo clip, one thread, loaded
    CPU: 1.6-1.8 ms (squares in place: contiguous, vectorised; then one strided add) against 3.1 ms
    for re * re + im * im on the strided parts."""
    parts = torch.view_as_real(spec).square_()
    torch.add(parts[..., 0], parts[..., 1], out=power2)


def _mel_spectrogram(clip: torch.Tensor, cfg: FeatureConfig, dtype: torch.dtype, scratch: dict):
    """(mel energies (rows, n_mels, frames) in `dtype`, bool (rows, n_mels) of the bands float32 cannot
    represent within FLOAT32_MIN_BAND_RATIO in some frame, or None when `dtype` is not float32) of
    audio rows (rows, samples), in this thread's `scratch` buffers."""
    window, _ = _frontend_tensors(cfg, clip.device, dtype)
    blocks, weight = _mel_blocks(cfg, clip.device, dtype)
    _pad_into(clip, cfg, scratch["padded"])
    power2, mags, feats = scratch["power2"], scratch["mags"], scratch["feats"]
    _power_into(_framed_fft(scratch["padded"], cfg, window, scratch["frames"]), power2)  # (rows, frames, bins)
    if cfg.power == 1.0:
        torch.sqrt(power2, out=mags)
    elif cfg.power != 2.0:
        torch.pow(power2, cfg.power / 2.0, out=mags)
    _mel_product(mags, blocks, feats)
    if dtype != torch.float32:
        return feats, None
    # Frame energy by Parseval from the one-sided power spectrum (counting the Nyquist bin twice
    # over-estimates it slightly: the check errs towards float64).
    energy = (2.0 * power2.sum(dim=-1) - power2[..., 0]) / cfg.n_fft  # (rows, frames)
    floor = (FLOAT32_MIN_BAND_RATIO**2 * energy).pow(cfg.power / 2.0)  # band mean |X|**power limit
    imprecise = (feats < weight[None, :, None] * floor[:, None, :]).any(dim=-1)
    return feats, imprecise


# The float64 recomputation takes a direct DFT of the bins it needs when they are at most this many
# bins and hop divides n_fft; otherwise a float64 STFT. Measured, 2 stereo 10 s rows at 22.05 kHz,
# n_fft 2048, hop 512, 26 bins, 1 thread, CPU time, loaded CPU (load 3.3): 2.0-2.1 ms for a cosine-sum
# window (hann: one matmul over the blocks, see `_dft_basis`), 5.1-5.5 ms for a zero-padded one (a
# matmul per window segment), float64 FFT of all bins 8.8-9.7 ms.
DFT_MAX_BINS = 64
# A window counts as a cosine sum (its DFT has at most 2 * COSINE_TERMS + 1 non-zero coefficients)
# when the other coefficients are below this fraction of the largest (hann, hamming: ~1e-17).
COSINE_SUM_TOL = 1e-12
COSINE_TERMS = 3

_DFT_BASES: dict[tuple, tuple] = {}
MAX_DFT_BASES = 32  # bin ranges whose DFT basis is kept (a definition's imprecise bands recur clip after clip)


def _angles(n: torch.Tensor, k: torch.Tensor, n_fft: int) -> torch.Tensor:
    """2 pi (n k mod n_fft) / n_fft in float64 (n, k) for integer tensors: exact reduction, then one rounding."""
    return (2.0 * np.pi / n_fft) * ((n[:, None] * k[None, :]) % n_fft).to(torch.float64)


def _cosine_terms(window: np.ndarray) -> np.ndarray | None:
    """c (2L + 1,) with window[n] = sum_m c[m + L] exp(2 pi i m n / n_fft) for m = -L..L, or None when the
    window is no cosine sum of at most COSINE_TERMS terms (e.g. a window shorter than n_fft, zero-padded)."""
    coef = np.fft.fft(window) / len(window)
    big = np.abs(coef) > COSINE_SUM_TOL * np.abs(coef).max()
    for terms in range(COSINE_TERMS + 1):
        if not big[terms + 1 : len(window) - terms].any():
            return np.concatenate([coef[len(window) - terms :], coef[: terms + 1]])
    return None


def _dft_basis(cfg: FeatureConfig, lo: int, hi: int, device: torch.device) -> tuple:
    """The float64 tensors `_dft_bins` multiplies with for bins lo..hi-1, built once per definition and range."""
    key = (_frontend_key(cfg), cfg.hop_length, lo, hi, str(device))
    if key not in _DFT_BASES:
        window, _ = frontend_arrays(cfg)
        n_fft, hop = cfg.n_fft, cfg.hop_length
        terms = _cosine_terms(window)
        if terms is not None:
            # window = sum_m c_m e^{+i 2 pi m n / N}, so bin k of the windowed frame is sum_m c_m Y[k - m],
            # Y the unwindowed DFT, and Y of frame f is sum_j e^{-i 2 pi k j hop / N} Z[f + j], Z the DFT of
            # hop-long block f + j at bins lo - L .. hi - 1 + L: one basis for all blocks, then a small matrix
            # taking the n_fft // hop blocks of a frame to its bins (both as interleaved (re, im) pairs).
            half = (len(terms) - 1) // 2
            k = torch.arange(lo - half, hi + half, device=device)
            angle = _angles(torch.arange(hop, device=device), k, n_fft)
            block_basis = torch.stack([torch.cos(angle), -torch.sin(angle)], dim=-1).reshape(hop, -1)
            shift = _angles(torch.arange(0, n_fft, hop, device=device), k, n_fft).cpu().numpy()  # (blocks, K + 2L)
            segments, wide, bins = n_fft // hop, len(k), hi - lo
            combine = np.zeros((segments, wide, 2, bins, 2))
            for m in range(-half, half + 1):
                p = np.arange(bins) + half - m  # bin lo + i takes Y[lo + i - m], at position i + L - m of k
                a = terms[m + half] * np.exp(-1j * shift[:, p])  # (blocks, bins) complex factors
                i = np.arange(bins)
                combine[:, p, 0, i, 0], combine[:, p, 0, i, 1] = a.real, a.imag  # re of Z into (re, im) of X
                combine[:, p, 1, i, 0], combine[:, p, 1, i, 1] = -a.imag, a.real  # im of Z into (re, im) of X
            value = (block_basis, torch.as_tensor(combine.reshape(segments * wide * 2, bins * 2), device=device))
        else:  # any other window: its segment j weighs block f + j of frame f
            w = torch.as_tensor(window, dtype=torch.float64, device=device)
            angle = _angles(torch.arange(n_fft, device=device), torch.arange(lo, hi, device=device), n_fft)
            value = (torch.cat([torch.cos(angle), -torch.sin(angle)], dim=1) * w[:, None],)  # (n_fft, 2K)
        if len(_DFT_BASES) >= MAX_DFT_BASES:
            _DFT_BASES.clear()
        _DFT_BASES[key] = value
    return _DFT_BASES[key]


def _dft_bins(padded: torch.Tensor, cfg: FeatureConfig, lo: int, hi: int) -> torch.Tensor:
    """Complex STFT bins lo..hi-1 (rows, frames, hi - lo) of padded float64 audio rows, by direct DFT over
    contiguous hop-long blocks of the audio (no frame copies); n_fft must be a multiple of hop_length."""
    n_fft, hop, rows = cfg.n_fft, cfg.hop_length, padded.shape[0]
    frames = 1 + (padded.shape[-1] - n_fft) // hop
    segments = n_fft // hop
    basis = _dft_basis(cfg, lo, hi, padded.device)
    # frame f = blocks f .. f + segments - 1 (a view, no copy)
    blocks = padded.as_strided((rows, frames + segments - 1, hop), (padded.stride(0), hop, 1))
    bins = hi - lo
    if len(basis) == 2:  # a cosine-sum window: 1 matmul over the blocks instead of n_fft // hop
        block_basis, combine = basis
        z = torch.matmul(blocks, block_basis)  # (rows, blocks, 2 (K + 2L)) DFT of each block
        step = z.shape[-1]
        framed = z.as_strided((rows, frames, segments * step), (z.stride(0), step, 1))  # a frame's blocks, a view
        return torch.view_as_complex(torch.matmul(framed, combine).reshape(rows, frames, bins, 2))
    (window_basis,) = basis
    out = torch.matmul(blocks[:, :frames], window_basis[:hop])
    for j in range(1, segments):
        out += torch.matmul(blocks[:, j : j + frames], window_basis[j * hop : (j + 1) * hop])
    return torch.complex(out[..., :bins], out[..., bins:])


def _refine_in_float64(scratch: dict, feats: torch.Tensor, imprecise: torch.Tensor, cfg: FeatureConfig) -> None:
    """Recompute the bands `imprecise` (rows, n_mels) marks, in float64, into `feats` (rows, n_mels, frames),
    from the padded float32 audio rows in this thread's `scratch`.

    Only those bands, from the bins they cover (a direct DFT when they are few, DFT_MAX_BINS). After
    soxr resampling 48 -> 22.05 kHz the top band of every clip lies in the resampler's stop band;
    recomputing whole clips in float64 made the 256-band stereo definition 5x slower than its float32
    path (122 vs 23 ms per clip, 1 thread).
    """
    padded = scratch["padded"]
    rows = imprecise.any(dim=1).nonzero()[:, 0]
    window, mel = _frontend_tensors(cfg, padded.device, torch.float64)
    covered = mel[imprecise[rows].any(dim=0)].any(dim=0).nonzero()[:, 0]  # bins these bands weigh
    lo, hi = int(covered[0]), int(covered[-1]) + 1  # one range: the basis is zero between bands apart
    x64 = scratch.get("padded64")
    if x64 is None:  # a buffer for all rows, kept with the others
        x64 = scratch["padded64"] = torch.empty(padded.shape, dtype=torch.float64, device=padded.device)
    x64 = x64[: len(rows)]
    for i, row in enumerate(rows.tolist()):
        x64[i].copy_(padded[row])
    if hi - lo <= DFT_MAX_BINS and cfg.n_fft % cfg.hop_length == 0:
        spec = _dft_bins(x64, cfg, lo, hi)
    else:
        spec = _framed_fft(x64, cfg, window)[..., lo:hi]
    magnitudes, _ = magnitude(spec, cfg.power)  # (len(rows), frames, hi - lo)
    for i, row in enumerate(rows.tolist()):
        bands = imprecise[row].nonzero()[:, 0]
        feats[row, bands] = torch.matmul(mel[bands, lo:hi], magnitudes[i].transpose(0, 1)).to(feats.dtype)


# Why a clip's features are the same bits however it is extracted (alone, in a batch of any size,
# with any caller thread count, by any worker thread, before or after an interrupted run): each clip
# is computed on its own, by the same kernel calls on tensors of the same shapes and strides (fixed
# by the feature definition), in buffers from a fresh torch allocation (64-byte aligned, so pointer
# alignment is fixed too; `_scratch` reuses a thread's buffers only for the same shapes), with one
# intra-op thread. A CPU kernel's order of floating-point operations (blocking, vector width, how a
# sum is split between threads) is chosen from exactly those inputs and the CPU's instruction set,
# so nothing outside the clip can change it. Measured before this rule, on a 2-core AVX-512 CPU:
# MKL's sgemm split the 1,025-bin mel sum of one 51-frame clip between 2 threads but not the 357 rows
# of a 7-clip batch, and 119 of 2,040 values moved by up to 4.8e-7. What stays machine-dependent:
# another CPU (AVX2 vs AVX-512) or library version may pick other kernels, so features can differ in
# the last float32 bits between machines.


def _clip_logmel(clip: torch.Tensor, cfg: FeatureConfig, dtype: torch.dtype, out: torch.Tensor) -> None:
    """One clip's features into `out` (C * (1 + deltas), n_mels, frames) float32, from audio (C, samples);
    see the rule above."""
    scratch = _scratch(cfg, clip.shape[0], clip.shape[1], dtype, clip.device)
    feats, imprecise = _mel_spectrogram(clip, cfg, dtype, scratch)  # (C, n_mels, frames), in the scratch
    if imprecise is not None and bool(imprecise.any()):
        # Bands too far below their frame's energy for float32: recompute them in float64.
        _refine_in_float64(scratch, feats, imprecise, cfg)

    if cfg.log == "natural":
        feats.add_(cfg.log_eps).log_()
    elif cfg.log == "db":
        # librosa.power_to_db (power 2) / amplitude_to_db (power 1) with ref=1, amin=log_eps, top_db=None
        # (top_db clips relative to each clip's maximum, which would make features depend on loudness).
        feats.clamp_(min=cfg.log_eps).log10_().mul_(20.0 / cfg.power)

    channels = feats.shape[0]
    out[:channels].copy_(feats)  # statics, then deltas, then delta-deltas
    for order in range(1, cfg.deltas + 1):
        out[order * channels : (order + 1) * channels].copy_(
            torch.matmul(feats, _delta_operator(feats.shape[-1], order, feats.device, dtype)))


def logmel_batch(audio: np.ndarray | torch.Tensor, cfg: FeatureConfig, dtype: torch.dtype = torch.float32):
    """Log-mel features of a batch: audio (B, C, samples) -> (B, C * (1 + deltas), n_mels, frames).

    Each clip is computed on its own with one intra-op thread, so a clip's features never depend on
    the batch it came in (see the rule above); on a CPU, use threads over clips for speed (the
    feature cache does). A numpy input gives a float32 numpy array; a tensor input gives a float32
    tensor on the tensor's device. `dtype` is the compute precision (float32: 2.5x faster than
    float64 on a CPU, within 1e-3 dB of librosa's float64 also on near-silent bands; float64 for
    bit-level studies).
    """
    _check(cfg)
    as_numpy = not isinstance(audio, torch.Tensor)
    x = torch.from_numpy(np.asarray(audio)) if as_numpy else audio
    if x.dim() != 3:
        raise ValueError(f"logmel_batch expects audio shaped (batch, channels, samples), got {tuple(x.shape)}")
    feats = torch.empty((x.shape[0], x.shape[1] * (1 + cfg.deltas), cfg.n_mels, _frames(x.shape[-1], cfg)),
                        dtype=torch.float32, device=x.device)
    with one_intra_op_thread(), torch.no_grad():
        for clip, out in zip(x, feats):
            _clip_logmel(clip, cfg, dtype, out)
    return feats.numpy() if as_numpy else feats


def logmel(audio: np.ndarray | torch.Tensor, cfg: FeatureConfig, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Log-mel features of one clip: audio (channels, samples) or (samples,) -> float32 (C, n_mels, frames)."""
    x = audio if isinstance(audio, torch.Tensor) else np.asarray(audio)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"logmel expects audio shaped (channels, samples), got {tuple(x.shape)}")
    out = logmel_batch(x[None], cfg, dtype)
    if isinstance(out, torch.Tensor):
        out = out.cpu().numpy()
    return out[0]
