"""Reader for datasets in the TAU Urban Acoustic Scenes 2020 3Class layout (meta.csv + evaluation_setup folds).

Layout (tab-separated, header row, paths relative to the root)::

    ROOT/meta.csv                             filename  scene_label  identifier  source_label
    ROOT/evaluation_setup/fold1_train.csv     filename  scene_label
    ROOT/evaluation_setup/fold1_evaluate.csv  filename  scene_label
    ROOT/evaluation_setup/fold1_test.csv      filename
    ROOT/audio/<scene>-<city>-<location>-<segment>-<device>.<ext>

Only paths and labels are read here; audio decoding lives in `dcase_effdl.features.audio`.
"""

from __future__ import annotations

import difflib
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import numpy as np

from dcase_effdl.errors import UserError

FOLDS = ("train", "evaluate", "test")
META_FILE = "meta.csv"
# Columns each file must have; other columns are ignored so that extended metadata still loads.
_META_COLUMNS = ("filename",)
_FOLD_COLUMNS = {"train": ("filename", "scene_label"), "evaluate": ("filename", "scene_label"), "test": ("filename",)}
_NAME_PATTERN = "<scene>-<city>-<location>-<segment>-<device>.<ext>"


def fold_file(name: str) -> str:
    """Path of fold `name` ('train' | 'evaluate' | 'test') relative to the dataset root."""
    if name not in FOLDS:
        raise UserError(f"unknown fold '{name}': expected one of {', '.join(FOLDS)}")
    return f"evaluation_setup/fold1_{name}.csv"


@dataclass(frozen=True)
class Clip:
    """One audio clip: its path relative to the root, its label and the parts of its file name.

    `scene10` is the fine scene parsed from the file name ('airport', 'street_pedestrian', ...);
    `identifier` is the recording location ('<city>-<location>'), the unit of every split.
    Fields the file name cannot provide (e.g. evaluation-set names like 'audio/17.wav') are None.
    """

    filename: str
    scene_label: str | None
    identifier: str | None
    city: str | None = None
    location: str | None = None
    segment: str | None = None
    device: str | None = None
    scene10: str | None = None
    source_label: str | None = None


def parse_filename(filename: str) -> dict:
    """Split '<dir>/<scene>-<city>-<location>-<segment>-<device>.<ext>' into its parts.

    Returns {'scene10', 'city', 'location', 'segment', 'device', 'identifier'}. The scene may contain
    underscores or hyphens (parsed from the right); the other four parts may not contain hyphens.
    """
    name = PurePosixPath(filename.replace("\\", "/")).name
    stem, dot, ext = name.rpartition(".")
    parts = stem.rsplit("-", 4) if dot else []
    if len(parts) != 5 or not all(parts) or not ext:
        raise UserError(f"{filename}: file name does not follow {_NAME_PATTERN}")
    scene10, city, location, segment, device = parts
    return {
        "scene10": scene10,
        "city": city,
        "location": location,
        "segment": segment,
        "device": device,
        "identifier": f"{city}-{location}",
    }


