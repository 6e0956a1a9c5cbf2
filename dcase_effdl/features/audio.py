"""Read an audio file into a float32 (channels, samples) array at the feature definition's rate, and say whether a file is good."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from dcase_effdl.config import FeatureConfig
from dcase_effdl.errors import UserError

# A clip shorter than this fraction of `FeatureConfig.duration` is an error, not something to pad:
# it is almost always a truncated download or a wrong file, and padding would hide it.
MIN_DURATION_FRACTION = 0.5

# libsndfile's log for a WAV whose data chunk runs past the end of the file: "data : 1440000 (should be 287964)".
_WAV_TRUNCATED = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Streaming writers leave the data size as 0 or all ones; those files are not truncated.
_WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)


class AudioProblem(UserError):
    """A bad audio file: `str()` is `"<path>: <reason>"`; `reason` alone is kept for summaries."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self):  # picklable across worker processes
        return (AudioProblem, (self.path, self.reason))


def _open_reason(exc: Exception) -> str:
    """libsndfile's message without the "Error opening '<path>': " prefix (the path is named already)."""
    text = str(exc).strip()
    text = re.sub(r"^Error opening .*?: ", "", text)
    text = re.sub(r"^Error\s*:\s*", "", text)
    return text.rstrip(".") or type(exc).__name__


def _check_file(path: Path) -> None:
    if not path.exists():
        raise AudioProblem(path, "file not found")
    if not path.is_file():
        raise AudioProblem(path, "not a file")
    if path.stat().st_size == 0:
        raise AudioProblem(path, "empty file (0 bytes)")


def _open(path: Path) -> sf.SoundFile:
    _check_file(path)
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise AudioProblem(path, f"not a readable audio file ({_open_reason(exc)})") from None


def _check_truncated_wav(path: Path, f: sf.SoundFile) -> None:
    """A WAV cut short (interrupted copy) still opens; libsndfile only logs the size mismatch."""
    if f.format not in ("WAV", "WAVEX", "RF64"):
        return
    match = _WAV_TRUNCATED.search(f.extra_info)
    if not match:
        return
    header_bytes, actual_bytes = int(match.group(1)), int(match.group(2))
    if header_bytes in _WAV_UNKNOWN_SIZES or actual_bytes >= header_bytes:
        return
    frame_bytes = f.channels * _bytes_per_sample(f.subtype)
    if frame_bytes:
        header_s = header_bytes / frame_bytes / f.samplerate
        actual_s = actual_bytes / frame_bytes / f.samplerate
        raise AudioProblem(
            path, f"truncated WAV file (header says {header_s:.1f} s of audio, the file holds {actual_s:.1f} s)"
        )
    raise AudioProblem(path, f"truncated WAV file (header says {header_bytes} data bytes, the file holds {actual_bytes})")


def _bytes_per_sample(subtype: str) -> int:
    return {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}.get(subtype, 0)


# Only float formats store sample values as written; integer PCM (WAV, FLAC, ...) decodes into [-1, 1)
# and cannot hold NaN or inf, so only float files' samples are read by check_audio.
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
# Compressed formats whose header (frame count) says nothing of the stream behind it: a truncated
# FLAC has a complete STREAMINFO and fails only when decoded, so check_audio decodes these fully
# (a 10 s 16 kHz FLAC: a few ms; TAU's PCM WAVs are judged from the header and the file size).
COMPRESSED_FORMATS = ("FLAC", "OGG", "MP3")
# Frames per read when check_audio scans a float file: bounded memory for any length (1.5 MB stereo).
SCAN_BLOCK_FRAMES = 1 << 16


def _check_opened(path: Path, f: sf.SoundFile) -> None:
    """Checks on an opened file's header: not truncated, has samples."""
    _check_truncated_wav(path, f)
    if f.frames == 0:
        raise AudioProblem(path, "no audio samples (0 frames)")


def _check_finite(path: Path, samples: np.ndarray) -> None:
    if not np.isfinite(samples).all():
        raise AudioProblem(path, "audio contains NaN or infinite samples")


def _decode_error(path: Path, exc: Exception) -> AudioProblem:
    return AudioProblem(path, f"cannot decode audio ({_open_reason(exc)})")


