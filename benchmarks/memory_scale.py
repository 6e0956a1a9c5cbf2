"""Peak RSS of `dcase-effdl run` against the number of clips, per feature definition and process count.

    python benchmarks/memory_scale.py                       # N = 40 and 4N = 160 clips, 1 and 2 processes
    python benchmarks/memory_scale.py --clips 120 --ranks 1 --definitions dcase2020_baseline

Generates 10-s stereo 48 kHz clips (the TAU format) for N and 4N clips, extracts each definition's
features once (not measured), then runs `dcase-effdl run recipes/quickstart.yaml` (1 epoch) with
each definition (the 2020 baseline CNN, its second pool shortened for 431 frames), alone and under
`torchrun --nproc_per_node 2`, sampling the RSS of each process of the run's tree (ranks and their
loader workers) every 20 ms: the largest one process reaches, the tree's sum, and the tree's summed
PSS (RSS counts a process's own pages and the file pages it maps, not the page cache that serves
its reads). Prints KB per clip of the slope between N and 4N and the extrapolation to the TAU
development sets (14,400 and 23,040 clips) of each, then the training throughput of packed,
per-batch features against the whole split loaded in RAM, with 0, 1 and 2 loader workers (in this
process, same model and seed), in `--rounds` alternating rounds (medians: the feeds share the CPU's
noise). `--throughput-only` skips the memory runs.

    python benchmarks/memory_scale.py --clips 40 --throughput-only --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGETS = (14_400, 23_040)  # TAU Urban Acoustic Scenes 2020 3Class and Mobile development clips
MB = 1024**2
# The 2020 baseline CNN pools 100 frames in its second block; 431-frame inputs need a smaller pool.
MODEL_SETTINGS = {"koutini_256mel_22k_stereo": ["model.params.pool_sizes=[[5, 5], [4, 10]]"]}


def _status_kb(pid: int, field: str, name: str = "status") -> int:
    """A `field:` line of /proc/<pid>/<name> in bytes (0 when the process is gone or has no such line)."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":")), 0)
    except OSError:
        return 0


def tree(root_pid: int) -> list[int]:
    """`root_pid` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def peak_rss(cmd: list[str], env: dict) -> tuple[dict, float]:
    """({"process": largest peak RSS of one process, "sum": peak summed RSS, "pss": peak summed PSS} in bytes,
    seconds) of running `cmd`; raises when it fails. A forked loader worker shares its parent's pages, and
    RSS counts them in both: PSS divides a shared page among its sharers, so the PSS sum is the tree's
    real footprint."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak, done = {"process": 0, "sum": 0, "pss": 0}, threading.Event()

    def sample():
        while not done.is_set():
            rss = [_status_kb(pid, "VmRSS") for pid in tree(proc.pid)]
            pss = sum(_status_kb(pid, "Pss", "smaps_rollup") for pid in tree(proc.pid))
            peak.update(process=max(peak["process"], max(rss, default=0)), sum=max(peak["sum"], sum(rss)),
                        pss=max(peak["pss"], pss))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return peak, time.perf_counter() - start


FEEDS = (("in RAM", 0), ("packed", 0), ("packed", 1), ("packed", 2), ("in RAM", 1))  # (source, loader_workers)


