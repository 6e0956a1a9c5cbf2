"""Feature cache: one .npy of log-mel features per audio file under cache_dir/<feature_key>/, computed once.

Layout: `cache_dir/<feature_key>/features.yaml` records the definition; each audio file
`<root>/<filename>` gets `cache_dir/<feature_key>/<filename>.<source>.<version>.npy`. `source` hashes
the audio file's resolved absolute path (symlinks followed) and `version` its size and modification
time, so two datasets with the same file names (a copy, a regenerated set) never share or replace
each other's entries, an edited (or re-copied) audio file is recomputed, and a changed definition
gets a different folder. An entry of an older version of the same source is removed only once the
new version's entry is written, so a file that is now bad removes nothing. Entries are written to a
temporary file in the same folder and renamed into place (`files.atomic_open`), so an interrupted
run never leaves a half-written entry under an entry name; the next run skips finished entries and
computes the rest. Concurrent runs on one cache are safe: the same source gives the same bytes
(features are deterministic per clip, see `logmel`), and different sources never touch each other.

Why the path and not a content hash: the path costs one realpath and one stat per file, a content
hash reads every byte on every run. Measured on 500 TAU-format clips (2.9 MB each) in the page cache,
2 loaded cores: realpath + stat 0.13 ms per file (1.8 s for the 14,400 files of TAU 3Class), sha256
8.7 ms per file (125 s; more from disk), which would turn a fully cached run of seconds into minutes.
The price: a copied or moved dataset is extracted again, once. (Entries named by older code,
`<filename>.<8 hex digits>.npy`, are never read and can be deleted.)

A corrupt entry found by `FeatureStore.load` (damaged after it was written) raises a UserError that
names the file and says to delete it; extraction itself treats an entry of the wrong size as missing
and recomputes it.

Log features are stored as float16 (`storage_dtype`): half the disk space and read time (the 256-band
stereo definitions make 7 GB instead of 15 GB for TAU 3Class). The rounding is <= 2**-11 relative:
< 0.004 ln units (0.034 dB) for |values| < 8, at most 0.016 near ln(eps) = -36 (digital silence);
measured on ambient3: mean 0.0008, max 0.012 ln units against a feature spread (std) of 2.5, which
the per-band normalisation divides by. `load` returns float32.

Before computing anything, every audio file is checked (`audio.check_audio`, the same check as
`check-data`; threads; seconds for 14,400 files): a missing, empty, unreadable or truncated file, one
with NaN or infinite samples, and one whose sample rate, channel count or (with a fixed `duration`)
length differs from what at least 90 % of the files share, is a bad file. `on_bad_audio` 'stop'
stops before any work, naming the first bad file and how many there are; 'skip' leaves them out.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np
import yaml

from dcase_effdl.config import FeatureConfig
from dcase_effdl.errors import UserError
from dcase_effdl.files import TEMP_SUFFIX, atomic_open, atomic_write
from dcase_effdl.machine import one_intra_op_thread

ENTRY_SUFFIX = ".npy"
# Temporary files older than this are leftovers of a crashed run (a live run renames its own in
# well under a second) and are deleted when the folder is scanned.
STALE_TEMP_S = 3600.0
# Below this many files per worker thread, one thread does the work (a pool is not worth it).
MIN_FILES_PER_WORKER = 8
# Files per task given to a worker thread: small enough that the progress bar and a 'stop' react
# quickly and the threads finish together.
MAX_CHUNK = 16

# 64 bits for the source path (two datasets' paths must not collide), 32 for its version.
_ENTRY = re.compile(r"^(?P<filename>.+)\.(?P<source>[0-9a-f]{16})\.(?P<version>[0-9a-f]{8})\.npy$")


def entry_source(name: str) -> tuple[str, str] | None:
    """(clip file name, source hash) of a per-clip entry's file name; None for a name the cache does not write."""
    match = _ENTRY.match(name)
    return (match["filename"], match["source"]) if match else None

