"""The log-mel fast paths against their plain forms: mel product by blocks, reused buffers, padding, cached float64 DFTs."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from dcase_effdl.config import FeatureConfig
from dcase_effdl.errors import UserError
from dcase_effdl.features import logmel as features
from dcase_effdl.features.audio import resample
from dcase_effdl.features.logmel import logmel

BASELINE = FeatureConfig(name="baseline", mel_norm="slaney", duration=1.0)  # 40 bands, 48 kHz, hamming 1920 in 2048
K256 = FeatureConfig(name="k256", sample_rate=22050, win_length=2048, hop_length=512, window="hann", power=2.0,
                     n_mels=256, mel_norm="slaney", log="db", log_eps=1e-10, channels="stereo", duration=2.0)
# 128 bands from a 256-point FFT: librosa's basis has all-zero (empty) bands at the bottom.
EMPTY_BANDS = FeatureConfig(name="empty", sample_rate=16000, n_fft=256, win_length=256, hop_length=128, n_mels=128,
                            duration=0.5)


def _pink_resampled(seconds: float, rows: int, seed: int) -> np.ndarray:
    """1/f noise at 48 kHz resampled to 22.05 kHz by soxr: its top mel band lies in the stop band."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 48000)
    spectrum = np.fft.rfft(rng.standard_normal((rows, n)), axis=-1)
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / 48000), 20.0))
    x = np.fft.irfft(spectrum, n=n, axis=-1)
    return resample((0.05 * x / x.std()).astype(np.float32), 48000, 22050, "soxr_hq")[:, : int(seconds * 22050)]


@pytest.mark.parametrize("cfg", [BASELINE, K256, EMPTY_BANDS], ids=lambda c: c.name)
def test_mel_blocks_cover_every_band_once_and_every_weight(cfg):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa's "Empty filters detected" for EMPTY_BANDS
        _, mel = features.frontend_arrays(cfg)
    blocks = features._mel_block_ranges(mel)
    assert blocks[0][0] == 0 and blocks[-1][1] == cfg.n_mels
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(blocks, blocks[1:]))  # consecutive, none empty
    for b0, b1, lo, hi in blocks:
        outside = mel[b0:b1].copy()
        outside[:, lo:hi] = 0.0
        assert not outside.any(), (b0, b1, lo, hi)  # no weight of a block's bands outside its bins
    # Fewer multiply-adds than the dense product, in fewer matmuls than one per band.
    assert sum((b1 - b0) * (hi - lo) for b0, b1, lo, hi in blocks) < mel.size / 4 and len(blocks) < cfg.n_mels / 2
    if cfg is EMPTY_BANDS:
        assert not mel[0].any()  # the case this definition is here for


