"""Log-mel front end: parity with librosa (and dcase_util's 2020 recipe), shapes, deltas, feature keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from dcase_effdl.features import logmel as features
from dcase_effdl.features.audio import load_audio
from dcase_effdl.config import FeatureConfig, load_features
from dcase_effdl.features.logmel import feature_key, feature_shape, logmel, logmel_batch, n_frames

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AMBIENT3 = SHARED / "data" / "ambient3-development"
BASELINE_YAML = REPO / "features" / "dcase2020_baseline.yaml"
BASELINE_16K_YAML = REPO / "features" / "dcase2020_baseline_16k.yaml"

# 0.01 dB of a magnitude spectrum in natural-log units: 0.01 / 20 * ln(10) = 1.15e-3.
DB_001_NATURAL = 0.01 / 20 * np.log(10)
# What we require: 100x tighter (float32 storage of values near ln(eps) = -36 limits it to ~4e-6).
PARITY_TOL = 1e-5


def _librosa_logmel(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    import librosa
    import scipy.signal

    mel = librosa.feature.melspectrogram(
        y=y.astype(np.float64),
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        # librosa always builds periodic windows from a name; a symmetric one is passed as an array.
        window=cfg.window if cfg.window_periodic else scipy.signal.get_window(cfg.window, cfg.win_length, False),
        center=cfg.center,
        pad_mode=cfg.pad_mode,
        power=cfg.power,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=cfg.mel_scale == "htk",
        norm=cfg.mel_norm,
    )
    if cfg.log == "natural":
        return np.log(mel + cfg.log_eps)
    if cfg.log == "db":
        if cfg.power == 2.0:
            return librosa.power_to_db(mel, ref=1.0, amin=cfg.log_eps, top_db=None)
        return librosa.amplitude_to_db(mel, ref=1.0, amin=cfg.log_eps, top_db=None)
    return mel


def _noise(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Coloured noise with a quiet stretch: exercises loud and near-silent bands.
    x = np.cumsum(rng.standard_normal(int(seconds * rate))) * 1e-3
    x += rng.standard_normal(x.shape) * 0.05
    x[: rate // 4] *= 1e-4
    return x.astype(np.float32)


BASE = FeatureConfig(name="t", mel_norm=None)

VARIANTS = {
    "baseline_no_norm": {},
    "slaney_norm": {"mel_norm": "slaney"},
    "htk": {"mel_scale": "htk", "fmin": 50.0, "fmax": 14000.0, "n_mels": 64},
    "hann_power2": {"window": "hann", "power": 2.0},
    "symmetric_window": {"window_periodic": False},
    "constant_pad": {"pad_mode": "constant"},
    "no_center": {"center": False},
    "win_equals_nfft": {"win_length": 2048},
    "odd_padding": {"win_length": 1917, "hop_length": 480},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parity_with_librosa_on_noise(name):
    cfg = dataclasses.replace(BASE, **VARIANTS[name])
    y = _noise(3.0, cfg.sample_rate)
    ours = logmel(y[None], cfg)
    ref = _librosa_logmel(y, cfg)
    assert ours.dtype == np.float32 and ours.shape == (1, *ref.shape)
    err = np.abs(ours[0] - ref).max()
    assert err < PARITY_TOL < DB_001_NATURAL, f"{name}: max abs difference {err:.3g}"


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_db_log_matches_librosa(power):
    cfg = dataclasses.replace(BASE, log="db", power=power, log_eps=1e-10)
    y = _noise(2.0, cfg.sample_rate, seed=1)
    ours = logmel(y, cfg)  # 1-D audio is taken as one channel
    ref = _librosa_logmel(y, cfg)
    assert np.abs(ours[0] - ref).max() < 1e-4  # dB units


def test_no_log():
    cfg = dataclasses.replace(BASE, log="none")
    y = _noise(1.0, cfg.sample_rate, seed=2)
    ours = logmel(y[None], cfg)
    ref = _librosa_logmel(y, cfg)
    np.testing.assert_allclose(ours[0], ref, rtol=1e-5, atol=1e-9)


def test_float32_falls_back_to_float64_for_bands_below_its_precision(monkeypatch):
    """16 kHz noise upsampled to 48 kHz: the top bands sit far below float32's rounding of each frame."""
    from dcase_effdl.features.audio import resample

    cfg = dataclasses.replace(BASE, mel_norm="slaney")
    rng = np.random.default_rng(4)
    y = resample((0.1 * rng.standard_normal((1, 2 * 16000))).astype(np.float32), 16000, 48000, "soxr_hq")[0]
    ref = _librosa_logmel(y, cfg)
    refined = logmel(y, cfg)[0]
    assert np.abs(refined - ref).max() < PARITY_TOL
    monkeypatch.setattr(features, "FLOAT32_MIN_BAND_RATIO", 0.0)  # float32 throughout
    plain = logmel(y, cfg)[0]
    err = np.abs(plain - ref).max()
    assert err > 10 * PARITY_TOL, f"float32 alone was within {err:.2g}: the signal no longer needs the fallback"
    # Only the bands above the 16 kHz audio's 8 kHz limit are recomputed; the others keep float32's bits.
    recomputed = (refined != plain).any(axis=-1)
    assert recomputed.any() and not recomputed[: cfg.n_mels // 2].any(), np.flatnonzero(recomputed)


def test_float64_bands_by_direct_dft_equal_the_float64_stft(monkeypatch):
    """Pink noise resampled 48 -> 22.05 kHz by soxr (the 256-band definitions): the top band lies in
    the stop band; its few bins are recomputed by a direct float64 DFT, which must agree with the
    float64 STFT (to float32 rounding) and with librosa."""
    from dcase_effdl.features.audio import resample

    cfg = dataclasses.replace(BASE, sample_rate=22050, win_length=2048, hop_length=512, window="hann",
                              power=2.0, n_mels=256, mel_norm="slaney")
    rng = np.random.default_rng(5)
    spectrum = np.fft.rfft(rng.standard_normal(96000))
    spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(96000, 1 / 48000), 20.0))  # 1/f power
    x = np.fft.irfft(spectrum, n=96000)
    y = resample((0.05 * x / x.std()).astype(np.float32)[None], 48000, 22050, "soxr_hq")[0]
    ref = _librosa_logmel(y, cfg)
    by_dft = logmel(y, cfg)[0]
    monkeypatch.setattr(features, "DFT_MAX_BINS", 0)  # the float64 STFT instead
    by_stft = logmel(y, cfg)[0]
    monkeypatch.setattr(features, "FLOAT32_MIN_BAND_RATIO", 0.0)  # float32 throughout
    plain = logmel(y, cfg)[0]
    recomputed = np.flatnonzero((by_dft != plain).any(axis=-1))
    assert list(recomputed) == [cfg.n_mels - 1]  # the top band only: a few bins, by the DFT
    np.testing.assert_allclose(by_dft, by_stft, rtol=0, atol=1e-6)  # float64 results, rounded to float32
    err, err_plain = np.abs(by_dft - ref).max(), np.abs(plain - ref).max()
    assert err < PARITY_TOL and err < err_plain / 4, (err, err_plain)


