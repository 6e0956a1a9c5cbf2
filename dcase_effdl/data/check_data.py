"""Check a dataset folder before a long run: layout, every audio header, and a summary of what is there.

    dcase-effdl check-data DIR [--json] [--workers N]

Each file gets `features.audio.check_audio`, the same check the feature cache runs before a `run`
extracts anything: headers (sample rate, channels, frames, format), and the samples of float files
(the only ones that can hold NaN or inf), so the 14,400 clips of TAU 2020 3Class take seconds.
Missing, unreadable and otherwise bad files are listed by count and first names.
"""

from __future__ import annotations

import os
import statistics
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from dcase_effdl.data import dataset as dataset_mod
from dcase_effdl.errors import UserError

# Files whose duration differs from the most common one by more than this are reported.
DURATION_TOLERANCE_S = 0.05
FIRST_N = 5  # names shown per problem kind


@dataclass
class DataReport:
    """What `check_data` found; counts are over meta.csv's clips (folds add per-fold counts)."""

    root: str
    n_clips: int
    classes: list[str]
    per_class: dict[str, int]
    per_city: dict[str, int]
    per_device: dict[str, int]
    per_fold: dict[str, int]
    per_fold_class: dict[str, dict[str, int]]
    sample_rates: dict[int, int]  # Hz -> clips
    channels: dict[int, int]
    formats: dict[str, int]  # 'WAV PCM_24' -> clips
    duration_s: dict[str, float]  # min, median, max over readable files
    n_read: int
    missing: list[str] = field(default_factory=list)  # paths relative to root
    problems: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    odd: list[tuple[str, str]] = field(default_factory=list)  # readable but unlike the rest
    unlisted: int = 0  # audio files on disk that meta.csv does not name

    @property
    def ok(self) -> bool:
        return not self.missing and not self.problems

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()} | {"ok": self.ok}


def _check_file(path: Path) -> dict | str:
    from dcase_effdl.features.audio import AudioProblem, check_audio

    try:
        return check_audio(path)
    except AudioProblem as exc:
        return exc.reason


def check_files(paths: list[Path], workers: int = 0, progress: bool = True) -> list[dict | str]:
    """`audio.check_audio` of each path: its header facts (a dict) or why it is bad (a str), in order."""
    n_workers = workers or min(8, (os.cpu_count() or 1) * 2)  # header reads wait on the disk more than the CPU
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        return list(tqdm(
            pool.map(_check_file, paths), total=len(paths), desc="check audio", unit="file", leave=False,
            disable=not progress or not sys.stderr.isatty(),
        ))


def find_odd(infos: dict[str, dict], min_share: float = 0.0, check_duration: bool = True) -> dict[str, str]:
    """{name: reason} for files whose sample rate, channels or duration differ from most files'.

    An attribute is judged only when its most common value is shared by at least `min_share` of the
    files (a dataset of many rates or lengths has no "wrong" one).
    """
    if not infos:
        return {}

    def common(values: list):
        value, n = Counter(values).most_common(1)[0]
        return value if n >= min_share * len(values) else None

    common_rate = common([i["sample_rate"] for i in infos.values()])
    common_chans = common([i["channels"] for i in infos.values()])
    common_dur = common([round(i["duration"], 2) for i in infos.values()]) if check_duration else None
    odd = {}
    for name, info in infos.items():
        reasons = []
        if common_rate is not None and info["sample_rate"] != common_rate:
            reasons.append(f"{info['sample_rate']} Hz (most files: {common_rate} Hz)")
        if common_chans is not None and info["channels"] != common_chans:
            reasons.append(f"{info['channels']} channels (most files: {common_chans})")
        if common_dur is not None and abs(info["duration"] - common_dur) > DURATION_TOLERANCE_S:
            reasons.append(f"{info['duration']:.2f} s (most files: {common_dur:.2f} s)")
        if reasons:
            odd[name] = ", ".join(reasons)
    return odd