def check_audio(path: str | Path) -> dict:
    """Is this audio file good? The one check `check-data` and the feature cache's pre-scan both run.

    Returns the header facts of a good file: sample_rate (Hz), channels, frames, duration (s),
    subtype, format. Raises AudioProblem (a UserError) for a missing, empty, unreadable or truncated
    file, one without samples, and one with NaN or infinite samples. Integer WAVs are judged from
    the header and the file size; float files (FLOAT_SUBTYPES) and compressed ones (COMPRESSED_FORMATS)
    are also decoded, as float32 like `load_audio` reads them (a 10 s 48 kHz stereo float WAV: ~2 ms).
    """
    path = Path(path)
    with _open(path) as f:
        _check_opened(path, f)
        if f.subtype in FLOAT_SUBTYPES or f.format in COMPRESSED_FORMATS:
            decoded = 0
            try:
                for block in f.blocks(blocksize=SCAN_BLOCK_FRAMES, dtype="float32", always_2d=True):
                    _check_finite(path, block)
                    decoded += len(block)
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise _decode_error(path, exc) from None
            if decoded != f.frames:  # a decoder that stops early without an error
                raise AudioProblem(path, f"cannot decode audio (header says {f.frames} frames, "
                                         f"{decoded} decoded)")
        return {
            "sample_rate": int(f.samplerate),
            "channels": int(f.channels),
            "frames": int(f.frames),
            "duration": f.frames / f.samplerate if f.samplerate else 0.0,
            "subtype": f.subtype,
            "format": f.format,
        }


# Integer PCM WAV subtypes whose samples numpy converts (bytes per sample). libsndfile's float
# conversion of 24-bit samples took 18 ms for a 10 s 48 kHz stereo TAU clip (2 loaded cores; reading
# its 2.9 MB took 0.5 ms), more than the log-mel computed from it; numpy takes 4 ms for the same
# bits: a W-bit sample x becomes x / 2**(W-1), exact in float32 (W <= 24 significant bits, a power-of-2
# scale), which is what libsndfile computes. Other formats (FLOAT, FLAC, RF64, big-endian RIFX) are
# read by libsndfile.
NUMPY_PCM_SUBTYPES = {"PCM_16": 2, "PCM_24": 3}
# Chunks (fmt, LIST, JUNK, ...) looked at before giving up on finding the data chunk of a WAV.
MAX_WAV_CHUNKS = 64


