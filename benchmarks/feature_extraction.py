"""Feature extraction speed, like for like: this project vs librosa (and dcase_util) on the same number of cores.

    python benchmarks/feature_extraction.py [--clips 120] [--clips-256 40] [--rounds 3] [--old REV] [--workdir DIR]

Generates clips in the genuine TAU 2020 format (10 s, 48 kHz, 24-bit PCM, stereo WAV, TAU file
names and layout) once into --workdir, reads them all once so every side starts from the page
cache, then, for the 2020 baseline definition (features/dcase2020_baseline.yaml) and one 256-band
stereo definition (features/koutini_256mel_22k_stereo.yaml: 48 -> 22.05 kHz), times in each round:

1. reference: the definition's original tool chain, clip after clip, in N one-thread processes
   (OMP/MKL/OpenBLAS/numba threads 1), each with its share of the clips, from a common start after
   imports and numba compilation. Baseline: dcase_util's MelExtractor computation written out with
   librosa (soundfile float64 read, mono mean, librosa.stft, magnitude, mel basis, ln(mel + eps)),
   or dcase_util itself when it is importable; 256-band: librosa.load (soxr_hq), librosa.stft,
   |X|**2, mel basis, power_to_db.
2. dcase_effdl: `features.cache.extract_features` into an empty cache with N worker threads, in a
   fresh process (imports, the mel basis and one clip outside the timing, as each reference process
   computes its first clip before the start; the header survey inside).
3. With `--old REV`: the same with the `dcase_effdl` package of git revision REV (N = all cores).

4. bound: the physical floor on the same clips, in N one-thread processes like the reference:
   audio decode alone (the fastest decoder at hand: dcase_effdl's reader, which converts integer PCM
   itself at about half soundfile's float32 read time, and soundfile where that reader does not
   apply), resampling where the definition resamples (the same soxr call) and the STFT alone
   (torch.stft, float32, the same FFT sizes and channels). Each round also prints these per clip
   (one thread; decode by both readers).

for N = 1 and N = os.cpu_count(). Rounds alternate which side goes first; medians over rounds count (the
machine may be shared: the load average of each round is printed, and the CPU seconds per clip of each
side beside the wall-clock rates). It prints the CPU model, its vector flags and torch's threads,
checks that the project and the reference agree (max difference in dB) on computed and on stored
features, says whether issue 16's target is met (>= 2x like for like, or >= 80 % of the bound's
rate), and ends with one JSON line (`--json FILE` writes it too).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SCENES = {  # 10 scenes -> 3 classes, as in TAU 2020 3Class
    "airport": "indoor", "shopping_mall": "indoor", "metro_station": "indoor",
    "park": "outdoor", "public_square": "outdoor", "street_pedestrian": "outdoor", "street_traffic": "outdoor",
    "bus": "transportation", "metro": "transportation", "tram": "transportation",
}
CITIES = ("barcelona", "helsinki", "lisbon", "london", "lyon", "milan", "paris", "prague", "stockholm", "vienna")
DB_PER_LN = 20.0 / math.log(10.0)  # ln(magnitude) -> dB
DEFINITIONS = ("dcase2020_baseline", "koutini_256mel_22k_stereo")
# Thread variables of the libraries under the reference (numpy's BLAS, scipy's FFT, numba): one each.
ONE_THREAD_ENV = {k: "1" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}
# Clips the bound and the accuracy check are measured on (medians per clip are stable well before).
N_PROBE = 20
RES_TYPES = {"soxr_hq": "soxr_hq", "soxr_vhq": "soxr_vhq", "scipy": "polyphase"}  # FeatureConfig -> librosa
# Issue 16's target: this ratio like for like (medians of wall-clock rates), or this share of the bound's rate.
TARGET_RATIO, TARGET_OF_BOUND = 2.0, 0.8


def make_clips(root: Path, n_clips: int, seed: int = 0) -> list[str]:
    """N genuine-format clips (48 kHz, 24-bit, stereo, 10 s) with TAU names; reused when already there."""
    marker = root / "bench.json"
    spec = {"n_clips": n_clips, "seed": seed, "format": "WAV PCM_24 48000 Hz 2 ch 10 s"}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return [line.split("\t")[0] for line in (root / "meta.csv").read_text().splitlines()[1:]]
    shutil.rmtree(root, ignore_errors=True)
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    rng = np.random.default_rng(seed)
    t = np.arange(480_000) / 48_000
    rows = []
    scenes = list(SCENES)
    for i in range(n_clips):
        scene, city = scenes[i % len(scenes)], CITIES[(i // len(scenes)) % len(CITIES)]
        name = f"audio/{scene}-{city}-{100 + i // 5}-{4000 + i}-a.wav"
        # Pink-ish noise (1/f power) plus a few tones, different per clip, at a realistic level.
        white = rng.standard_normal((2, 480_000))
        spectrum = np.fft.rfft(white, axis=1)
        spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(480_000, 1 / 48_000), 20.0))
        audio = np.fft.irfft(spectrum, n=480_000, axis=1)
        audio *= 0.05 / audio.std()
        for f in rng.uniform(80, 8000, size=3):
            audio += 0.01 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28))
        sf.write(root / name, np.clip(audio.T, -1, 1), 48_000, subtype="PCM_24")
        rows.append((name, SCENES[scene], f"{city}-{100 + i // 5}"))
    (root / "meta.csv").write_text(
        "filename\tscene_label\tidentifier\tsource_label\n" + "".join(f"{n}\t{lab}\t{ident}\ta\n" for n, lab, ident in rows)
    )
    fold = "filename\tscene_label\n" + "".join(f"{n}\t{lab}\n" for n, lab, _ in rows)
    for name in ("train", "evaluate"):
        (root / "evaluation_setup" / f"fold1_{name}.csv").write_text(fold)
    (root / "evaluation_setup" / "fold1_test.csv").write_text("filename\n" + "".join(f"{n}\n" for n, _, _ in rows))
    marker.write_text(json.dumps(spec))
    return [n for n, _, _ in rows]


def warm_page_cache(root: Path, names: list[str]) -> None:
    for name in names:
        with open(root / name, "rb") as fh:
            while fh.read(1 << 22):
                pass




def dcase_util_available() -> bool:
    try:
        import dcase_util  # noqa: F401
    except ImportError:
        return False
    return True


class Reference:
    """A definition's original tool chain for one clip: `features(path)` -> (channels, n_mels, frames)."""

    def __init__(self, cfg, use_dcase_util: bool, float64: bool = False):
        """float64: STFT and mel basis in float64 whatever the tool reads (the accuracy check's truth)."""
        import librosa
        import scipy.signal

        self.cfg, self.librosa, self.float64 = cfg, librosa, float64
        self.window = scipy.signal.get_window(cfg.window, cfg.win_length, fftbins=cfg.window_periodic)
        self.mel = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                                       fmax=cfg.fmax, htk=cfg.mel_scale == "htk", norm=cfg.mel_norm,
                                       dtype=np.float64 if float64 else np.float32)
        self.dcase_util = None
        if use_dcase_util and not float64 and cfg.name == "dcase2020_baseline":
            import dcase_util

            self.dcase_util = dcase_util
            self.extractor = dcase_util.features.MelExtractor(
                fs=cfg.sample_rate, win_length_samples=cfg.win_length, hop_length_samples=cfg.hop_length,
                spectrogram_type="magnitude", window_type="hamming_asymmetric", n_mels=cfg.n_mels,
                n_fft=cfg.n_fft, fmin=cfg.fmin, fmax=cfg.fmax, htk=False, normalize_mel_bands=False)

    @property
    def label(self) -> str:
        return "dcase_util MelExtractor" if self.dcase_util else "librosa"

    def features(self, path: Path) -> np.ndarray:
        cfg, librosa = self.cfg, self.librosa
        if self.dcase_util:
            audio = self.dcase_util.containers.AudioContainer().load(filename=str(path), mono=True, fs=cfg.sample_rate)
            return self.extractor.extract(audio.data)[None]
        if sf.info(str(path)).samplerate == cfg.sample_rate:
            y, _ = sf.read(path, always_2d=True)  # float64, as dcase_util reads
            y = y.mean(axis=1)[None] if cfg.channels == "mono" else y.T
        else:  # librosa.load: float32 read, mono mean, resampling
            y, _ = librosa.load(path, sr=cfg.sample_rate, mono=cfg.channels == "mono", res_type=RES_TYPES[cfg.resample])
            y = y[None] if y.ndim == 1 else y
        if self.float64:
            y = y.astype(np.float64)
        spec = np.abs(librosa.stft(y, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length,
                                   window=self.window, center=cfg.center, pad_mode=cfg.pad_mode))
        mel = np.matmul(self.mel, spec**cfg.power if cfg.power != 1.0 else spec)
        if cfg.log == "natural":
            return np.log(mel + cfg.log_eps)
        if cfg.log == "db":
            to_db = librosa.power_to_db if cfg.power == 2.0 else librosa.amplitude_to_db
            return to_db(mel, ref=1.0, amin=cfg.log_eps, top_db=None)
        return mel


