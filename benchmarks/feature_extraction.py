"""Feature extraction speed: this project's cached extractor vs a per-clip librosa loop (dcase_util style).

    python benchmarks/feature_extraction.py [--clips 500] [--repeat 2] [--old REV] [--workdir DIR] [--workers 0]

Generates N clips in the genuine TAU 2020 format (10 s, 48 kHz, 24-bit PCM, stereo WAV, TAU file
names and layout) once into --workdir, reads them all once so both sides start from the page cache,
then times, in one run on the same machine:

1. librosa: the 2020 baseline's extractor, one clip after another in one process, as
   dcase_util.features.MelExtractor does it: soundfile float64 read, mono mean, librosa.stft (Hamming
   1920 in n_fft 2048, hop 960, centred, reflect padding), magnitude, librosa mel basis, ln(mel + eps).
2. dcase_effdl: `features.cache.extract_features` into an empty cache with all cores, in a fresh
   process (imports and the mel basis outside the timing).
3. With `--old REV`: the same, with the `dcase_effdl` package of git revision REV (e.g. the commit
   before a change to the extractor), so that a change's speed cost is measured in the same run; it
   also says whether REV's cache entries hold the same feature values.

With `--repeat N` the sides alternate N times and the best time of each counts (the machine may be
shared: the load average at start and end is recorded). It prints the CPU model and its vector
flags (AVX2 / AVX-512 / VNNI / AMX), the torch version and thread counts, and checks that this
project and librosa agree (max difference in dB = 20 log10 of the mel magnitudes) on the float32
features the project computes and on what its cache stores. Also reports clips/s for every 256-band
feature definition in features/. The result is one JSON line at the end (`--json FILE` writes it too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
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


def librosa_reference(path: Path, cfg, librosa, window: np.ndarray, mel: np.ndarray) -> np.ndarray:
    """One clip the dcase_util MelExtractor way (float64 throughout), -> (n_mels, frames)."""
    y, sr = sf.read(path)  # float64, (samples, channels)
    y = y.mean(axis=1) if y.ndim == 2 else y
    spec = np.abs(librosa.stft(
        y, n_fft=cfg.n_fft, win_length=cfg.win_length, hop_length=cfg.hop_length, window=window,
        center=cfg.center, pad_mode=cfg.pad_mode,
    ))
    return np.log(np.dot(mel, spec) + cfg.log_eps)


def run_librosa(root: Path, names: list[str], cfg) -> tuple[float, np.ndarray]:
    import librosa
    import scipy.signal

    window = scipy.signal.get_window(cfg.window, cfg.win_length, fftbins=cfg.window_periodic)
    mel = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin,
                              fmax=cfg.fmax, htk=cfg.mel_scale == "htk", norm=cfg.mel_norm)
    librosa_reference(root / names[0], cfg, librosa, window, mel)  # numba compilation outside the timing
    out = np.empty((len(names), cfg.n_mels, 1 + 480_000 // cfg.hop_length), dtype=np.float64)
    start = time.perf_counter()
    for i, name in enumerate(names):
        out[i] = librosa_reference(root / name, cfg, librosa, window, mel)
    return time.perf_counter() - start, out


def run_project(root: Path, names: list[str], cfg, cache: Path, workers: int):
    from dcase_effdl.features.cache import extract_features

    shutil.rmtree(cache, ignore_errors=True)
    start = time.perf_counter()
    store = extract_features(root, names, cfg, cache, workers=workers, on_bad_audio="stop")
    seconds = time.perf_counter() - start
    return seconds, store


# Times extract_features in a fresh process: argv = definition yaml, root, names file, cache, workers.
# Prints {seconds, threads, features: {filename: entry path}}.
_TIMED_EXTRACTION = """
import json, sys, time
from pathlib import Path
from dcase_effdl.config import load_features
from dcase_effdl.features.cache import extract_features
from dcase_effdl.features.logmel import frontend_arrays
cfg = load_features(sys.argv[1])
root, names, cache, workers = Path(sys.argv[2]), Path(sys.argv[3]).read_text().split(), Path(sys.argv[4]), int(sys.argv[5])
frontend_arrays(cfg)  # imports librosa and builds the mel basis before the timing, as the in-process run does
start = time.perf_counter()
store = extract_features(root, names, cfg, cache, workers=workers, on_bad_audio="stop", progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "threads": store.n_workers,
                  "entries": {n: str(store.entry_path(n)) for n in names}}))