@pytest.mark.parametrize("cfg", [BASELINE, K256, EMPTY_BANDS], ids=lambda c: c.name)
def test_mel_product_by_blocks_equals_the_dense_float64_product(cfg):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, mel = features.frontend_arrays(cfg)
        blocks, weight = features._mel_blocks(cfg, torch.device("cpu"), torch.float32)
    rng = np.random.default_rng(0)
    mags = rng.exponential(size=(2, 37, cfg.n_fft // 2 + 1)).astype(np.float32)  # (rows, frames, bins)
    mags[:, :, ::7] *= 1e-6  # a wide dynamic range
    out = torch.full((2, cfg.n_mels, 37), float("nan"))
    features._mel_product(torch.from_numpy(mags), blocks, out)
    dense = np.einsum("mk,rfk->rmf", mel, mags.astype(np.float64))
    bound = np.einsum("mk,rfk->rmf", np.abs(mel), mags.astype(np.float64))  # sum of |terms|
    # float32 products and sums: a few units of 2**-24 of the sum of |terms| per band (1,025 terms at most)
    assert np.all(np.abs(out.numpy() - dense) <= 1e-6 * bound + 1e-30)
    np.testing.assert_allclose(weight.numpy(), mel.sum(axis=1).astype(np.float32))


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_framed_stft_into_buffers_equals_torch_stft(mode):
    cfg = dataclasses.replace(K256, pad_mode=mode)
    x = torch.from_numpy(_pink_resampled(2.0, 2, seed=1))
    window, _ = features._frontend_tensors(cfg, x.device, torch.float32)
    scratch = features._scratch(cfg, 2, x.shape[1], torch.float32, x.device)
    scratch["padded"].fill_(float("nan"))  # every sample must be written
    features._pad_into(x, cfg, scratch["padded"])
    p = cfg.n_fft // 2
    expected_pad = torch.nn.functional.pad(x[:, None], (p, p), mode=mode)[:, 0]
    assert torch.equal(scratch["padded"], expected_pad)  # copies only: exact
    ours = features._framed_fft(scratch["padded"], cfg, window, scratch["frames"])
    theirs = features._stft(x, cfg, window).transpose(-1, -2)
    assert ours.shape == theirs.shape == (2, features._frames(x.shape[1], cfg), cfg.n_fft // 2 + 1)
    # The same window product and FFT call (identical bits here), but no library promises that: float32 rounding.
    assert (ours - theirs).abs().max() <= 1e-6 * theirs.abs().max()


def test_reflect_padding_of_too_short_audio_is_a_user_error():
    cfg = dataclasses.replace(BASELINE, duration=None)
    with pytest.raises(UserError, match="1000 samples is too short for reflect padding by 1024"):
        logmel(np.zeros(1000, dtype=np.float32), cfg)


def test_cosine_sum_windows_are_recognised():
    hann = features._cosine_terms(features.frontend_arrays(K256)[0])
    np.testing.assert_allclose(hann, [-0.25, 0.5, -0.25], atol=1e-15)
    hamming = features._cosine_terms(features.frontend_arrays(dataclasses.replace(BASELINE, win_length=2048))[0])
    np.testing.assert_allclose(hamming, [-0.23, 0.54, -0.23], atol=1e-15)
    assert features._cosine_terms(features.frontend_arrays(BASELINE)[0]) is None  # 1920 zero-padded into 2048
    assert features._cosine_terms(features.frontend_arrays(dataclasses.replace(K256, window_periodic=False))[0]) is None


@pytest.mark.parametrize("win_length", [2048, 1900])  # a cosine-sum window (1 matmul), a zero-padded one (4)
def test_float64_dft_bins_equal_the_float64_fft(win_length):
    cfg = dataclasses.replace(K256, win_length=win_length)
    assert (features._cosine_terms(features.frontend_arrays(cfg)[0]) is not None) == (win_length == 2048)
    x = torch.from_numpy(_pink_resampled(1.0, 2, seed=2)).double()
    window, _ = features._frontend_tensors(cfg, x.device, torch.float64)
    padded = torch.nn.functional.pad(x[:, None], (1024, 1024), mode="reflect")[:, 0]
    full = features._framed_fft(padded, cfg, window)
    for lo, hi in [(998, 1024), (0, 30), (1000, 1025)]:  # the stop band, DC (bin -1 in the sum), Nyquist
        bins = features._dft_bins(padded, cfg, lo, hi)
        assert bins.shape == full[..., lo:hi].shape
        # float64 sums of 2,048 terms: ~1e-15 of the frame's largest bin
        assert (bins - full[..., lo:hi]).abs().max() <= 1e-12 * full.abs().max(), (lo, hi)


def test_cached_bases_and_reused_buffers_do_not_change_results():
    """The same clip, features from cold caches and from warm ones, with stale data in the buffers:
    equal bits (the bases are rebuilt by the same deterministic operations; every buffer element is
    written before it is read)."""
    clip = _pink_resampled(2.0, 2, seed=3)
    features._DFT_BASES.clear()
    features._BLOCKS.clear()
    features._LOCAL.__dict__.clear()
    cold = logmel(clip, K256)
    assert len(features._DFT_BASES) == 1  # the stop-band top band was recomputed in float64
    other = _pink_resampled(1.5, 2, seed=4)
    logmel(other, dataclasses.replace(K256, duration=1.5))  # another shape: this thread's buffers are replaced
    warm = logmel(clip, K256)
    for buffer in features._scratch(K256, 2, clip.shape[1], torch.float32, torch.device("cpu")).values():
        buffer.fill_(float("nan"))
    stale = logmel(clip, K256)
    np.testing.assert_array_equal(warm, cold)
    np.testing.assert_array_equal(stale, cold)


def test_threads_give_the_bits_of_one_thread():
    clips = [_pink_resampled(2.0, 2, seed=s) for s in range(4)]
    alone = [logmel(c, K256) for c in clips]
    results = [None] * 4

    def work(i):
        results[i] = logmel(clips[i], K256)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(alone, results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cfg", [K256, BASELINE], ids=lambda c: c.name)
def test_stereo_256_bands_and_baseline_match_float64_librosa(cfg):
    """The whole path (blocks, buffers, float64 stop band) against librosa in float64, within the README's
    tolerances: 3.1e-5 dB (256 bands), 8e-6 dB (baseline)."""
    import librosa

    clip = _pink_resampled(2.0, 2, seed=5) if cfg is K256 else _pink_resampled(1.0, 1, seed=5)
    if cfg is BASELINE:  # 48 kHz audio: upsample the 22.05 kHz noise (nearly empty top bands)
        clip = resample(clip, 22050, 48000, "soxr_hq")[:, :48000]
    ours = logmel(clip, cfg)
    mel = librosa.feature.melspectrogram(y=clip.astype(np.float64), sr=cfg.sample_rate, n_fft=cfg.n_fft,
                                         hop_length=cfg.hop_length, win_length=cfg.win_length, window=cfg.window,
                                         center=True, pad_mode="reflect", power=cfg.power, n_mels=cfg.n_mels,
                                         norm="slaney")
    ref = librosa.power_to_db(mel, ref=1.0, amin=cfg.log_eps, top_db=None) if cfg.log == "db" else np.log(mel + cfg.log_eps)
    err_db = np.abs(ours - ref).max() * (1.0 if cfg.log == "db" else 20.0 / np.log(10.0))  # ln |X| -> dB
    assert ours.shape == ref.shape and err_db < (3.1e-5 if cfg is K256 else 8e-6), err_db


def test_float16_storage_has_numpys_bits():
    from dcase_effdl.features.cache import _to_storage

    rng = np.random.default_rng(6)
    feats = (30 * rng.standard_normal((2, 16, 50))).astype(np.float32)
    feats.flat[:6] = [65504.0, 65520.0, 1e6, -1e6, 3e-8, -6e-5]  # largest, rounds to inf, inf, -inf, subnormals
    feats.flat[6:9] = [-36.04365, 0.0, -0.0]
    with np.errstate(over="ignore"):
        expected = feats.astype(np.float16)
    stored = _to_storage(feats, K256)
    assert stored.dtype == np.float16 and stored.shape == feats.shape
    np.testing.assert_array_equal(stored.view(np.uint16), expected.view(np.uint16))
    linear = dataclasses.replace(K256, log="none")
    assert _to_storage(feats, linear).dtype == np.float32