class Bound:
    """The physical floor for one clip: `features(path)` = decode (the faster reader, see the module
    docstring), mono mean, resampling where the definition resamples (the same soxr call) and
    torch.stft (float32), nothing else."""

    def __init__(self, cfg):
        import torch

        from dcase_effdl.features import audio, logmel

        torch.set_num_threads(1)
        self.cfg, self.torch, self.audio, self.logmel = cfg, torch, audio, logmel
        self.window, _ = logmel._frontend_tensors(cfg, torch.device("cpu"), torch.float32)

    def features(self, path: Path):
        cfg = self.cfg
        with self.audio._open(path) as f:
            rate, data = f.samplerate, self.audio._read_pcm(path, f, f.frames)  # (channels, frames)
            if data is None:  # not integer PCM WAV: libsndfile decodes it
                data = f.read(dtype="float32", always_2d=True).T
        x = data.mean(axis=0, keepdims=True) if cfg.channels == "mono" else data
        x = self.audio.resample(np.ascontiguousarray(x), rate, cfg.sample_rate, cfg.resample)
        return self.logmel._stft(self.torch.from_numpy(x), cfg, self.window)


def _worker(kind: str, definition: str, paths: list[str], use_dcase_util: bool, barrier, results) -> None:
    from dcase_effdl.config import load_features

    cfg = load_features(definition)
    side = Reference(cfg, use_dcase_util) if kind == "reference" else Bound(cfg)
    side.features(Path(paths[0]))  # numba compilation and first-call costs outside the timing
    barrier.wait()
    start, cpu = time.perf_counter(), time.process_time()
    for path in paths:
        side.features(Path(path))
    results.put((time.perf_counter() - start, time.process_time() - cpu))