"""


def run_package(package_root: Path, definition: Path, root: Path, names: list[str], cache: Path, workers: int) -> dict:
    """extract_features of the dcase_effdl package under `package_root`, timed in a fresh process."""
    shutil.rmtree(cache, ignore_errors=True)
    names_file = cache.parent / f"{cache.name}.names"
    names_file.write_text("\n".join(names))
    env = dict(os.environ, PYTHONPATH=str(package_root))
    out = subprocess.run([sys.executable, "-c", _TIMED_EXTRACTION, str(definition), str(root), str(names_file),
                          str(cache), str(workers)], env=env, capture_output=True, text=True, check=False)
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


def machine() -> dict:
    """CPU model and vector flags, torch version and thread counts this run used."""
    import torch

    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", text, re.M).group(1).strip()
        all_flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M).group(1).split()
        flags = {f for f in all_flags if f == "avx2" or f.startswith(("avx512", "amx")) or "vnni" in f}
    except (OSError, AttributeError):
        pass
    return {
        "cpu": model, "cpu_flags": " ".join(sorted(flags)) or "(none of avx2/avx512/vnni/amx)",
        "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(), "cores": os.cpu_count(),
        "env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ATEN_CPU_CAPABILITY",
                                           "ONEDNN_MAX_CPU_ISA") if k in os.environ},
    }


def same_features(a: dict, b: dict) -> tuple[int, int]:
    """(clips whose stored feature values are identical, clips compared) between two runs' entries."""
    same = sum(np.array_equal(np.load(a[n], allow_pickle=False), np.load(b[n], allow_pickle=False)) for n in a)
    return same, len(a)


