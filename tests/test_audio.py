"""load_audio / check_audio: formats, channels, resampling, length fitting and one-line errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf

from dcase_effdl.features.audio import SCAN_BLOCK_FRAMES, AudioProblem, check_audio, load_audio
from dcase_effdl.config import FeatureConfig
from dcase_effdl.errors import UserError


def _cfg(**kw) -> FeatureConfig:
    return dataclasses.replace(FeatureConfig(name="t", sample_rate=48000, duration=1.0), **kw)


def _tone(rate: int, seconds: float, freq: float = 1000.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    if channels == 1:
        return x.astype(np.float32)
    return np.stack([x * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
def test_wav_subtypes_read_as_float32(tmp_path, subtype):
    path = tmp_path / "a.wav"
    x = _tone(48000, 1.0)
    sf.write(path, x, 48000, subtype=subtype)
    audio = load_audio(path, _cfg())
    assert audio.dtype == np.float32 and audio.shape == (1, 48000)
    # FLOAT stores the float32 samples themselves (exact); PCM rounds to 2**-15 / 2**-23 steps.
    tol = {"PCM_16": 1e-4, "PCM_24": 1e-6, "FLOAT": 0.0}[subtype]
    assert np.abs(audio[0] - x).max() <= tol


def _with_chunk_before_data(path, chunk_id: bytes, payload: bytes) -> None:
    """Insert a chunk (odd lengths get their pad byte) just before the data chunk of a WAV file."""
    raw = path.read_bytes()
    at = raw.index(b"data")
    chunk = chunk_id + len(payload).to_bytes(4, "little") + payload + b"\0" * (len(payload) & 1)
    raw = raw[:at] + chunk + raw[at:]
    path.write_bytes(raw[:4] + (len(raw) - 8).to_bytes(4, "little") + raw[8:])


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
@pytest.mark.parametrize("layout", ["WAV", "WAVEX", "odd chunk"])
def test_integer_wav_reads_the_same_bits_as_libsndfile(tmp_path, monkeypatch, subtype, layout):
    # load_audio converts integer PCM itself (audio.NUMPY_PCM_SUBTYPES); every code, the extremes
    # included, must give libsndfile's float32 exactly, whatever chunks precede the samples.
    bits = 16 if subtype == "PCM_16" else 24
    rng = np.random.default_rng(bits)
    ints = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), size=(4801, 2))
    ints[:2] = [[-(2 ** (bits - 1)), 2 ** (bits - 1) - 1], [0, -1]]
    path = tmp_path / "a.wav"
    sf.write(path, ints.astype(np.int32) << (32 - bits), 48000, subtype=subtype,
             format="WAVEX" if layout == "WAVEX" else "WAV")
    if layout == "odd chunk":
        _with_chunk_before_data(path, b"JUNK", b"abc")
    expected, _ = sf.read(path, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(expected, ints / 2.0 ** (bits - 1))  # libsndfile read what was written
    monkeypatch.setattr(sf.SoundFile, "read", None)  # load_audio must not need libsndfile's conversion
    audio = load_audio(path, _cfg(channels="stereo", duration=None))
    assert audio.dtype == np.float32
    np.testing.assert_array_equal(audio, expected.T)
    mono = load_audio(path, _cfg(channels="mono", duration=None))
    np.testing.assert_array_equal(mono[0], (expected[:, 0] + expected[:, 1]) / np.float32(2))


def test_stereo_mono_downmix_is_mean_and_stereo_keeps_channels(tmp_path):
    path = tmp_path / "s.wav"
    x = _tone(48000, 1.0, channels=2)  # right channel twice the left
    sf.write(path, x, 48000, subtype="FLOAT")
    mono = load_audio(path, _cfg(channels="mono"))
    stereo = load_audio(path, _cfg(channels="stereo"))
    assert mono.shape == (1, 48000) and stereo.shape == (2, 48000)
    np.testing.assert_allclose(mono[0], x.mean(axis=1), atol=1e-7)
    np.testing.assert_array_equal(stereo, x.T)  # FLOAT samples read back unchanged: no arithmetic


def test_mono_file_duplicated_for_stereo(tmp_path):
    path = tmp_path / "m.flac"
    sf.write(path, _tone(48000, 1.0), 48000, subtype="PCM_16")
    stereo = load_audio(path, _cfg(channels="stereo"))
    assert stereo.shape == (2, 48000)
    np.testing.assert_array_equal(stereo[0], stereo[1])  # a copy of the one channel


@pytest.mark.parametrize("method", ["soxr_hq", "soxr_vhq", "scipy"])
def test_resampling_16k_flac_to_48k_keeps_tone(tmp_path, method):
    path = tmp_path / "r.flac"
    sf.write(path, _tone(16000, 1.0, freq=1000.0), 16000, subtype="PCM_16")
    audio = load_audio(path, _cfg(resample=method))
    assert audio.shape == (1, 48000) and audio.dtype == np.float32
    # Compare with the ideal 48 kHz tone away from the edges (filter transients).
    ideal = _tone(48000, 1.0, freq=1000.0)
    mid = slice(4800, 43200)
    assert np.abs(audio[0, mid] - ideal[mid]).max() < 2e-3
    spectrum = np.abs(np.fft.rfft(audio[0]))
    assert np.argmax(spectrum) == 1000  # 1 Hz bins for a 1 s clip


@pytest.mark.parametrize("method", ["soxr_hq", "soxr_vhq"])
def test_stereo_resampling_is_soxr_of_the_interleaved_audio(method):
    # resample calls soxr per channel; the result must be the bits of soxr's own stereo call.
    import soxr

    from dcase_effdl.features.audio import resample

    stereo = np.ascontiguousarray(_tone(48000, 0.5, freq=440.0, channels=2).T)  # (2, samples)
    ours = resample(stereo, 48000, 22050, method)
    theirs = soxr.resample(stereo.T.copy(), 48000, 22050, quality="HQ" if method == "soxr_hq" else "VHQ")
    assert ours.dtype == np.float32 and ours.shape == (2, 11025)
    np.testing.assert_array_equal(ours, theirs.T)


def test_pad_and_cut_to_duration(tmp_path):
    short = tmp_path / "short.wav"
    long = tmp_path / "long.wav"
    sf.write(short, _tone(48000, 0.75), 48000)
    sf.write(long, _tone(48000, 3.0), 48000)
    a = load_audio(short, _cfg(duration=1.0))
    assert a.shape == (1, 48000)
    assert np.all(a[0, 36000:] == 0) and np.abs(a[0, :36000]).max() > 0.4
    b = load_audio(long, _cfg(duration=1.0))
    assert b.shape == (1, 48000)
    c = load_audio(long, _cfg(duration=None))
    assert c.shape == (1, 144000)
    np.testing.assert_array_equal(b, c[:, :48000])  # same decoded samples, only cut: no arithmetic


# ---------------------------------------------------------------- errors


def _message(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_missing_file(tmp_path):
    with pytest.raises(UserError) as e:
        load_audio(tmp_path / "audio" / "x.wav", _cfg())
    assert _message(e) == f"{tmp_path / 'audio' / 'x.wav'}: file not found"


def test_empty_file(tmp_path):
    path = tmp_path / "e.wav"
    path.write_bytes(b"")
    with pytest.raises(UserError) as e:
        load_audio(path, _cfg())
    assert _message(e) == f"{path}: empty file (0 bytes)"


def test_not_audio(tmp_path):
    path = tmp_path / "g.wav"
    path.write_bytes(b"this is not a wav file" * 20)
    with pytest.raises(UserError) as e:
        load_audio(path, _cfg())
    assert _message(e) == f"{path}: not a readable audio file (Format not recognised)"


def test_zero_frames(tmp_path):
    path = tmp_path / "z.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 48000)
    with pytest.raises(UserError) as e:
        load_audio(path, _cfg())
    assert _message(e) == f"{path}: no audio samples (0 frames)"
    with pytest.raises(AudioProblem, match="no audio samples"):
        check_audio(path)


def test_much_shorter_than_duration(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, _tone(48000, 2.1), 48000)
    with pytest.raises(AudioProblem) as e:
        load_audio(path, _cfg(duration=10.0))
    assert _message(e) == f"{path}: 2.1 s long, expected 10.0 s"
    assert e.value.reason == "2.1 s long, expected 10.0 s"


def test_truncated_wav(tmp_path):
    path = tmp_path / "t.wav"
    sf.write(path, _tone(48000, 10.0), 48000, subtype="PCM_24")
    data = path.read_bytes()
    path.write_bytes(data[: 44 + 3 * 48000 * 8])  # header + 8 of 10 s: long enough to pass the length check
    with pytest.raises(UserError) as e:
        load_audio(path, _cfg(duration=10.0))
    assert _message(e) == f"{path}: truncated WAV file (header says 10.0 s of audio, the file holds 8.0 s)"
    with pytest.raises(UserError, match="truncated WAV"):
        check_audio(path)


def test_truncated_flac(tmp_path):
    path = tmp_path / "t.flac"
    rng = np.random.default_rng(0)
    sf.write(path, (rng.standard_normal(48000 * 4) * 0.1).astype(np.float32), 48000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(UserError) as e:
        load_audio(path, _cfg(duration=4.0))
    assert _message(e).startswith(f"{path}: cannot decode audio (")
    # check-data's check decodes compressed files: its header alone looks complete.
    with pytest.raises(UserError) as e:
        check_audio(path)
    assert _message(e).startswith(f"{path}: cannot decode audio (")


def test_check_audio_gives_the_header(tmp_path):
    path = tmp_path / "i.flac"
    sf.write(path, _tone(16000, 2.5, channels=2), 16000, subtype="PCM_24")
    info = check_audio(path)
    assert info == {
        "sample_rate": 16000,
        "channels": 2,
        "frames": 40000,
        "duration": 2.5,
        "subtype": "PCM_24",
        "format": "FLAC",
    }
    with pytest.raises(UserError, match="file not found"):
        check_audio(tmp_path / "nope.wav")


@pytest.mark.parametrize("subtype,bad", [("FLOAT", np.nan), ("FLOAT", -np.inf), ("DOUBLE", np.inf)])
def test_nan_or_inf_samples_are_bad_for_check_audio_and_load_audio(tmp_path, subtype, bad):
    path = tmp_path / "n.wav"
    x = _tone(48000, 2.0, channels=2)
    x[SCAN_BLOCK_FRAMES + 5, 1] = bad  # in the second block check_audio reads
    sf.write(path, x, 48000, subtype=subtype)
    with pytest.raises(AudioProblem) as e:
        check_audio(path)
    assert _message(e) == f"{path}: audio contains NaN or infinite samples"
    with pytest.raises(AudioProblem) as e:
        load_audio(path, _cfg(duration=2.0))
    assert _message(e) == f"{path}: audio contains NaN or infinite samples"
    x[SCAN_BLOCK_FRAMES + 5, 1] = 0.0
    sf.write(path, x, 48000, subtype=subtype)
    assert check_audio(path)["frames"] == 96000