def test_dcase_util_2020_recipe_parity():
    """features/dcase2020_baseline.yaml == dcase_util MelExtractor's computation, written out with librosa."""
    import librosa
    import scipy.signal

    cfg = load_features(BASELINE_YAML)
    y = _noise(10.0, 48000, seed=3).astype(np.float64)
    eps = np.spacing(1)
    # dcase_util.features.MelExtractor (2020): hamming_asymmetric window, librosa.stft(y + eps) with
    # center=True and librosa < 0.10's reflect padding, magnitude, librosa.filters.mel with its default
    # normalisation, then numpy.log(mel + eps).
    window = scipy.signal.windows.hamming(1920, sym=False)
    spec = np.abs(librosa.stft(y + eps, n_fft=2048, win_length=1920, hop_length=960, center=True,
                               window=window, pad_mode="reflect"))  # fmt: skip
    basis = librosa.filters.mel(sr=48000, n_fft=2048, n_mels=40, fmin=0, fmax=24000, htk=False)
    ref = np.log(np.dot(basis, spec) + eps)
    ours = logmel(y.astype(np.float32)[None], cfg)
    assert ours.shape == (1, 40, 501) == feature_shape(cfg)
    # float32 audio and float32 mel weights (librosa's default dtype) bound the difference.
    assert np.abs(ours[0] - ref).max() < 1e-4