def _wav_data_offset(path: Path) -> int | None:
    """Byte offset of the sample data of a little-endian RIFF WAV, or None if it has no plain data chunk."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        pos = 12
        for _ in range(MAX_WAV_CHUNKS):
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                return pos + 8
            pos += 8 + size + (size & 1)  # chunks are padded to an even length
    return None


def _read_pcm(path: Path, f: sf.SoundFile, frames: int) -> np.ndarray | None:
    """The first `frames` frames of an integer PCM WAV as float32 (channels, frames), bit for bit what
    `f.read(frames, dtype='float32').T` gives; None where libsndfile must read it (see NUMPY_PCM_SUBTYPES)."""
    width = NUMPY_PCM_SUBTYPES.get(f.subtype)
    if width is None or f.format not in ("WAV", "WAVEX") or f.endian not in ("FILE", "LITTLE"):
        return None
    offset = _wav_data_offset(path)
    count = frames * f.channels
    if offset is None or offset + count * width > path.stat().st_size:
        return None
    # Converted straight into (channels, frames): the transposing copy is part of the conversion
    # instead of another pass over the samples (a 10 s 48 kHz stereo clip: 3.8 MB).
    if width == 2:
        ints = np.fromfile(path, dtype="<i2", count=count, offset=offset).reshape(frames, f.channels).T
        scale = np.float32(2.0**-15)
    else:
        # Each sample read as the little-endian int32 of its 3 bytes and the byte before (one byte of
        # the previous sample, or of the header): x << 8 plus that byte, which the shift drops.
        raw = np.fromfile(path, dtype=np.uint8, count=count * 3 + 1, offset=offset - 1)
        shifted = np.ndarray(shape=(frames, f.channels), dtype="<i4", buffer=raw, strides=(3 * f.channels, 3))
        ints = np.right_shift(shifted.T, 8, out=np.empty((f.channels, frames), dtype=np.int32))
        scale = np.float32(2.0**-23)
    # int -> float32 is exact (at most 24 significant bits), and so is the power-of-2 scale.
    return np.multiply(ints, scale, dtype=np.float32, out=np.empty((f.channels, frames), dtype=np.float32))


def resample(audio: np.ndarray, rate_in: int, rate_out: int, method: str) -> np.ndarray:
    """Resample float32 (channels, samples) audio from `rate_in` to `rate_out` Hz."""
    if rate_in == rate_out:
        return audio
    if method in ("soxr_hq", "soxr_vhq"):
        import soxr

        quality = "HQ" if method == "soxr_hq" else "VHQ"
        # One channel at a time: the same bits as one interleaved (samples, channels) call (soxr filters
        # channels independently; checked at 16, 22.05 and 44.1 kHz), without transposing in and out.
        return np.stack([soxr.resample(samples, rate_in, rate_out, quality=quality) for samples in audio])
    if method == "scipy":
        from scipy.signal import resample_poly

        g = math.gcd(int(rate_in), int(rate_out))
        out = resample_poly(audio, rate_out // g, rate_in // g, axis=-1)
        return out.astype(np.float32, copy=False)
    raise ValueError(f"unknown resampler {method!r}")


def load_audio(path: str | Path, cfg: FeatureConfig) -> np.ndarray:
    """Audio as float32 (channels, samples) at `cfg.sample_rate` Hz, fitted to `cfg.duration` seconds.

    channels: 1 for `cfg.channels == 'mono'` (mean of the file's channels), 2 for 'stereo' (a mono
    file is duplicated). Clips are zero-padded at the end or cut to `cfg.duration` when it is set.
    Any problem (missing, empty, unreadable, truncated, no samples, NaN or infinite samples, much
    shorter than `cfg.duration`) raises AudioProblem, a UserError naming the file; the same checks
    as `check_audio` apply to what is read.
    """
    path = Path(path)
    with _open(path) as f:
        _check_opened(path, f)
        rate = int(f.samplerate)
        if cfg.duration is not None:
            # Read only what the clip needs (+1 s margin for the resampler's edge), not a whole long file.
            want = min(f.frames, int(math.ceil((cfg.duration + 1.0) * rate)))
        else:
            want = f.frames
        audio = _read_pcm(path, f, want)  # (channels, samples)
        integer = audio is not None  # integer samples: finite by construction
        if audio is None:
            try:
                audio = f.read(frames=want, dtype="float32", always_2d=True).T
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise _decode_error(path, exc) from None
    if audio.shape[1] == 0:
        raise AudioProblem(path, "no audio samples (0 frames)")
    length_s = audio.shape[1] / rate
    if cfg.duration is not None and length_s < MIN_DURATION_FRACTION * cfg.duration:
        raise AudioProblem(path, f"{length_s:.1f} s long, expected {cfg.duration:.1f} s")
    if not integer:
        _check_finite(path, audio)

    if cfg.channels == "mono":
        if audio.shape[0] > 1:
            # Same sums in the same order as audio.mean(axis=0, dtype=float32), bit for bit, but ~20x
            # faster: numpy's reduction over the strided channel axis costs more than decoding the file.
            total = audio[0].copy()
            for channel in audio[1:]:
                total += channel
            audio = np.divide(total, np.float32(audio.shape[0]), out=total)[None]
    else:
        if audio.shape[0] == 1:
            audio = np.repeat(audio, 2, axis=0)
        elif audio.shape[0] != 2:
            raise AudioProblem(path, f"{audio.shape[0]} channels; stereo features need a mono or 2-channel file")
    audio = resample(np.ascontiguousarray(audio, dtype=np.float32), rate, cfg.sample_rate, cfg.resample)

    if cfg.duration is not None:
        n = int(round(cfg.duration * cfg.sample_rate))
        if audio.shape[1] >= n:
            audio = audio[:, :n]
        else:
            audio = np.pad(audio, ((0, 0), (0, n - audio.shape[1])))
    return np.ascontiguousarray(audio, dtype=np.float32)