def max_db_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))) * DB_PER_LN)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dcase_effdl_bench"))
    parser.add_argument("--workers", type=int, default=0, help="extraction threads (0: all cores)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate librosa / dcase_effdl N times, keep the best")
    parser.add_argument("--skip-256", action="store_true", help="skip the 256-band definitions")
    parser.add_argument("--clips-256", type=int, default=100, help="clips for each 256-band definition")
    parser.add_argument("--old", metavar="REV", help="also time the extractor of this git revision, in the same run")
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args(argv)

    from dcase_effdl.features import logmel as features
    from dcase_effdl.features.audio import load_audio
    from dcase_effdl.config import load_features

    workdir = Path(args.workdir)
    root = workdir / "tau-bench"
    t0 = time.perf_counter()
    names = make_clips(root, args.clips)
    print(f"{len(names)} clips (10 s, 48 kHz, 24-bit stereo WAV) in {root} ({time.perf_counter() - t0:.0f} s to prepare)")
    warm_page_cache(root, names)
    definition = REPO / "features" / "dcase2020_baseline.yaml"
    cfg = load_features(definition)
    result = {"clips": len(names), **machine(), "definition": cfg.name,
              "load_average_start": round(os.getloadavg()[0], 2)}
    print(f"CPU: {result['cpu']} ({result['cores']} cores), flags: {result['cpu_flags']}; torch {result['torch']} "
          f"(kernels: {result['torch_cpu_capability']}, {result['torch_threads']} intra-op threads)"
          + (f", env {result['env']}" if result["env"] else ""))
    old_root = export_revision(args.old, workdir / "old-package") if args.old else None

    best = {"librosa": float("inf"), "new": float("inf"), "old": float("inf")}
    sides = [("new", REPO, "dcase_effdl extract_features (this code)")]
    if old_root:
        sides.append(("old", old_root, f"dcase_effdl extract_features ({args.old})"))
    runs = {}
    for i in range(max(args.repeat, 1)):
        t, ref = run_librosa(root, names, cfg)
        print(f"{'librosa per-clip loop (1 process)':40s} {t:7.1f} s  {len(names) / t:6.1f} clips/s")
        best["librosa"] = min(best["librosa"], t)
        for side, package, label in sides if i % 2 == 0 else sides[::-1]:  # alternate which goes first
            runs[side] = run_package(package, definition, root, names, workdir / f"cache-{side}", args.workers)
            seconds = runs[side]["seconds"]
            print(f"{label:40s} {seconds:7.1f} s  {len(names) / seconds:6.1f} clips/s  (threads: {runs[side]['threads']})")
            best[side] = min(best[side], seconds)
    result["librosa_clips_per_s"] = len(names) / best["librosa"]
    result["dcase_effdl_clips_per_s"] = len(names) / best["new"]
    result["speedup"] = best["librosa"] / best["new"]
    summary = (f"best of {max(args.repeat, 1)}: librosa {result['librosa_clips_per_s']:.1f} clips/s, dcase_effdl "
               f"{result['dcase_effdl_clips_per_s']:.1f} clips/s: {result['speedup']:.2f}x librosa")
    if old_root:
        result["old_rev"] = args.old
        result["old_clips_per_s"] = len(names) / best["old"]
        result["old_speedup"] = best["librosa"] / best["old"]
        result["new_vs_old"] = best["old"] / best["new"]
        result["same_stored_features_as_old"], _ = same_features(runs["new"]["entries"], runs["old"]["entries"])
        summary += (f"; {args.old} {result['old_clips_per_s']:.1f} clips/s ({result['old_speedup']:.2f}x librosa): "
                    f"this code runs at {result['new_vs_old']:.2f}x its speed; stored features identical for "
                    f"{result['same_stored_features_as_old']} of {len(names)} clips")
    print(summary)
    shutil.rmtree(workdir / "cache-new", ignore_errors=True)
    shutil.rmtree(workdir / "cache-old", ignore_errors=True)
    _, store = run_project(root, names, cfg, workdir / "cache", args.workers)  # in-process, for the checks

    stored = np.stack([store.load(n)[0] for n in names])  # (N, n_mels, frames) from the cache
    n_check = min(len(names), 100)  # float32 recomputation: 100 clips show the arithmetic; storage checks all
    computed = np.stack([features.logmel(load_audio(root / n, cfg), cfg)[0] for n in names[:n_check]])
    result["max_diff_db_computed"] = max_db_difference(computed, ref[:n_check])
    result["max_diff_db_stored"] = max_db_difference(stored, ref)
    result["stored_dtype"] = str(np.load(store.entry_path(names[0]), allow_pickle=False).dtype)
    print(f"max |difference| vs librosa: {result['max_diff_db_computed']:.2e} dB as computed (float32), "
          f"{result['max_diff_db_stored']:.2e} dB as stored ({result['stored_dtype']})")

    if not args.skip_256:
        for path in sorted((REPO / "features").glob("*.yaml")):
            feat = load_features(path)
            if feat.n_mels != 256:
                continue
            subset = names[: args.clips_256]
            t, _ = run_project(root, subset, feat, workdir / "cache256", args.workers)
            result[f"{feat.name}_clips_per_s"] = len(subset) / t
            print(f"dcase_effdl {feat.name} ({feat.n_mels} bands, {feat.sample_rate} Hz, {feat.channels}): "
                  f"{len(subset)} clips in {t:.1f} s, {len(subset) / t:.1f} clips/s")
    shutil.rmtree(workdir / "cache", ignore_errors=True)
    shutil.rmtree(workdir / "cache256", ignore_errors=True)
    result["load_average_end"] = round(os.getloadavg()[0], 2)
    line = json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items()})
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    return result


if __name__ == "__main__":
    main()