def throughput(recipe_path: str, overrides: list[str], data: Path, epochs: int = 3, rounds: int = 1) -> dict:
    """(training clips/s, share of the loop's time spent waiting for batches) of the mini-batch loop per
    (source, loader_workers) of FEEDS: packed per-batch features or the same split in RAM; epochs 2.. only
    (the first starts the workers); medians of `rounds` rounds, each running every feed once. The wait
    share does not depend on how busy the CPU is the way clips/s does."""
    import statistics

    import torch

    from dcase_effdl.config import load_recipe
    from dcase_effdl.pipeline import prepare_data, resolve
    from dcase_effdl.training.loop import FineTune, fit

    recipe, feat = load_recipe(recipe_path, overrides)
    spec = resolve(recipe, feat, recipe_path).spec
    bundle = prepare_data(recipe, feat, str(data))
    torch.set_num_threads(recipe.train.threads)
    packed = replace(bundle, x_val=bundle.x_val[:0])  # no validation: only the mini-batch loop is compared
    sources = {"packed": packed, "in RAM": replace(packed, x_train=bundle.x_train[:])}  # the whole split as one float32 tensor
    rates = {feed: [] for feed in FEEDS}
    for _ in range(rounds):
        for source, workers in FEEDS:
            torch.manual_seed(recipe.seed)
            model = spec.build()
            cfg = replace(recipe.train, loader_workers=workers)
            rows = fit(model, sources[source], cfg, seed=recipe.seed, tune=FineTune(epochs=epochs), desc="throughput").epochs[1:]
            seconds = sum(r["train_seconds"] for r in rows)
            rates[source, workers].append((len(bundle.x_train) * len(rows) / seconds,
                                           sum(r["data_seconds"] for r in rows) / seconds))
    return {feed: tuple(statistics.median(v) for v in zip(*r)) for feed, r in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=40, help="N (the second size is 4N)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--definitions", nargs="+", default=["dcase2020_baseline", "koutini_256mel_22k_stereo"])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds of the throughput comparison")
    parser.add_argument("--throughput-only", action="store_true", help="skip the peak-RSS runs")
    args = parser.parse_args()

    from dcase_effdl.config import load_recipe
    from dcase_effdl.data.dataset import load_dataset
    from dcase_effdl.data.synthetic import make_dataset
    from dcase_effdl.features.cache import extract_features
    from dcase_effdl.machine import describe

    print(describe(), flush=True)
    work = Path(tempfile.mkdtemp(prefix="memory_scale-"))
    recipe_path = str(REPO / "recipes" / "quickstart.yaml")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS=str(args.threads))
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    sizes = (args.clips, 4 * args.clips)
    try:
        roots = {}
        for n in sizes if not args.throughput_only else sizes[1:]:
            roots[n] = make_dataset(work / f"data{n}", clips_per_class=max(1, round(n / 3)), seed=0, channels=2)
        rows, rates = [], {}
        for name in args.definitions:
            common = [f"features={name}", "train.epochs=1", f"train.threads={args.threads}",
                      f"cache_dir={work / 'cache'}", "train.device=cpu", *MODEL_SETTINGS.get(name, [])]
            _, feat = load_recipe(recipe_path, common)
            for n in sizes if not args.throughput_only else sizes[1:]:
                ds = load_dataset(roots[n])
                extract_features(roots[n], [c.filename for c in ds.clips], feat, work / "cache", progress=False)
                n_clips = len(ds.clips)
                for ranks in args.ranks if not args.throughput_only else ():
                    prefix = [torchrun, "--standalone", "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable]
                    cmd = [*prefix, "-m", "dcase_effdl", "run", recipe_path, "--data", str(roots[n]),
                           "--out", str(work / f"run-{name}-{n}-{ranks}"), *[a for s in common for a in ("--set", s)]]
                    peak, seconds = peak_rss(cmd, env)
                    rows.append((name, ranks, n_clips, peak, seconds))
                    print(f"{name:28s} {ranks} rank(s) {n_clips:5d} clips: peak RSS {peak['process'] / MB:7.1f} MB "
                          f"per process, {peak['sum'] / MB:7.1f} MB summed, PSS {peak['pss'] / MB:7.1f} MB summed "
                          f"({seconds:.0f} s)", flush=True)
            rates[name] = throughput(recipe_path, common, roots[sizes[1]], rounds=args.rounds)
        if rows:
            print(f"\n{'definition':28s} {'procs':>5} {'measure':>18} {'N':>9} {'4N':>9} {'slope':>13} "
                  + " ".join(f"{f'@{t:,}':>9}" for t in TARGETS))
        for name in args.definitions if rows else ():
            for ranks in args.ranks:
                (n0, r0), (n1, r1) = [(r[2], r[3]) for r in rows if r[0] == name and r[1] == ranks]
                for measure, label in (("process", "RSS, one process"), ("sum", "RSS, sum"), ("pss", "PSS, sum")):
                    slope = (r1[measure] - r0[measure]) / (n1 - n0)
                    fits = " ".join(f"{(r0[measure] + slope * (t - n0)) / MB:7.0f}MB" for t in TARGETS)
                    print(f"{name:28s} {ranks:5d} {label:>18} {r0[measure] / MB:7.0f}MB {r1[measure] / MB:7.0f}MB "
                          f"{slope / 1024:6.1f} KB/clip {fits}")
        print(f"\ntraining throughput, epochs 2-3 on {sizes[1]} generated clips' training fold ({args.threads} thread(s); "
              f"ratio: against in RAM, read in the loop; median of {args.rounds} round(s)):")
        for name, by_feed in rates.items():
            base = by_feed["in RAM", 0][0]
            for (source, workers), (rate, waiting) in by_feed.items():
                print(f"  {name:28s} {source:7s} loader_workers={workers}: {rate:7.1f} clips/s (ratio {rate / base:.2f}), "
                      f"{100 * waiting:4.1f} % of the loop waiting for batches")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