# A file is "wrong-rate" / "wrong-length" only against a clear majority: datasets of mixed rates or
# lengths (e.g. variable-length clips cut to `duration`) have no wrong ones.
MAJORITY_SHARE = 0.9


def storage_dtype(cfg: FeatureConfig) -> np.dtype:
    """float16 for log features (bounded: ln(eps) = -36 ... ~+15); float32 for linear energies ('log: none'),
    which can exceed float16's largest value (65504)."""
    return np.dtype(np.float16) if cfg.log != "none" else np.dtype(np.float32)


# ---------------------------------------------------------------- store


@dataclass
class FeatureStore:
    """Cached features of a list of audio files (those that could be read)."""

    path: Path  # cache_dir/<key>
    key: str  # feature_key(cfg)
    cfg: FeatureConfig
    entries: dict[str, Path]  # filename -> .npy entry, in the order the files were given
    problems: list[tuple[str, str]] = field(default_factory=list)  # (filename, reason) skipped
    n_computed: int = 0  # entries computed by the call that made this store
    n_reused: int = 0  # entries found in the cache
    seconds: float = 0.0  # wall time of the computation (header survey + features), s
    n_workers: int = 1  # threads that computed the features

    def summary(self) -> str:
        """One line: computed / reused / skipped counts and the throughput in clips/s."""
        rate = f" in {self.seconds:.1f} s ({self.n_computed / self.seconds:.1f} clips/s, {self.n_workers} " \
               f"thread{'s' if self.n_workers > 1 else ''})" if self.n_computed and self.seconds > 0 else ""
        skipped = f", skipped {len(self.problems)} bad audio file(s)" if self.problems else ""
        return f"features '{self.cfg.name}': computed {self.n_computed}{rate}, reused {self.n_reused}{skipped}"

    @property
    def filenames(self) -> list[str]:
        return list(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, filename: str) -> bool:
        return filename in self.entries

    def entry_path(self, filename: str) -> Path:
        try:
            return self.entries[filename]
        except KeyError:
            skipped = dict(self.problems).get(filename)
            why = f"skipped: {skipped}" if skipped else "not among the extracted files"
            raise UserError(f"{filename}: no features in {self.path} ({why})") from None

    def load_stored(self, filename: str) -> np.ndarray:
        """Features of one file as stored (`storage_dtype`): (channels, n_mels, frames)."""
        return _read_entry(self.entry_path(filename), self.cfg)

    def load(self, filename: str) -> np.ndarray:
        """Features of one file: float32 (channels, n_mels, frames)."""
        return self.load_stored(filename).astype(np.float32)

    def load_many(self, filenames: Sequence[str]) -> np.ndarray:
        """Features of many files stacked: float32 (N, channels, n_mels, frames)."""
        arrays = [self.load(name) for name in filenames]
        if not arrays:
            from dcase_effdl.features.logmel import feature_shape

            return np.zeros((0, *feature_shape(self.cfg)), dtype=np.float32)
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise UserError(
                f"{self.path}: features have different shapes {sorted(shapes)} (feature definition "
                f"'{self.cfg.name}' has no fixed duration); set duration to stack them"
            )
        return np.stack(arrays)


def _expected_entry_size(cfg: FeatureConfig) -> int | None:
    """Bytes of a complete .npy entry, or None when the number of frames depends on the clip."""
    if cfg.duration is None:
        return None
    from dcase_effdl.features.logmel import feature_shape

    buf = io.BytesIO()
    np.save(buf, np.zeros(feature_shape(cfg), dtype=storage_dtype(cfg)), allow_pickle=False)
    return buf.tell()