def check_data(root: str | Path, *, workers: int = 0, progress: bool = True) -> DataReport:
    """Load the dataset at `root`, check every listed audio file (`check_audio`) and summarise.

    Layout errors (no meta.csv, malformed fold files) raise UserError; missing or bad audio
    is collected in the report (`report.ok` is False) so that all problems are seen at once.
    """
    ds = dataset_mod.load_dataset(root, folds=())
    clips = ds.clips
    missing_paths = dataset_mod.missing_audio(ds)
    missing = [str(p.relative_to(ds.root)).replace(os.sep, "/") for p in missing_paths]
    missing_set = set(missing)
    present = [c for c in clips if c.filename.replace("\\", "/") not in missing_set]
    results = check_files([ds.audio_path(c) for c in present], workers, progress)

    infos: dict[str, dict] = {}
    problems: list[tuple[str, str]] = []
    for clip, result in zip(present, results):
        if isinstance(result, str):
            problems.append((clip.filename, result))
        else:
            infos[clip.filename] = result

    rates = Counter(i["sample_rate"] for i in infos.values())
    chans = Counter(i["channels"] for i in infos.values())
    formats = Counter(f"{i['format']} {i['subtype']}" for i in infos.values())
    durations = sorted(i["duration"] for i in infos.values())
    odd = list(find_odd(infos).items())

    unlisted = 0
    folders = {ds.audio_path(c).parent for c in clips}
    listed_names = {ds.audio_path(c) for c in clips}
    for folder in folders:
        if folder.is_dir():
            unlisted += sum(1 for e in os.scandir(folder) if e.is_file() and Path(e.path) not in listed_names
                            and not e.name.startswith("."))

    def count(values) -> dict:
        return dict(sorted(Counter(v if v is not None else "(unknown)" for v in values).items()))

    per_fold = {name: len(f) for name, f in ds.folds.items()}
    per_fold_class = {name: count(c.scene_label for c in f) for name, f in ds.folds.items()}
    return DataReport(
        root=str(ds.root),
        n_clips=len(clips),
        classes=list(ds.classes),
        per_class=count(c.scene_label for c in clips),
        per_city=count(c.city for c in clips),
        per_device=count(c.device for c in clips),
        per_fold=per_fold,
        per_fold_class=per_fold_class,
        sample_rates=dict(sorted(rates.items())),
        channels=dict(sorted(chans.items())),
        formats=dict(formats.most_common()),
        duration_s=(
            {"min": durations[0], "median": statistics.median(durations), "max": durations[-1], "total": sum(durations)}
            if durations else {}
        ),
        n_read=len(infos),
        missing=missing,
        problems=problems,
        odd=odd,
        unlisted=unlisted,
    )


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def format_report(report: DataReport) -> str:
    """Human-readable summary; the last line says OK or what is wrong."""
    lines = [f"dataset {report.root}: {report.n_clips} clips in meta.csv"]
    lines.append(f"  classes ({len(report.classes)}): {_counts(report.per_class)}")
    lines.append(f"  cities ({len(report.per_city)}): {_counts(report.per_city)}")
    lines.append(f"  devices ({len(report.per_device)}): {_counts(report.per_device)}")
    for name, n in report.per_fold.items():
        lines.append(f"  fold1_{name}: {n} clips ({_counts(report.per_fold_class[name])})")
    lines.append(f"  audio headers read: {report.n_read} of {report.n_clips}")
    if report.n_read:
        d = report.duration_s
        lines.append(f"  sample rates: {_counts({f'{k} Hz': v for k, v in report.sample_rates.items()})}")
        lines.append(f"  channels: {_counts(report.channels)}")
        lines.append(f"  formats: {_counts(report.formats)}")
        lines.append(f"  duration (s): min {d['min']:.2f}, median {d['median']:.2f}, max {d['max']:.2f}; "
                     f"total {d['total'] / 3600:.2f} h")
    if report.unlisted:
        lines.append(f"  note: {report.unlisted} audio file(s) on disk are not listed in meta.csv")
    if report.odd:
        first = "; ".join(f"{n}: {r}" for n, r in report.odd[:FIRST_N])
        more = ", ..." if len(report.odd) > FIRST_N else ""
        lines.append(f"  warning: {len(report.odd)} file(s) unlike the rest: {first}{more}")
    if report.missing:
        first = ", ".join(report.missing[:FIRST_N])
        more = ", ..." if len(report.missing) > FIRST_N else ""
        folder = (Path(report.root) / report.missing[0]).parent
        where = f"; {folder} does not exist" if not folder.is_dir() else f" in {folder}"
        lines.append(f"MISSING: {len(report.missing)} of {report.n_clips} audio files not found{where}: {first}{more}")
    if report.problems:
        first = "; ".join(f"{n}: {r}" for n, r in report.problems[:FIRST_N])
        more = "; ..." if len(report.problems) > FIRST_N else ""
        lines.append(f"UNREADABLE: {len(report.problems)} audio file(s): {first}{more}")
    if report.ok:
        lines.append(f"OK: all {report.n_clips} audio files present and readable")
    return "\n".join(lines)
