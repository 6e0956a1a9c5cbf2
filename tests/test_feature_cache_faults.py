"""Feature cache under faults: killed extraction resumes, bad audio is reported, float16 storage is faithful."""

from __future__ import annotations

import json
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
from dcase_effdl.features.cache import extract_features

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
        from dcase_effdl.features.cache import extract_features
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
    # Byte equality is guaranteed by construction: each clip's features are computed alone, in fixed
    # shapes, with one intra-op thread, whichever worker and run computed them (see logmel_batch).
    np.testing.assert_array_equal(a, b)
    for name in names:
        assert store.entry_path(name).read_bytes() == fresh.entry_path(name).read_bytes(), name


# Run with OMP_NUM_THREADS and torch.set_num_threads at N: one clip's entry alone, the 7 clips' entries
# extracted together, the 16 clips' entries computed by 2 worker threads, and the entry bytes that
# logmel_batch gives for batches of 3 and 7 clips; prints {case: {filename: sha256 of the entry bytes}}.
_DIGESTS_SCRIPT = """
import hashlib, io, json, sys
from pathlib import Path
import numpy as np, torch
from dcase_effdl.config import FeatureConfig
from dcase_effdl.features.audio import load_audio
from dcase_effdl.features.cache import extract_features, storage_dtype
from dcase_effdl.features.logmel import logmel_batch

root, cache, threads = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
cfg = FeatureConfig(name="t", sample_rate=48000, duration=2.0)
names = [f"audio/park-paris-{i}-{1000 + i}-a.wav" for i in range(16)]
digest = lambda data: hashlib.sha256(data).hexdigest()

def entries(case, subset, workers):
    store = extract_features(root, subset, cfg, cache / case, workers=workers, progress=False)
    assert store.n_computed == len(subset) and store.n_workers == workers
    return {n: digest(store.entry_path(n).read_bytes()) for n in subset}

def batched(size):
    audio = np.stack([load_audio(root / n, cfg) for n in names[:7]])
    out = {}
    for start in range(0, 7, size):
        feats = logmel_batch(audio[start : start + size], cfg)
        for name, clip in zip(names[start : start + size], feats):
            buf = io.BytesIO()
            np.save(buf, clip.astype(storage_dtype(cfg)), allow_pickle=False)  # as the cache writes it
            out[name] = digest(buf.getvalue())
    return out

print(json.dumps({"alone": entries("alone", names[:1], 1), "seven": entries("seven", names[:7], 1),
                  "workers": entries("workers", names, 2), "batch3": batched(3), "batch7": batched(7)}))
"""


@pytest.mark.slow
def test_entry_bytes_do_not_depend_on_batch_thread_count_or_workers(tmp_path):
    # Exact equality is guaranteed by construction (logmel computes each clip alone, in fixed shapes,
    # with one intra-op thread); before that, 2 threads changed clips computed in other batch shapes.
    root = tmp_path / "data"
    names = _write_clips(root, 16)
    runs = {}
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, "-c", _DIGESTS_SCRIPT, str(root), str(tmp_path / f"cache{threads}"),
                              str(threads)], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        runs[threads] = json.loads(out.stdout.strip().splitlines()[-1])
    reference = runs[1]["alone"][names[0]]
    for threads, cases in runs.items():
        assert sorted(cases["workers"]) == sorted(names)
        for case, digests in cases.items():
            assert digests[names[0]] == reference, (threads, case)  # the one clip, every way
            for name, value in digests.items():
                assert value == runs[1]["workers"][name], (threads, case, name)  # and every other clip
    assert len(set(runs[1]["workers"].values())) == len(names)  # 16 different clips, 16 different entries


@pytest.mark.parametrize("channels", [2, 3])
def test_mono_downmix_equals_numpy_mean_bit_for_bit(tmp_path, channels):
    from dcase_effdl.features.audio import load_audio

    data = (0.3 * np.random.default_rng(channels).standard_normal((48000, channels))).astype(np.float32)
    sf.write(tmp_path / "x.wav", data, 48000, subtype="FLOAT")
    out = load_audio(tmp_path / "x.wav", FeatureConfig(name="t", duration=1.0))
    # Exact by construction: float32 additions are correctly rounded on every CPU (scalar or SIMD), and
    # both add the channels first to last before one division (numpy sums fewer than 8 terms one after
    # another; from 8 channels on it switches to pairwise blocks, and the two then differ).
    np.testing.assert_array_equal(out, data.T.mean(axis=0, keepdims=True, dtype=np.float32))