def test_real_audio_parity_and_16k_flac_to_48k():
    if not AMBIENT3.is_dir():
        pytest.skip(f"real audio not available ({AMBIENT3} is absent)")
    files = sorted((AMBIENT3 / "audio").glob("*.flac"))[:3]
    assert files, f"no FLAC files in {AMBIENT3 / 'audio'}"
    cfg = dataclasses.replace(load_features(BASELINE_YAML), mel_norm=None)
    cfg16 = load_features(BASELINE_16K_YAML)
    for path in files:
        assert sf.info(str(path)).samplerate == 16000
        audio = load_audio(path, cfg)  # resampled 16 -> 48 kHz
        assert audio.shape == (1, 480000)
        ours = logmel(audio, cfg)
        assert ours.shape == (1, 40, 501)
        err = np.abs(ours[0] - _librosa_logmel(audio[0], cfg)).max()
        assert err < PARITY_TOL, f"{path.name}: max abs difference {err:.3g}"
        audio16 = load_audio(path, cfg16)  # no resampling
        assert audio16.shape == (1, 160000)
        ours16 = logmel(audio16, cfg16)
        assert ours16.shape == (1, 40, 501) == feature_shape(cfg16)
        assert np.abs(ours16[0] - _librosa_logmel(audio16[0], cfg16)).max() < PARITY_TOL


def test_16k_flac_resampled_to_baseline_shape(tmp_path):
    path = tmp_path / "clip.flac"
    sf.write(path, _noise(10.0, 16000, seed=4), 16000, subtype="PCM_16")
    cfg = load_features(BASELINE_YAML)
    audio = load_audio(path, cfg)
    assert audio.shape == (1, 480000)
    feats = logmel(audio, cfg)
    assert feats.shape == (1, 40, 501) and feats.dtype == np.float32
    assert np.isfinite(feats).all()
    # Above 8 kHz the resampled audio holds nothing; what remains in the top bands is the Hamming
    # window's leakage (sidelobes -43 dB and below), so they sit > 4 nats (35 dB) under the bottom bands.
    assert feats[0, -5:].mean() < feats[0, :20].mean() - 4


def test_deltas_match_librosa():
    import librosa

    cfg = dataclasses.replace(BASE, deltas=2, channels="stereo")
    y = np.stack([_noise(2.0, 48000, seed=5), _noise(2.0, 48000, seed=6)])
    ours = logmel(y, cfg)
    assert ours.shape == (6, 40, 101) == (features.n_channels(cfg), 40, 101)
    for c in range(2):
        static = _librosa_logmel(y[c], cfg)
        np.testing.assert_allclose(ours[c], static, atol=PARITY_TOL)
        np.testing.assert_allclose(ours[2 + c], librosa.feature.delta(static, width=9, order=1), atol=PARITY_TOL)
        np.testing.assert_allclose(ours[4 + c], librosa.feature.delta(static, width=9, order=2), atol=PARITY_TOL)