def _read_entry(path: Path, cfg: FeatureConfig) -> np.ndarray:
    hint = "delete this file and run again to recompute it"
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{path}: feature cache entry is missing (deleted during the run?); run again") from None
    except (ValueError, EOFError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: corrupt feature cache entry ({reason}); {hint}") from None
    dtype = storage_dtype(cfg)
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != 3:
        raise UserError(f"{path}: corrupt feature cache entry (not a {dtype} 3-D array); {hint}")
    if cfg.duration is not None:
        from dcase_effdl.features.logmel import feature_shape

        if array.shape != feature_shape(cfg):
            raise UserError(
                f"{path}: corrupt feature cache entry (shape {array.shape}, expected {feature_shape(cfg)}); {hint}"
            )
    return array


# ---------------------------------------------------------------- entry names and writing


def _source(resolved: str) -> str:
    """16 hex digits of the audio file's resolved absolute path: which file the entry was computed from."""
    return hashlib.blake2b(resolved.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()


def _version(stat: os.stat_result) -> str:
    """8 hex digits of the audio file's (size, mtime_ns): changes when the file is rewritten."""
    return hashlib.blake2b(f"{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=4).hexdigest()


def _check_filename(filename: str) -> None:
    parts = PurePosixPath(filename).parts
    if not filename or Path(filename).is_absolute() or ".." in parts or "\\" in filename:
        raise UserError(f"{filename!r}: audio file names must be relative paths inside the dataset root")


def _write_entry(path: Path, array: np.ndarray) -> None:
    # durable=False: an fsync cost ~3 ms per entry (10 % of the extraction); a killed process still
    # never leaves a half-written entry under an entry name, and a power cut's short entry is caught
    # by the size check (recomputed) or by `load` (named).
    with atomic_open(path, durable=False) as f:
        np.save(f, array, allow_pickle=False)


def _scan(folder: Path) -> dict[tuple[str, str], dict[str, int]]:
    """Existing entries as {(filename, source): {version: size_bytes}}; deletes stale temporary files."""
    found: dict[tuple[str, str], dict[str, int]] = {}
    now = time.time()
    for dirpath, _dirs, files in os.walk(folder):
        rel_dir = Path(dirpath).relative_to(folder).as_posix()
        for name in files:
            full = os.path.join(dirpath, name)
            if name.endswith(TEMP_SUFFIX):
                try:
                    if now - os.stat(full).st_mtime > STALE_TEMP_S:
                        os.unlink(full)
                except OSError:
                    pass  # a concurrent run renamed or removed it
                continue
            match = _ENTRY.match(name)
            if not match:
                continue
            filename = match["filename"] if rel_dir == "." else f"{rel_dir}/{match['filename']}"
            try:
                size = os.stat(full).st_size
            except OSError:
                continue
            found.setdefault((filename, match["source"]), {})[match["version"]] = size
    return found


# ---------------------------------------------------------------- computing entries


def _compute_chunk(items: list[tuple[str, str, str]], cfg: FeatureConfig) -> list[tuple[str, str | None]]:
    """Compute and write entries for (filename, audio path, entry path) items.

    Returns (filename, None) for each written entry and (filename, reason) for each bad audio file.
    Other errors (bugs, a full disk) propagate.
    """
    from dcase_effdl.features.audio import AudioProblem, load_audio
    from dcase_effdl.features.logmel import logmel

    results: list[tuple[str, str | None]] = []
    for filename, audio_path, entry_path in items:
        try:
            audio = load_audio(audio_path, cfg)
        except AudioProblem as exc:
            results.append((filename, exc.reason))
            continue
        _write_entry(Path(entry_path), _to_storage(logmel(audio, cfg), cfg))
        results.append((filename, None))
    return results


def _to_storage(feats: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """float32 features in `storage_dtype`. float16 through torch: the same round-to-nearest-even bits as
    numpy's astype, in 0.04 ms instead of 0.95 ms for a 256-band stereo clip (one thread, loaded CPU)."""
    dtype = storage_dtype(cfg)
    if dtype != np.float16:
        return feats.astype(dtype, copy=False)
    import torch

    return torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)).to(torch.float16).numpy()


def _init_worker() -> None:
    import torch

    # One intra-op thread per worker thread: the workers already use every core. (The features do not
    # depend on it: logmel computes every clip with one intra-op thread; this saves it switching per clip.)
    torch.set_num_threads(1)


def _chunks(items: list, n_workers: int) -> list[list]:
    size = max(1, min(MAX_CHUNK, math.ceil(len(items) / (4 * max(n_workers, 1)))))
    return [items[i : i + size] for i in range(0, len(items), size)]


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only on a terminal.
    return tqdm(total=total, unit="clip", desc=desc, disable=None if enabled else True, dynamic_ncols=True)


def _run_serial(todo, cfg, on_bad_audio, bar) -> dict[str, str | None]:
    results: dict[str, str | None] = {}
    # One intra-op thread throughout, as in the worker threads: with the caller's thread count, the
    # torch work between clips (the float16 conversion) woke OpenMP threads that then spun on the
    # other core (CPU time per 256-band clip 34-40 ms against 26 ms in the workers, loaded 2 cores).
    with one_intra_op_thread():
        for chunk in _chunks(todo, 1):
            for filename, reason in _compute_chunk(chunk, cfg):
                results[filename] = reason
            bar.update(len(chunk))
            if on_bad_audio == "stop" and any(r is not None for r in results.values()):
                break
    return results


def _run_parallel(todo, cfg, on_bad_audio, bar, n_workers) -> dict[str, str | None]:
    """Threads, not processes: decoding (libsndfile), torch and file writes release the GIL, so threads
    use every core without the ~3 s per process of importing torch, and share one window and mel basis."""
    from dcase_effdl.features.logmel import frontend_arrays

    frontend_arrays(cfg)  # once, before the threads (the first call imports librosa)
    results: dict[str, str | None] = {}
    pool = ThreadPoolExecutor(n_workers, thread_name_prefix="features", initializer=_init_worker)
    try:
        pending = {pool.submit(_compute_chunk, chunk, cfg): len(chunk) for chunk in _chunks(todo, n_workers)}
        stopping = False
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                n = pending.pop(future)
                if future.cancelled():
                    continue
                for filename, reason in future.result():  # re-raises a worker's unexpected error
                    results[filename] = reason
                    if reason is not None and on_bad_audio == "stop":
                        stopping = True
                bar.update(n)
            if stopping:
                # Keep what running tasks finish (their entries are written), start nothing new.
                for future in list(pending):
                    if future.cancel():
                        pending.pop(future)
    finally:
        # On an error (or Ctrl-C) start nothing new; running chunks finish their current entries.
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _survey(root: Path, names: list[str], cfg: FeatureConfig, workers: int) -> dict[str, str]:
    """{filename: reason} for files that are bad (`check_audio`) or unlike the clear majority."""
    from dcase_effdl.data.check_data import check_files, find_odd

    headers = check_files([root / n for n in names], workers=0, progress=False)
    bad = {n: h for n, h in zip(names, headers) if isinstance(h, str)}
    infos = {n: h for n, h in zip(names, headers) if not isinstance(h, str)}
    odd = find_odd(infos, min_share=MAJORITY_SHARE, check_duration=cfg.duration is not None)
    bad.update({n: f"unlike the other files: {reason}" for n, reason in odd.items()})
    return bad


def _stop_message(root: Path, names: list[str], problems: dict[str, str]) -> str:
    first = next(n for n in names if n in problems)
    more = len(problems) - 1
    tail = (f" (and {more} more bad audio file(s); dataset.on_bad_audio: skip leaves them out)" if more else "")
    return f"{root / first}: {problems[first]}{tail}"


# ---------------------------------------------------------------- entry point


def extract_features(
    root: str | Path,
    filenames: Iterable[str],
    cfg: FeatureConfig,
    cache_dir: str | Path,
    workers: int = 0,
    on_bad_audio: str = "stop",
    progress: bool = True,
) -> FeatureStore:
    """Features of `root/<filename>` for each filename, computed where not cached; returns the store.

    workers: threads (0 = os.cpu_count(); 1 = this thread only). on_bad_audio: 'stop' raises a
    UserError naming the first bad file (in the given order) after every finished entry is kept;
    'skip' leaves bad files out and lists them in `store.problems` as (filename, reason).
    """
    from dcase_effdl.features.logmel import FEATURE_CODE_VERSION, definition, feature_key

    if on_bad_audio not in ("stop", "skip"):
        raise UserError(f"on_bad_audio must be 'stop' or 'skip', got {on_bad_audio!r}")
    root = Path(root)
    names = list(dict.fromkeys(filenames))  # de-duplicated, order kept
    key = feature_key(cfg)
    folder = Path(cache_dir) / key
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "features.yaml"
    if not record.exists():
        text = yaml.safe_dump(
            {"key": key, "code_version": FEATURE_CODE_VERSION, "name": cfg.name, "definition": definition(cfg)},
            sort_keys=False,
        )
        atomic_write(record, text)

    expected_size = _expected_entry_size(cfg)
    existing = _scan(folder)
    entries: dict[str, Path] = {}
    older: dict[str, list[Path]] = {}  # filename -> entries of older versions of the same source
    problems: dict[str, str] = {}
    todo: list[tuple[str, str, str]] = []
    n_reused = 0
    for filename in names:
        _check_filename(filename)
        audio_path = root / filename
        try:
            stat = audio_path.stat()
        except FileNotFoundError:
            problems[filename] = "file not found"
            continue
        except OSError as exc:
            problems[filename] = f"cannot read file ({exc.strerror})"
            continue
        source, version = _source(os.path.realpath(audio_path)), _version(stat)
        entry = folder / f"{filename}.{source}.{version}{ENTRY_SUFFIX}"
        entries[filename] = entry
        versions = dict(existing.get((filename, source), {}))
        size = versions.pop(version, None)
        older[filename] = [folder / f"{filename}.{source}.{v}{ENTRY_SUFFIX}" for v in versions]
        if size is not None and (expected_size is None or size == expected_size):
            n_reused += 1
        else:
            todo.append((filename, str(audio_path), str(entry)))

    start = time.perf_counter()
    if todo:  # every audio header, so that wrong files are judged against the whole dataset
        surveyed = _survey(root, [n for n in names if n not in problems], cfg, workers)
        problems.update(surveyed)
        cached = set(entries) - {name for name, _, _ in todo}
        n_reused -= len(cached & set(surveyed))  # a cached entry of a file now judged bad is not used
        todo = [item for item in todo if item[0] not in surveyed]
    if problems and on_bad_audio == "stop":
        raise UserError(_stop_message(root, names, problems))

    n_workers = (os.cpu_count() or 1) if workers <= 0 else workers
    n_workers = min(n_workers, len(todo) // MIN_FILES_PER_WORKER)
    with _progress_bar(len(todo), progress and bool(todo), f"features {cfg.name}") as bar:
        if n_workers > 1:
            results = _run_parallel(todo, cfg, on_bad_audio, bar, n_workers)
        else:
            results = _run_serial(todo, cfg, on_bad_audio, bar)

    seconds = time.perf_counter() - start
    bad = {name: reason for name, reason in results.items() if reason is not None}
    if bad and on_bad_audio == "stop":
        raise UserError(_stop_message(root, [name for name, _, _ in todo], bad))
    problems.update(bad)
    for name in problems:
        entries.pop(name, None)
    for name in entries:  # this file's current entry exists: its older versions are garbage now
        for path in older.get(name, ()):
            path.unlink(missing_ok=True)
    order = {name: i for i, name in enumerate(names)}
    problem_list = sorted(problems.items(), key=lambda item: order[item[0]])
    n_computed = sum(1 for reason in results.values() if reason is None)
    return FeatureStore(folder, key, cfg, entries, problem_list, n_computed=n_computed, n_reused=n_reused,
                        seconds=seconds, n_workers=max(n_workers, 1))