def _read_table(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """Read a tab-separated file with a header row into (line number, row dict) pairs."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise UserError(f"{path}: empty file, expected a header row with columns {', '.join(required)}")
    header = [h.strip() for h in lines[0].split("\t")]
    missing = [c for c in required if c not in header]
    if missing:
        hint = " (the file must be tab-separated)" if len(header) == 1 and ("," in header[0] or ";" in header[0]) else ""
        raise UserError(f"{path}: header lacks column(s) {', '.join(missing)}{hint}; found: {', '.join(header)}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue  # blank lines (usually a trailing newline) carry no data
        values = [v.strip() for v in line.split("\t")]
        if len(values) != len(header):
            raise UserError(
                f"{path}:{number}: malformed row: expected {len(header)} tab-separated fields "
                f"({', '.join(header)}), got {len(values)}"
            )
        row = dict(zip(header, values))
        if not row["filename"]:
            raise UserError(f"{path}:{number}: malformed row: empty filename")
        rows.append((number, row))
    return rows


def _check_relative(filename: str, where: str) -> None:
    pure = PurePosixPath(filename.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or (len(filename) > 1 and filename[1] == ":"):
        raise UserError(f"{where}: file name '{filename}' must be a path relative to the dataset root")


def _clip_from_row(row: dict[str, str]) -> Clip:
    filename = row["filename"]
    try:
        parts = parse_filename(filename)
    except UserError:
        # Evaluation-set names ('audio/17.wav') carry no scene/city; meta.csv may still give them.
        parts = {}
    identifier = row.get("identifier") or parts.get("identifier")  # meta.csv is authoritative
    return Clip(
        filename=filename,
        scene_label=row.get("scene_label") or None,
        identifier=identifier,
        city=parts.get("city"),
        location=parts.get("location"),
        segment=parts.get("segment"),
        device=parts.get("device"),
        scene10=parts.get("scene10"),
        source_label=row.get("source_label") or None,
    )


@dataclass
class Dataset:
    """A dataset root, its clips (meta.csv order), classes (sorted) and the fold lists."""

    root: Path
    clips: list[Clip]
    classes: list[str]
    folds: dict[str, list[Clip]] = field(default_factory=dict)

    def fold(self, name: str) -> list[Clip]:
        """Clips of fold 'train' | 'evaluate' | 'test' in fold-file order."""
        fold_file(name)  # validates the name
        if name not in self.folds:
            raise UserError(f"{self.root / fold_file(name)}: fold '{name}' was not loaded (file not found)")
        return list(self.folds[name])

    @property
    def has_labels(self) -> bool:
        """True when the data carries scene labels (development sets; evaluation sets do not)."""
        return bool(self.classes)

    @property
    def scene10_classes(self) -> list[str]:
        """The fine scenes parsed from file names, sorted ('airport', ..., 'tram' for TAU)."""
        return sorted({c.scene10 for c in self.clips if c.scene10 is not None})

    def scene10_labels(self, clips: Iterable[Clip]) -> np.ndarray:
        """Indices (int64) of `clips`' fine scenes in `scene10_classes`."""
        index = {s: i for i, s in enumerate(self.scene10_classes)}
        out = []
        for clip in clips:
            if clip.scene10 not in index:
                raise UserError(f"{self.root / clip.filename}: no scene in the file name ({_NAME_PATTERN})")
            out.append(index[clip.scene10])
        return np.asarray(out, dtype=np.int64)

    def audio_path(self, clip: Clip) -> Path:
        """Absolute path of the clip's audio file."""
        return self.root / clip.filename

    def class_index(self, label: str) -> int:
        """Column index of `label` in `classes` (alphabetical order)."""
        try:
            return self.classes.index(label)
        except ValueError:
            raise UserError(f"{self.root}: unknown class label '{label}'; classes are {', '.join(self.classes)}") from None

    def labels(self, clips: Iterable[Clip]) -> np.ndarray:
        """Class indices (int64) of `clips`; a clip without a label is an error naming it."""
        out = []
        for clip in clips:
            if clip.scene_label is None:
                raise UserError(f"{self.root / clip.filename}: clip has no scene label")
            out.append(self.class_index(clip.scene_label))
        return np.asarray(out, dtype=np.int64)


def _suggest_root(root: Path) -> str:
    """A ' (did you mean X?)' hint when a folder near `root` holds meta.csv: the path-one-folder-off case."""
    candidates: list[Path] = []
    if root.is_dir():
        try:
            children = sorted(p for p in root.iterdir() if p.is_dir())
        except OSError:
            children = []
        for child in children:
            if (child / META_FILE).is_file():
                candidates.append(child)
        if not candidates:
            for child in children:
                try:
                    candidates += sorted(g for g in child.iterdir() if g.is_dir() and (g / META_FILE).is_file())
                except OSError:
                    pass
    # ROOT/audio or ROOT/evaluation_setup (or a path below them) given instead of ROOT
    parent = root.parent
    for ancestor in list(root.parents)[:3]:
        if not candidates and (ancestor / META_FILE).is_file():
            candidates.append(ancestor)
    if not candidates and not root.exists() and parent.is_dir():
        try:
            siblings = sorted(p for p in parent.iterdir() if p.is_dir())
        except OSError:
            siblings = []
        for sib in siblings:
            nested = sib / root.name  # archive unpacked one level deeper than the name given
            if nested.is_dir() and (nested / META_FILE).is_file():
                candidates.append(nested)
            elif (sib / META_FILE).is_file() and difflib.SequenceMatcher(None, sib.name, root.name).ratio() > 0.6:
                candidates.append(sib)
    if not candidates:
        return ""
    more = f" or {len(candidates) - 1} other folder(s)" if len(candidates) > 1 else ""
    return f" (did you mean {candidates[0]}{more}? it contains {META_FILE})"


def load_dataset(root: str | Path, folds: Sequence[str] = FOLDS) -> Dataset:
    """Read meta.csv and the fold files under `root`; every problem is a one-line UserError.

    `folds` names the fold files that must exist (the evaluation set ships only 'test'). Fold rows
    must name files listed in meta.csv; a fold label that contradicts meta.csv is an error.
    """
    root = Path(os.path.abspath(Path(root).expanduser()))
    if not root.exists():
        raise UserError(f"dataset root {root} does not exist{_suggest_root(root)}")
    if not root.is_dir():
        raise UserError(f"dataset root {root} is not a folder")
    meta_path = root / META_FILE
    clips: list[Clip] = []
    by_name: dict[str, Clip] = {}
    if meta_path.is_file():
        for number, row in _read_table(meta_path, _META_COLUMNS):
            _check_relative(row["filename"], f"{meta_path}:{number}")
            if row["filename"] in by_name:
                raise UserError(f"{meta_path}:{number}: duplicate file name {row['filename']}")
            clip = _clip_from_row(row)
            by_name[clip.filename] = clip
            clips.append(clip)
        if not clips:
            raise UserError(f"{meta_path}: no clips listed")
    elif "train" in folds or not any((root / fold_file(name)).is_file() for name in FOLDS):
        raise UserError(f"{meta_path}: file not found; expected the TAU 2020 3Class layout under {root}{_suggest_root(root)}")
    # else: an evaluation set shipped without meta.csv; its clips come from the fold files below.
    metaless = not clips
    classes = sorted({c.scene_label for c in clips if c.scene_label is not None})

    loaded: dict[str, list[Clip]] = {}
    for name in FOLDS:
        path = root / fold_file(name)
        if not path.is_file():
            if name in folds:
                raise UserError(f"{path}: fold file not found (expected evaluation_setup/fold1_{name}.csv under {root})")
            continue
        fold_clips = []
        for number, row in _read_table(path, _FOLD_COLUMNS[name]):
            clip = by_name.get(row["filename"])
            if clip is None and metaless:
                _check_relative(row["filename"], f"{path}:{number}")
                clip = by_name[row["filename"]] = _clip_from_row({"filename": row["filename"]})
                clips.append(clip)
            if clip is None:
                raise UserError(f"{path}:{number}: {row['filename']} is not listed in {meta_path}")
            label = row.get("scene_label") or None
            if label is not None and clip.scene_label is not None and label != clip.scene_label:
                raise UserError(f"{path}:{number}: label '{label}' of {clip.filename} contradicts meta.csv ('{clip.scene_label}')")
            if label is not None and clip.scene_label is None:
                clip = Clip(**{**clip.__dict__, "scene_label": label})
                if metaless:  # the fold is the only source of labels: keep clips and folds in step
                    clips[clips.index(by_name[clip.filename])] = by_name[clip.filename] = clip
                if label not in classes:
                    classes = sorted({*classes, label})
            fold_clips.append(clip)
        loaded[name] = fold_clips
    return Dataset(root=root, clips=clips, classes=classes, folds=loaded)


def _dataset_clips(dataset: Dataset, folds: Iterable[str] | None) -> list[Clip]:
    if folds is None:
        return list(dataset.clips)  # every fold row is in meta.csv, so this covers the folds too
    seen: dict[str, Clip] = {}
    for name in folds:
        for clip in dataset.fold(name):
            seen.setdefault(clip.filename, clip)
    return list(seen.values())


def missing_audio(dataset: Dataset, folds: Iterable[str] | None = None) -> list[Path]:
    """Absolute paths of audio files named by meta.csv (or only by `folds`) that do not exist."""
    clips = _dataset_clips(dataset, folds)
    # One directory listing per folder instead of one stat per file: 14,400 clips stay fast on NFS.
    listed: dict[Path, set[str] | None] = {}
    missing = []
    for clip in clips:
        path = dataset.audio_path(clip)
        folder = path.parent
        if folder not in listed:
            try:
                listed[folder] = {e.name for e in os.scandir(folder) if e.is_file()}
            except OSError:
                listed[folder] = None
        names = listed[folder]
        if names is None or path.name not in names:
            missing.append(path)
    return missing


def check_layout(dataset: Dataset, folds: Iterable[str] | None = None) -> None:
    """Raise a one-line UserError if audio named by meta.csv (or by `folds`) is missing.

    The message gives how many are missing, the first few names and the full expected path of the
    first one, so a root that is one folder off is obvious.
    """
    clips = _dataset_clips(dataset, folds)
    missing = missing_audio(dataset, folds)
    if not missing:
        return
    first = missing[0]
    folder = first.parent
    names = [str(p.relative_to(dataset.root)).replace(os.sep, "/") for p in missing[:3]]
    more = ", ..." if len(missing) > 3 else ""
    absent = "; that folder does not exist" if not folder.is_dir() else ""
    raise UserError(
        f"{len(missing)} of {len(clips)} audio files missing under {folder}: {', '.join(names)}{more} "
        f"(expected {first}{absent})"
    )


def validation_split(clips: Sequence[Clip], fraction: float, seed: int) -> tuple[list[Clip], list[Clip]]:
    """Split `clips` into (train, val), location-disjoint, with about `fraction` of each class in val.

    Locations (`identifier`; the file name when absent) are chosen per class so that every class with
    at least two locations appears on both sides. Deterministic for a seed; both lists keep input order.
    `fraction` 0 trains on the whole fold: (all clips, []), whatever the seed.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"validation fraction must be between 0 and 1 (0 included: no validation split), got {fraction}")
    if fraction == 0.0:
        return list(clips), []
    groups: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        groups[clip.identifier or clip.filename].append(i)
    # A location belongs to its most common label (TAU locations hold one scene).
    by_class: dict[str, list[str]] = defaultdict(list)
    for key in sorted(groups):
        labels = [clips[i].scene_label or "" for i in groups[key]]
        by_class[max(sorted(set(labels)), key=labels.count)].append(key)

    rng = np.random.default_rng(seed)
    val_keys: set[str] = set()
    for label in sorted(by_class):
        keys = by_class[label]
        order = [keys[i] for i in rng.permutation(len(keys))]
        if len(order) < 2:
            continue  # a single location cannot be on both sides: keep it for training
        total = sum(len(groups[k]) for k in order)
        target = fraction * total
        taken = 0
        chosen: list[str] = []
        for key in order:
            size = len(groups[key])
            # Greedy: add a location when it brings the class's val count closer to the target.
            if not chosen or abs(taken + size - target) < abs(taken - target):
                chosen.append(key)
                taken += size
            if len(chosen) == len(order) - 1:
                break  # leave at least one location for training
        val_keys.update(chosen)
    val_idx = sorted(i for k in val_keys for i in groups[k])
    val_set = set(val_idx)
    train = [c for i, c in enumerate(clips) if i not in val_set]
    val = [clips[i] for i in val_idx]
    return train, val


def grouped_folds(clips: Sequence[Clip], k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) per clip for a source-grouped k-fold cross-validation: all clips of a location
    (`identifier`; the file name when absent) in one fold, each class's locations spread so its clip counts
    per fold are even. Per class (in sorted order) the locations are shuffled, then taken largest first
    (ties in shuffled order), each to the fold holding fewest clips of that class (ties: random)."""
    if k < 2:
        raise UserError(f"cross-validation needs at least 2 folds, got {k}")
    rng = np.random.default_rng(seed)
    keys = [clip.identifier or clip.filename for clip in clips]
    fold = np.zeros(len(clips), dtype=np.int64)
    for label in sorted({clip.scene_label or "" for clip in clips}):
        members = defaultdict(list)
        for i, (clip, key) in enumerate(zip(clips, keys)):
            if (clip.scene_label or "") == label:
                members[key].append(i)
        order = sorted(members)
        order = [order[i] for i in rng.permutation(len(order))]
        order.sort(key=lambda key: -len(members[key]))
        count = np.zeros(k)
        for key in order:
            target = int(np.argmin(count + rng.random(k) * 1e-3))
            fold[members[key]] = target
            count[target] += len(members[key])
    return fold
