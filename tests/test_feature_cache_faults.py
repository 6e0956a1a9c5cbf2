"""Feature cache under faults: killed extraction resumes, bad audio is reported, float16 storage is faithful."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dcase_effdl.config import FeatureConfig
from dcase_effdl.errors import UserError
from dcase_effdl.feature_cache import extract_features

CFG = FeatureConfig(name="t", sample_rate=48000, duration=2.0)  # baseline front end, 2-s clips


def _write_clips(root: Path, n: int, seconds: float = 2.0, rate: int = 48000, seed: int = 0) -> list[str]:
    """Genuine-format clips: 24-bit stereo WAV with TAU-style names."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        name = f"audio/park-paris-{i}-{1000 + i}-a.wav"
        audio = (0.05 * rng.standard_normal((int(seconds * rate), 2))).astype(np.float32)
        sf.write(root / name, audio, rate, subtype="PCM_24")
        names.append(name)
    return names


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.npy"))


@pytest.mark.slow
def test_killed_extraction_resumes_and_gives_identical_features(tmp_path):
    root = tmp_path / "data"
    names = _write_clips(root, 60)
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        from dcase_effdl.config import FeatureConfig
        from dcase_effdl.feature_cache import extract_features
        names = [f"audio/park-paris-{{i}}-{{1000 + i}}-a.wav" for i in range(60)]
        extract_features({str(root)!r}, names, FeatureConfig(name="t", sample_rate=48000, duration=2.0),
                         {str(cache)!r}, workers=2, progress=False)
    """)
    # Own session: the kill takes the worker processes down with the parent, like a power cut.
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(_entries(cache)) < 6:
            assert proc.poll() is None, "extraction finished or failed before it could be killed"
            assert time.monotonic() < deadline, "extraction did not start within 120 s"
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    time.sleep(0.2)  # let the killed workers' last writes settle
    finished = {p: p.stat().st_mtime_ns for p in _entries(cache)}
    assert 6 <= len(finished) < 60

    store = extract_features(root, names, CFG, cache, workers=1, progress=False)
    assert store.n_reused == len(finished) and store.n_computed == 60 - len(finished)
    assert all(p.stat().st_mtime_ns == t for p, t in finished.items())  # reused, not rewritten
    assert not list(cache.rglob("*.tmp")) or all(p.name.startswith(".") for p in cache.rglob("*.tmp"))

    fresh = extract_features(root, names, CFG, tmp_path / "fresh", workers=1, progress=False)
    a, b = store.load_many(names), fresh.load_many(names)
    assert a.shape == (60, 1, 40, 101)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("channels", [2, 3])
def test_mono_downmix_equals_numpy_mean_bit_for_bit(tmp_path, channels):
    from dcase_effdl.audio import load_audio

    data = (0.3 * np.random.default_rng(channels).standard_normal((48000, channels))).astype(np.float32)
    sf.write(tmp_path / "x.wav", data, 48000, subtype="FLOAT")
    out = load_audio(tmp_path / "x.wav", FeatureConfig(name="t", duration=1.0))
    np.testing.assert_array_equal(out, data.T.mean(axis=0, keepdims=True, dtype=np.float32))
