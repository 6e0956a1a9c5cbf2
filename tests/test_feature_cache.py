"""Feature cache: reuse, atomic entries, keys per definition and per audio version, bad audio, parallel == serial."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from dcase_effdl.features import cache as feature_cache
from dcase_effdl.features.audio import load_audio
from dcase_effdl.config import FeatureConfig
from dcase_effdl.errors import UserError
from dcase_effdl.features.cache import extract_features
from dcase_effdl.features.logmel import feature_key, logmel

# A small, fast front end: 1-s clips at 16 kHz -> (1, 32, 101).
CFG = FeatureConfig(
    name="small", sample_rate=16000, duration=1.0, n_fft=512, win_length=400, hop_length=160, n_mels=32
)
SHAPE = (1, 32, 101)


def _write(root: Path, name: str, seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> str:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(seed).standard_normal(int(round(seconds * rate))) * 0.1
    sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
    return name


def _clips(root: Path, n: int, **kw) -> list[str]:
    return [_write(root, f"audio/scene-city-{i}-{i}-a.wav", seed=i, **kw) for i in range(n)]


def _expected(root: Path, name: str, store) -> np.ndarray:
    """The features computed directly, rounded to the dtype the cache stores.

    Equal to the cached entry bit for bit by construction: the cache calls the same load_audio and
    logmel, and logmel computes each clip alone, in fixed shapes, with one intra-op thread.
    """
    stored = np.load(store.entry_path(name), allow_pickle=False).dtype
    return logmel(load_audio(root / name, CFG), CFG).astype(stored).astype(np.float32)


def _mtimes(store) -> dict[str, int]:
    return {name: store.entry_path(name).stat().st_mtime_ns for name in store.filenames}


def test_extract_then_reuse(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    names = _clips(root, 4)
    store = extract_features(root, names, CFG, cache, workers=1, progress=False)
    assert (store.n_computed, store.n_reused) == (4, 0)
    assert store.key == feature_key(CFG) and store.path == cache / store.key
    assert store.filenames == names and store.problems == []
    record = yaml.safe_load((store.path / "features.yaml").read_text())
    assert record["key"] == store.key and record["definition"]["n_mels"] == 32
    for name in names:
        entry = store.entry_path(name)
        # Named from the file's relative path plus a stamp of the audio file, not from a row index.
        assert entry.parent == store.path / "audio" and entry.name.startswith(Path(name).name + ".")
        loaded = store.load(name)
        assert loaded.dtype == np.float32 and loaded.shape == SHAPE
        np.testing.assert_array_equal(loaded, _expected(root, name, store))
    assert store.load_many(names[::-1]).shape == (4, *SHAPE)
    before = _mtimes(store)

    time.sleep(0.01)
    again = extract_features(root, names[::-1], CFG, cache, workers=1, progress=False)  # other order
    assert (again.n_computed, again.n_reused) == (0, 4)
    assert _mtimes(again) == before  # nothing rewritten
    np.testing.assert_array_equal(again.load_many(names), store.load_many(names))  # the same files, reused


def test_leftover_temp_file_is_ignored_and_entry_recomputed(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    names = _clips(root, 3)
    store = extract_features(root, names, CFG, cache, workers=1, progress=False)
    entry = store.entry_path(names[1])
    reference = store.load(names[1])
    # A crash while writing: the entry itself never appeared, a half-written temp file did.
    data = entry.read_bytes()
    entry.unlink()
    fresh_tmp = entry.with_name(f".{entry.name}.999999.deadbeef{feature_cache.TEMP_SUFFIX}")
    fresh_tmp.write_bytes(data[: len(data) // 2])
    old_tmp = entry.with_name(f".{entry.name}.999998.deadbeef{feature_cache.TEMP_SUFFIX}")
    old_tmp.write_bytes(data[: len(data) // 3])
    hours_ago = time.time() - 2 * 3600
    os.utime(old_tmp, (hours_ago, hours_ago))

    again = extract_features(root, names, CFG, cache, workers=1, progress=False)
    assert (again.n_computed, again.n_reused) == (1, 2)
    np.testing.assert_array_equal(again.load(names[1]), reference)  # recomputed: bit-equal as in _expected
    assert fresh_tmp.exists()  # may belong to a live run: left alone
    assert not old_tmp.exists()  # a crashed run's leftover: removed


def test_failed_write_leaves_no_entry_and_no_temp_file(tmp_path, monkeypatch):
    root, cache = tmp_path / "data", tmp_path / "cache"
    names = _clips(root, 2)

    def crash(file, array, allow_pickle=False):
        file.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(feature_cache.np, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        extract_features(root, names, CFG, cache, workers=1, progress=False)
    monkeypatch.undo()
    folder = cache / feature_key(CFG)
    assert not list(folder.rglob("*.npy")) and not list(folder.rglob("*.tmp"))
    store = extract_features(root, names, CFG, cache, workers=1, progress=False)
    assert store.n_computed == 2


def test_damaged_entry_recomputed_by_extraction_and_reported_by_load(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    names = _clips(root, 2)
    store = extract_features(root, names, CFG, cache, workers=1, progress=False)
    entry = store.entry_path(names[0])
    reference = store.load(names[0])
    entry.write_bytes(entry.read_bytes()[:100])  # truncated after it was written
    with pytest.raises(UserError) as info:
        store.load(names[0])
    message = str(info.value)
    assert message.startswith(f"{entry}: corrupt feature cache entry (")
    assert message.endswith("delete this file and run again to recompute it") and "\n" not in message

    again = extract_features(root, names, CFG, cache, workers=1, progress=False)
    assert (again.n_computed, again.n_reused) == (1, 1)  # wrong size: recomputed, not trusted
    np.testing.assert_array_equal(again.load(names[0]), reference)  # recomputed: bit-equal as in _expected


def test_changed_definition_uses_another_folder(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    names = _clips(root, 2)
    store = extract_features(root, names, CFG, cache, workers=1, progress=False)
    other_cfg = dataclasses.replace(CFG, n_mels=24)
    other = extract_features(root, names, other_cfg, cache, workers=1, progress=False)
    assert other.key != store.key and other.path != store.path
    assert (other.n_computed, other.n_reused) == (2, 0)
    assert other.load(names[0]).shape == (1, 24, 101) and store.load(names[0]).shape == SHAPE
    renamed = extract_features(root, names, dataclasses.replace(CFG, name="other-name"), cache, workers=1,
                               progress=False)  # fmt: skip
    assert renamed.key == store.key and renamed.n_reused == 2  # the name is a label, not a parameter


def test_edited_audio_is_recomputed_and_old_entry_removed(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    names = _clips(root, 2)
    store = extract_features(root, names, CFG, cache, workers=1, progress=False)
    old_entry, old_features = store.entry_path(names[0]), store.load(names[0])
    _write(root, names[0], seed=99)  # new content
    stat = (root / names[0]).stat()
    os.utime(root / names[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # coarse clocks

    again = extract_features(root, names, CFG, cache, workers=1, progress=False)
    assert (again.n_computed, again.n_reused) == (1, 1)
    assert again.entry_path(names[0]) != old_entry and not old_entry.exists()
    assert not np.array_equal(again.load(names[0]), old_features)
    np.testing.assert_array_equal(again.load(names[0]), _expected(root, names[0], again))


def test_bad_audio_stop_keeps_finished_entries_and_skip_lists_problems(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    good = _clips(root, 3)
    short = _write(root, "audio/short.wav", seconds=0.4)
    names = [good[0], good[1], short, good[2]]
    # 3 of 4 files at 1.0 s is no clear majority, so the short file is caught while decoding it.
    with pytest.raises(UserError) as info:
        extract_features(root, names, CFG, cache, workers=1, progress=False)
    assert str(info.value) == f"{root / short}: 0.4 s long, expected 1.0 s"
    folder = cache / feature_key(CFG)
    kept = sorted(p.name.split(".wav.")[0] for p in folder.rglob("*.npy"))
    assert kept[:2] == ["scene-city-0-0-a", "scene-city-1-1-a"]  # finished before the stop: kept

    store = extract_features(root, names, CFG, cache, workers=1, on_bad_audio="skip", progress=False)
    assert store.problems == [(short, "0.4 s long, expected 1.0 s")]
    assert store.filenames == good and store.n_reused >= 2 and store.n_computed + store.n_reused == 3
    with pytest.raises(UserError, match=r"audio/short.wav: no features in .*\(skipped: 0.4 s long"):
        store.load(short)


def test_bad_headers_stop_and_skip_messages(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    good = _clips(root, 3)
    (root / "audio" / "empty.wav").write_bytes(b"")
    full = (root / good[0]).read_bytes()
    (root / "audio" / "truncated.wav").write_bytes(full[: 44 + 2 * 4000])  # 0.25 s of 1 s
    names = [good[0], "audio/truncated.wav", "audio/empty.wav", "audio/missing.wav", good[1], good[2]]
    with pytest.raises(UserError) as info:
        extract_features(root, names, CFG, cache, workers=1, progress=False)
    message = str(info.value)
    assert message.startswith(f"{root / 'audio/truncated.wav'}: truncated WAV file (header says 1.0 s of audio, "
                              "the file holds 0.2 s)")  # fmt: skip
    assert "\n" not in message
    store = extract_features(root, names, CFG, cache, workers=1, on_bad_audio="skip", progress=False)
    assert dict(store.problems) == {
        "audio/truncated.wav": "truncated WAV file (header says 1.0 s of audio, the file holds 0.2 s)",
        "audio/empty.wav": "empty file (0 bytes)",
        "audio/missing.wav": "file not found",
    }
    assert [n for n, _ in store.problems] == ["audio/truncated.wav", "audio/empty.wav", "audio/missing.wav"]
    assert store.filenames == good


def test_file_names_must_stay_inside_the_root(tmp_path):
    with pytest.raises(UserError, match="relative paths inside the dataset root"):
        extract_features(tmp_path, ["../outside.wav"], CFG, tmp_path / "cache", workers=1, progress=False)


def test_parallel_equals_serial_bit_for_bit(tmp_path):
    root = tmp_path / "data"
    names = _clips(root, 2 * feature_cache.MIN_FILES_PER_WORKER)
    serial = extract_features(root, names, CFG, tmp_path / "serial", workers=1, progress=False)
    parallel = extract_features(root, names, CFG, tmp_path / "parallel", workers=2, progress=False)
    assert serial.n_workers == 1 and parallel.n_workers == 2  # the pool really ran
    assert parallel.n_computed == len(names) and parallel.filenames == serial.filenames
    a, b = serial.load_many(names), parallel.load_many(names)
    assert a.shape == (len(names), *SHAPE)
    # Bit-equal by construction: a worker thread runs the same per-clip, one-thread logmel as the serial path.
    np.testing.assert_array_equal(a, b)
    for name in names:  # same entry names, same bytes
        assert serial.entry_path(name).name == parallel.entry_path(name).name
        assert serial.entry_path(name).read_bytes() == parallel.entry_path(name).read_bytes()


def _copy_with_one_changed_and_one_empty(src: Path, dst: Path, names: list[str]) -> tuple[str, str]:
    """A copy of a dataset (same names, sizes and mtimes) whose names[1] holds other audio of the same
    size and mtime and whose names[2] is empty: (changed name, empty name)."""
    import shutil

    shutil.copytree(src, dst)  # copy2: mtimes kept, so only the path tells the copies apart
    changed, empty = names[1], names[2]
    stat = (dst / changed).stat()
    _write(dst, changed, seed=99)
    assert (dst / changed).stat().st_size == stat.st_size
    os.utime(dst / changed, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (dst / empty).write_bytes(b"")
    return changed, empty


def _entry_files(cache: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")}


def test_two_datasets_with_the_same_names_keep_their_own_entries(tmp_path):
    cache = tmp_path / "cache"
    names = _clips(tmp_path / "a", 5)
    original = extract_features(tmp_path / "a", names, CFG, cache, workers=1, progress=False)
    features_a = original.load_many(names)
    kept = _entry_files(cache)
    changed, empty = _copy_with_one_changed_and_one_empty(tmp_path / "a", tmp_path / "b", names)

    with pytest.raises(UserError, match=f"^{tmp_path / 'b' / empty}: empty file"):
        extract_features(tmp_path / "b", names, CFG, cache, workers=1, progress=False)
    assert _entry_files(cache) == kept  # the bad copy removed and rewrote nothing

    copy = extract_features(tmp_path / "b", names, CFG, cache, workers=1, on_bad_audio="skip", progress=False)
    assert copy.problems == [(empty, "empty file (0 bytes)")]
    assert (copy.n_computed, copy.n_reused) == (4, 0)  # the copy's own entries, none shared
    assert all(copy.entry_path(n) != original.entry_path(n) for n in copy.filenames)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # the original's entries untouched
    np.testing.assert_array_equal(copy.load(changed), _expected(tmp_path / "b", changed, copy))
    assert not np.array_equal(copy.load(changed), original.load(changed))  # its own audio, not a's

    again = extract_features(tmp_path / "a", names, CFG, cache, workers=1, progress=False)
    assert (again.n_computed, again.n_reused) == (0, 5)
    np.testing.assert_array_equal(again.load_many(names), features_a)  # the same entries, reused


def test_a_file_turned_bad_keeps_the_entry_of_its_good_version(tmp_path):
    root, cache = tmp_path / "data", tmp_path / "cache"
    names = _clips(root, 3)
    store = extract_features(root, names, CFG, cache, workers=1, progress=False)
    good = (root / names[0]).read_bytes()
    stat = (root / names[0]).stat()
    (root / names[0]).write_bytes(b"")  # e.g. an interrupted re-copy
    with pytest.raises(UserError, match="empty file"):
        extract_features(root, names, CFG, cache, workers=1, progress=False)
    assert store.entry_path(names[0]).exists()  # not replaced by anything: kept
    (root / names[0]).write_bytes(good)
    os.utime(root / names[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # restored as it was
    again = extract_features(root, names, CFG, cache, workers=1, progress=False)
    assert (again.n_computed, again.n_reused) == (0, 3)


_EXTRACT_WHEN_TOLD = """
import json, sys, time
from pathlib import Path
from dcase_effdl.config import FeatureConfig
from dcase_effdl.features.cache import extract_features
from dcase_effdl.features.logmel import frontend_arrays
root, cache, names, on_bad = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3].split(","), sys.argv[4]
cfg = FeatureConfig(name="small", sample_rate=16000, duration=1.0, n_fft=512, win_length=400, hop_length=160, n_mels=32)
frontend_arrays(cfg)  # imports done: say ready, then start together with the other process
(root.parent / f"{root.name}.ready").touch()
while not (root.parent / "go").exists():
    time.sleep(0.002)