@pytest.mark.parametrize("threads", [1, 2])
def test_batch_equals_single_clips_bit_for_bit_for_any_batch_and_thread_count(threads):
    # Exact equality is guaranteed by construction: logmel_batch computes each clip alone, in the
    # same shapes, from an aligned copy, with one intra-op thread (the rule above logmel_batch).
    # Before that rule, with 2 threads, 119 of 2,040 values here differed by up to 4.8e-7.
    cfg = dataclasses.replace(BASE, duration=1.0)
    clips = np.stack([_noise(1.0, 48000, seed=s)[None] for s in range(7)])  # (7, 1, 48000)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        alone = np.stack([logmel(clip, cfg) for clip in clips])
        in_3 = np.concatenate([logmel_batch(clips[i : i + 3], cfg) for i in (0, 3, 6)])  # 3, 3 and 1 clips
        in_7 = logmel_batch(clips, cfg)
        tensor_out = logmel_batch(torch.from_numpy(clips), cfg)
        assert torch.get_num_threads() == threads  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    assert isinstance(in_7, np.ndarray) and in_7.shape == (7, 1, 40, n_frames(cfg)) == (7, 1, 40, 51)
    assert in_7.dtype == alone.dtype == np.float32
    np.testing.assert_array_equal(in_3, alone)
    np.testing.assert_array_equal(in_7, alone)
    assert isinstance(tensor_out, torch.Tensor) and tensor_out.dtype == torch.float32
    np.testing.assert_array_equal(tensor_out.numpy(), alone)
    assert logmel_batch(clips[:0], cfg).shape == (0, 1, 40, 51)


def test_n_frames_matches_output_for_all_paddings():
    for center in (True, False):
        cfg = dataclasses.replace(BASE, duration=1.3, center=center)
        y = np.zeros((1, int(round(1.3 * 48000))), dtype=np.float32)
        assert logmel(y, cfg).shape[-1] == n_frames(cfg)
    assert n_frames(load_features(BASELINE_YAML)) == 501


def test_feature_key_changes_with_every_field_but_name(monkeypatch):
    cfg = load_features(BASELINE_YAML)
    key = feature_key(cfg)
    assert len(key) == 12 and int(key, 16) >= 0
    assert feature_key(dataclasses.replace(cfg)) == key
    assert feature_key(dataclasses.replace(cfg, name="renamed")) == key  # a label, not a parameter
    assert feature_key(dataclasses.replace(cfg, fmax=None)) == key  # None means Nyquist = 24000 Hz
    changed = {
        "sample_rate": 96000, "resample": "scipy", "channels": "stereo", "duration": 5.0, "n_fft": 4096,
        "win_length": 1024, "hop_length": 480, "window": "hann", "window_periodic": False, "center": False,
        "pad_mode": "constant", "power": 2.0, "n_mels": 64, "fmin": 20.0, "fmax": 20000.0, "mel_scale": "htk",
        "mel_norm": None, "log": "db", "log_eps": 1e-10, "deltas": 2,
    }  # fmt: skip
    assert set(changed) | {"name"} == {f.name for f in dataclasses.fields(FeatureConfig)}
    keys = {feature_key(dataclasses.replace(cfg, **{field: value})) for field, value in changed.items()}
    assert len(keys) == len(changed) and key not in keys
    monkeypatch.setattr(features, "FEATURE_CODE_VERSION", features.FEATURE_CODE_VERSION + 1)
    assert feature_key(cfg) != key


def test_baseline_yaml_states_every_parameter():
    raw = yaml.safe_load(BASELINE_YAML.read_text())
    assert set(raw) == {f.name for f in dataclasses.fields(FeatureConfig)}, "every field explicit"
    cfg = load_features(BASELINE_YAML)
    assert (cfg.sample_rate, cfg.channels, cfg.duration) == (48000, "mono", 10.0)
    assert (cfg.n_fft, cfg.win_length, cfg.hop_length) == (2048, 1920, 960)
    assert (cfg.window, cfg.window_periodic, cfg.center, cfg.pad_mode) == ("hamming", True, True, "reflect")
    assert (cfg.power, cfg.n_mels, cfg.fmin, cfg.fmax, cfg.mel_scale) == (1.0, 40, 0.0, 24000.0, "slaney")
    assert (cfg.log, cfg.log_eps, cfg.deltas) == ("natural", float(np.spacing(1)), 0)
    raw16 = yaml.safe_load(BASELINE_16K_YAML.read_text())
    assert set(raw16) == set(raw)


def test_bad_deltas_is_user_error():
    from dcase_effdl.errors import UserError

    with pytest.raises(UserError, match="deltas must be 0, 1 or 2, got 3"):
        logmel(np.zeros((1, 48000), dtype=np.float32), dataclasses.replace(BASE, deltas=3))