def run_processes(kind: str, definition: Path, root: Path, names: list[str], n_procs: int,
                  use_dcase_util: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of all processes) for `kind` ('reference' or 'bound') to do every clip in
    `n_procs` one-thread processes."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n_procs + 1), ctx.Queue()
    shares = [[str(root / n) for n in names[i::n_procs]] for i in range(n_procs)]
    saved = {k: os.environ.get(k) for k in ONE_THREAD_ENV}
    os.environ.update(ONE_THREAD_ENV)  # inherited by the spawned processes only (this one has its threads)
    try:
        procs = [ctx.Process(target=_worker, args=(kind, str(definition), share, use_dcase_util, barrier, results))
                 for share in shares]
        for proc in procs:
            proc.start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    barrier.wait(timeout=600)
    start = time.perf_counter()
    cpu = sum(results.get(timeout=3600)[1] for _ in procs)
    seconds = time.perf_counter() - start
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"{kind} worker failed with exit code {proc.exitcode}")
    return seconds, cpu


# Times extract_features in a fresh process: argv = definition yaml, root, names file, cache, workers.
# Prints {seconds, cpu_seconds, threads, features: {filename: entry path}}. One clip is computed before
# the timing, as each reference process computes its first clip before the common start (first-call
# costs: the FFT plan, the mel blocks, this thread's buffers; the worker threads still start cold).
_TIMED_EXTRACTION = """
import json, sys, time
from pathlib import Path
from dcase_effdl.config import load_features
from dcase_effdl.features.cache import extract_features
from dcase_effdl.features.audio import load_audio
from dcase_effdl.features.logmel import frontend_arrays, logmel
cfg = load_features(sys.argv[1])
root, names, cache, workers = Path(sys.argv[2]), Path(sys.argv[3]).read_text().split(), Path(sys.argv[4]), int(sys.argv[5])
frontend_arrays(cfg)  # imports librosa and builds the mel basis before the timing, as the in-process run does
logmel(load_audio(root / names[0], cfg), cfg)
start, cpu = time.perf_counter(), time.process_time()
store = extract_features(root, names, cfg, cache, workers=workers, on_bad_audio="stop", progress=False)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "threads": store.n_workers,
                  "entries": {n: str(store.entry_path(n)) for n in names}}))
"""