store = extract_features(root, names, cfg, cache, workers=1, on_bad_audio=on_bad, progress=False)
print(json.dumps({"computed": store.n_computed, "problems": store.problems}))
"""


@pytest.mark.slow
def test_two_datasets_with_the_same_names_on_one_cache_at_once(tmp_path):
    import json
    import subprocess
    import sys

    cache = tmp_path / "cache"
    names = _clips(tmp_path / "a", 12)
    changed, empty = _copy_with_one_changed_and_one_empty(tmp_path / "a", tmp_path / "b", names)
    procs = [
        subprocess.Popen([sys.executable, "-c", _EXTRACT_WHEN_TOLD, str(tmp_path / name), str(cache), ",".join(names),
                          on_bad], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, on_bad in (("a", "stop"), ("b", "skip"))
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"{name}.ready").exists() for name in "ab"):
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        assert time.monotonic() < deadline, "the extraction processes did not start within 120 s"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0] == {"computed": 12, "problems": []}
    assert results[1] == {"computed": 11, "problems": [[empty, "empty file (0 bytes)"]]}
    assert len(list(cache.rglob("*.npy"))) == 12 + 11  # each dataset its own entries

    a = extract_features(tmp_path / "a", names, CFG, cache, workers=1, progress=False)
    b = extract_features(tmp_path / "b", names, CFG, cache, workers=1, on_bad_audio="skip", progress=False)
    assert (a.n_computed, a.n_reused, b.n_computed, b.n_reused) == (0, 12, 0, 11)
    for store, root in ((a, tmp_path / "a"), (b, tmp_path / "b")):
        for name in store.filenames:
            np.testing.assert_array_equal(store.load(name), _expected(root, name, store))
    assert not np.array_equal(a.load(changed), b.load(changed))