def _bad_dataset(root: Path) -> tuple[list[str], dict[str, str]]:
    """24 good 2-s clips plus one of each kind of bad file; returns (all names, {bad name: reason start})."""
    names = _write_clips(root, 24)
    audio = root / "audio"
    bad = {
        "audio/bad-empty-0-0-a.wav": "empty file",
        "audio/bad-corrupt-0-0-a.wav": "not a readable audio file",
        "audio/bad-truncated-0-0-a.wav": "truncated WAV file",
        "audio/bad-rate-0-0-a.wav": "unlike the other files: 44100 Hz (most files: 48000 Hz)",
        "audio/bad-length-0-0-a.wav": "unlike the other files: 1.50 s (most files: 2.00 s)",
    }
    (audio / "bad-empty-0-0-a.wav").write_bytes(b"")
    (audio / "bad-corrupt-0-0-a.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    full = (root / names[0]).read_bytes()
    (audio / "bad-truncated-0-0-a.wav").write_bytes(full[: len(full) // 2])
    sf.write(audio / "bad-rate-0-0-a.wav", np.zeros((88200, 2), np.float32), 44100, subtype="PCM_24")
    sf.write(audio / "bad-length-0-0-a.wav", np.zeros((72000, 2), np.float32), 48000, subtype="PCM_24")
    order = names[:3] + list(bad) + names[3:]
    return order, bad


def test_bad_audio_skipped_with_reasons(tmp_path):
    names, bad = _bad_dataset(tmp_path / "data")
    store = extract_features(tmp_path / "data", names, CFG, tmp_path / "cache", workers=1,
                             on_bad_audio="skip", progress=False)
    assert [n for n, _ in store.problems] == list(bad)  # in the order given
    for name, reason in store.problems:
        assert reason.startswith(bad[name]), (name, reason)
    assert store.n_computed == 24 and len(store) == 24 and not set(bad) & set(store.filenames)
    assert "computed 24 in" in store.summary() and "clips/s" in store.summary()
    assert store.summary().endswith("reused 0, skipped 5 bad audio file(s)")
    # A second run reuses the 24 entries and reports the same 5 files again.
    again = extract_features(tmp_path / "data", names, CFG, tmp_path / "cache", workers=1,
                             on_bad_audio="skip", progress=False)
    assert again.n_reused == 24 and again.n_computed == 0 and again.problems == store.problems


def test_bad_audio_stop_names_first_and_count_before_any_work(tmp_path):
    names, bad = _bad_dataset(tmp_path / "data")
    first = next(iter(bad))
    with pytest.raises(UserError) as info:
        extract_features(tmp_path / "data", names, CFG, tmp_path / "cache", workers=1, progress=False)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'data' / first}: empty file")
    assert message.endswith("(and 4 more bad audio file(s); dataset.on_bad_audio: skip leaves them out)")
    assert "\n" not in message
    assert _entries(tmp_path / "cache") == []  # stopped before computing anything


def test_mixed_rates_without_a_clear_majority_are_not_wrong(tmp_path):
    root = tmp_path / "data"
    names = _write_clips(root, 3) + _write_clips(root / "x", 2, rate=44100, seed=1)
    names = names[:3] + [f"x/{n}" for n in names[3:]]
    store = extract_features(root, names, CFG, tmp_path / "cache", workers=1, on_bad_audio="stop", progress=False)
    assert store.problems == [] and len(store) == 5  # 44.1 kHz files resampled, as the definition says


def test_float16_storage_is_faithful_and_half_the_size(tmp_path):
    from dcase_effdl.features.audio import load_audio
    from dcase_effdl.features.logmel import logmel

    root = tmp_path / "data"
    names = _write_clips(root, 3)
    store = extract_features(root, names, CFG, tmp_path / "cache", workers=1, progress=False)
    raw = np.load(store.entry_path(names[0]), allow_pickle=False)
    assert raw.dtype == np.float16 and store.entry_path(names[0]).stat().st_size < 40 * 101 * 2 + 200
    exact = logmel(load_audio(root / names[0], CFG), CFG)
    loaded = store.load(names[0])
    assert loaded.dtype == np.float32 and loaded.shape == exact.shape == (1, 40, 101)
    assert np.all(np.abs(loaded - exact) <= np.abs(exact) * 2.0**-11)  # float16 rounding, nothing more
    assert 0 < np.max(np.abs(loaded - exact)) * 20 / np.log(10) < 0.07  # dB

    linear = FeatureConfig(name="lin", sample_rate=48000, duration=2.0, log="none", power=2.0)
    lin = extract_features(root, names[:1], linear, tmp_path / "cache", workers=1, progress=False)
    assert np.load(lin.entry_path(names[0]), allow_pickle=False).dtype == np.float32  # may exceed 65504


def test_float32_entry_from_an_older_cache_is_recomputed(tmp_path):
    root = tmp_path / "data"
    names = _write_clips(root, 2)
    store = extract_features(root, names, CFG, tmp_path / "cache", workers=1, progress=False)
    entry = store.entry_path(names[0])
    np.save(entry, store.load(names[0]) + 1.0, allow_pickle=False)  # float32, as older code wrote
    again = extract_features(root, names, CFG, tmp_path / "cache", workers=1, progress=False)
    assert again.n_reused == 1 and again.n_computed == 1
    # Recomputed by the same per-clip, one-thread logmel: bit-equal by construction.
    np.testing.assert_array_equal(again.load(names[0]), store.load(names[0]))