def run_package(package_root: Path, definition: Path, root: Path, names: list[str], cache: Path, workers: int) -> dict:
    """extract_features of the dcase_effdl package under `package_root`, timed in a fresh process."""
    shutil.rmtree(cache, ignore_errors=True)
    names_file = cache.parent / f"{cache.name}.names"
    names_file.write_text("\n".join(names))
    env = dict(os.environ, PYTHONPATH=str(package_root))
    # cwd too: `python -c` puts the working directory first on sys.path, so run from this repository
    # it imported this repository's package whatever PYTHONPATH said (--old timed the current code).
    out = subprocess.run([sys.executable, "-c", _TIMED_EXTRACTION, str(definition), str(root), str(names_file),
                          str(cache), str(workers)], env=env, cwd=str(package_root), capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"extraction with {package_root} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def export_revision(rev: str, dest: Path) -> Path:
    """The dcase_effdl package of git revision `rev`, unpacked under `dest` (for PYTHONPATH)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "dcase_effdl"], capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def same_features(a: dict, b: dict) -> tuple[int, int]:
    """(clips whose stored feature values are identical, clips compared) between two runs' entries."""
    same = sum(np.array_equal(np.load(a[n], allow_pickle=False), np.load(b[n], allow_pickle=False)) for n in a)
    return same, len(a)


def measure_bound(root: Path, names: list[str], cfg) -> dict:
    """Median ms per clip, one thread, of decode (soundfile; dcase_effdl's read), resampling and STFT."""
    import torch

    from dcase_effdl.features import audio, logmel

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, (time.perf_counter() - start) * 1e3

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    window, _ = logmel._frontend_tensors(cfg, torch.device("cpu"), torch.float32)
    rows: dict[str, list[float]] = {"decode_soundfile": [], "decode_dcase_effdl": [], "resample": [], "stft": []}
    try:
        for name in names[:N_PROBE]:
            path = root / name
            (data, rate), ms = timed(lambda: sf.read(path, dtype="float32", always_2d=True))
            rows["decode_soundfile"].append(ms)
            with audio._open(path) as f:
                _, ms = timed(lambda: audio._read_pcm(path, f, f.frames))
            rows["decode_dcase_effdl"].append(ms)
            x = data.T.mean(axis=0, keepdims=True) if cfg.channels == "mono" else np.ascontiguousarray(data.T)
            x, ms = timed(lambda: audio.resample(np.ascontiguousarray(x), rate, cfg.sample_rate, cfg.resample))
            rows["resample"].append(ms)
            xt = torch.from_numpy(np.ascontiguousarray(x))
            _, ms = timed(lambda: logmel._stft(xt, cfg, window))
            rows["stft"].append(ms)
    finally:
        torch.set_num_threads(threads)
    return {k: statistics.median(v) for k, v in rows.items()}


def max_db_difference(a: np.ndarray, b: np.ndarray, cfg) -> float:
    """Max |a - b| in dB of magnitude (ln units for log 'natural', dB already for 'db')."""
    diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    return diff * DB_PER_LN / cfg.power if cfg.log == "natural" else diff


def bench_definition(name: str, root: Path, names: list[str], args, old_root, use_dcase_util: bool) -> dict:
    from dcase_effdl.config import load_features
    from dcase_effdl.features import logmel
    from dcase_effdl.features.audio import load_audio
    from dcase_effdl.features.cache import FeatureStore

    definition = REPO / "features" / f"{name}.yaml"
    cfg = load_features(definition)
    cores = os.cpu_count() or 1
    counts = sorted({1, cores})
    ref_label = Reference(cfg, use_dcase_util).label if use_dcase_util else "librosa"
    print(f"\n{name}: {logmel.feature_shape(cfg)} per clip, {cfg.sample_rate} Hz {cfg.channels}, n_fft {cfg.n_fft}, "
          f"hop {cfg.hop_length}; {len(names)} clips; reference: {ref_label}")
    rates: dict[str, list[float]] = {}
    cpu_ms: dict[str, list[float]] = {}  # CPU time per clip, all processes or threads of a side together
    bounds: list[dict] = []
    runs: dict[str, dict] = {}
    workdir = Path(args.workdir)
    for r in range(args.rounds):
        line = []
        for n in counts:
            sides = [("ref", None), ("new", REPO), ("bound", None)]
            sides += [("old", old_root)] if old_root and n == cores else []
            for side, package in sides if r % 2 == 0 else sides[::-1]:  # alternate which goes first
                if side in ("ref", "bound"):
                    kind = "reference" if side == "ref" else "bound"
                    seconds, cpu = run_processes(kind, definition, root, names, n, use_dcase_util)
                else:
                    runs[side] = run_package(package, definition, root, names, workdir / f"cache-{side}", n)
                    seconds, cpu = runs[side]["seconds"], runs[side].get("cpu_seconds", math.nan)
                rates.setdefault(f"{side}_{n}", []).append(len(names) / seconds)
                cpu_ms.setdefault(f"{side}_{n}", []).append(1e3 * cpu / len(names))
            ratio = rates[f"new_{n}"][-1] / rates[f"ref_{n}"][-1]
            cpu_ratio = cpu_ms[f"ref_{n}"][-1] / cpu_ms[f"new_{n}"][-1]
            line.append(f"N={n}: {ref_label} {rates[f'ref_{n}'][-1]:.1f}, dcase_effdl {rates[f'new_{n}'][-1]:.1f} clips/s "
                        f"({ratio:.2f}x; CPU time {cpu_ratio:.2f}x), bound {rates[f'bound_{n}'][-1]:.1f}"
                        + (f", {args.old} {rates[f'old_{n}'][-1]:.1f}" if f"old_{n}" in rates else ""))
        bounds.append(measure_bound(root, names, cfg))
        b = bounds[-1]
        print(f"  round {r + 1} (load {os.getloadavg()[0]:.1f}): " + "; ".join(line) + f"; 1 thread per clip: decode "
              f"{b['decode_soundfile']:.1f} ms (soundfile) / {b['decode_dcase_effdl']:.1f} ms (dcase_effdl), resample "
              f"{b['resample']:.1f} ms, STFT {b['stft']:.1f} ms")

    med = {k: statistics.median(v) for k, v in rates.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu_ms.items()}
    bound = {k: statistics.median(b[k] for b in bounds) for k in bounds[0]}
    out = {f"{k}_clips_per_s": v for k, v in med.items()}
    out.update({f"{k}_cpu_ms_per_clip": v for k, v in med_cpu.items()})
    out.update({f"bound_{k}_ms": v for k, v in bound.items()})
    for n in counts:
        out[f"like_for_like_{n}"] = med[f"new_{n}"] / med[f"ref_{n}"]
        out[f"like_for_like_cpu_{n}"] = med_cpu[f"ref_{n}"] / med_cpu[f"new_{n}"]
        out[f"of_bound_{n}"] = med[f"new_{n}"] / med[f"bound_{n}"]
    print(f"  median of {args.rounds}: like for like " + ", ".join(
        f"N={n} {out[f'like_for_like_{n}']:.2f}x ({med[f'new_{n}']:.1f} vs {med[f'ref_{n}']:.1f} clips/s)" for n in counts))
    # CPU seconds per clip do not count the time other jobs take the cores, so their ratio moves less on a
    # shared machine than the wall-clock one (they still grow when other jobs share the caches).
    print("  CPU time per clip (all processes or threads): " + ", ".join(
        f"N={n} {med_cpu[f'ref_{n}']:.1f} ms vs {med_cpu[f'new_{n}']:.1f} ms ({out[f'like_for_like_cpu_{n}']:.2f}x)"
        for n in counts))
    print("  bound (decode + resample + STFT alone, N one-thread processes): " + ", ".join(
        f"N={n} {med[f'bound_{n}']:.1f} clips/s, dcase_effdl at {100 * out[f'of_bound_{n}']:.0f} % of it" for n in counts)
        + f"; per clip: decode {min(bound['decode_soundfile'], bound['decode_dcase_effdl']):.1f} + resample {bound['resample']:.1f} + STFT "
          f"{bound['stft']:.1f} ms")
    for n in counts:
        out[f"target_met_{n}"] = out[f"like_for_like_{n}"] >= TARGET_RATIO or out[f"of_bound_{n}"] >= TARGET_OF_BOUND
    print("  target (issue 16: >= %.0fx like for like, or >= %.0f %% of the bound): " % (TARGET_RATIO, 100 * TARGET_OF_BOUND)
          + ", ".join(f"N={n} {'met' if out[f'target_met_{n}'] else 'NOT met'}" for n in counts))
    if old_root:
        out["old_clips_per_s"] = med[f"old_{cores}"]
        out["same_stored_features_as_old"], _ = same_features(runs["new"]["entries"], runs["old"]["entries"])
        print(f"  {args.old}: {med[f'old_{cores}']:.1f} clips/s on {cores} cores, this code {med[f'new_{cores}'] / med[f'old_{cores}']:.2f}x "
              f"its speed; stored features identical for {out['same_stored_features_as_old']} of {len(names)} clips")

    # Agreement with the reference on the probe clips: as computed (float32) and as stored (cache).
    ref = Reference(cfg, use_dcase_util=False, float64=True)
    probe = names[:N_PROBE]
    expected = np.stack([ref.features(root / n) for n in probe])
    computed = np.stack([logmel.logmel(load_audio(root / n, cfg), cfg) for n in probe])
    entries = {n: Path(runs["new"]["entries"][n]) for n in probe}
    store = FeatureStore(entries[probe[0]].parent, logmel.feature_key(cfg), cfg, entries)
    stored = np.stack([store.load(n) for n in probe])
    out["max_diff_db_computed"] = max_db_difference(computed, expected, cfg)
    out["max_diff_db_stored"] = max_db_difference(stored, expected, cfg)
    print(f"  max |difference| vs {ref.label} in float64 on {len(probe)} clips: {out['max_diff_db_computed']:.2e} dB as computed "
          f"(float32), {out['max_diff_db_stored']:.2e} dB as stored ({np.load(entries[probe[0]]).dtype})")
    for side in ("new", "old"):
        shutil.rmtree(workdir / f"cache-{side}", ignore_errors=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=120, help="clips for the baseline definition")
    parser.add_argument("--clips-256", type=int, default=40, help="clips for the 256-band definition (0: skip it)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every measurement; medians count")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dcase_effdl_bench"))
    parser.add_argument("--old", metavar="REV", help="also time the extractor of this git revision, in the same run")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)

    from dcase_effdl.machine import describe, machine

    workdir = Path(args.workdir)
    root = workdir / "tau-bench"
    t0 = time.perf_counter()
    names = make_clips(root, max(args.clips, args.clips_256))
    print(f"{len(names)} clips (10 s, 48 kHz, 24-bit stereo WAV) in {root} ({time.perf_counter() - t0:.0f} s to prepare)")
    warm_page_cache(root, names)
    result = {"clips": args.clips, "clips_256": args.clips_256, **machine(), "load_average_start": round(os.getloadavg()[0], 2)}
    print(describe(result))
    use_dcase_util = dcase_util_available()
    print("reference threads: " + ", ".join(f"{k}={v}" for k, v in ONE_THREAD_ENV.items()) + " per process; dcase_util "
          + ("importable: its MelExtractor is the baseline's reference" if use_dcase_util else
             "not importable (not installed): the baseline's reference is its computation written out with librosa"))
    old_root = export_revision(args.old, workdir / "old-package") if args.old else None
    for name, n_clips in zip(DEFINITIONS, (args.clips, args.clips_256)):
        if n_clips > 0:
            for key, value in bench_definition(name, root, names[:n_clips], args, old_root, use_dcase_util).items():
                result[f"{name}.{key}"] = value
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    line = json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()})
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
