"""Check a DCASE 2020 Task 1B submission package as strictly as the official 2020 checker, and more.

    dcase-effdl validate PACKAGE [--dataset DIR]

PACKAGE is a zip file or a folder holding `task1/<label>/<label>.output.csv` and
`<label>.meta.yaml` (up to four systems); a folder of one system works too. The checks mirror
toni-heittola/dcase2020_task1_submission_validator (labels, file names, required meta fields,
numeric complexity and results, output header, field count, scene labels, parseable probabilities,
unique files, file count) and add what the task rules say but that checker left out: probabilities in
[0, 1] that sum to 1 per row, scene_label = the most probable class, exactly the expected set of
files, the 500 KB model size limit. Every problem is reported with its file and line; nothing stops
at the first one.

Expected files: the 2020 3Class evaluation set (`audio/0.wav` ... `audio/8639.wav`) by default, or
the test split (`evaluation_setup/fold1_test.csv`) of the dataset given with `--dataset`.
"""

from __future__ import annotations

import csv
import io
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from dcase_effdl.errors import UserError
from dcase_effdl.task import ABBREVIATION_MAX, CLASSES, EVAL_FILE_COUNT, LABEL_FORMAT, LABEL_RE, MAX_SYSTEMS, SIZE_LIMIT_KB, TASK

OUTPUT_FIELDS = ["filename", "scene_label", *CLASSES]
SUM_TOLERANCE = 1e-3  # |sum of a row's probabilities - 1|; printed values with 6 decimals are far inside
MAX_LISTED = 5  # names shown in a summary line (missing files)

# Required fields of the 2020 Task 1B meta YAML (the official checker's `param['B']['meta']`).
SUBMISSION_FIELDS = ["label", "name", "abbreviation", "authors"]
AUTHOR_FIELDS = ["lastname", "firstname", "email", "affiliation"]
SYSTEM_FIELDS = ["description", "complexity", "external_datasets", "source_code"]
DESCRIPTION_FIELDS = [
    "input_sampling_rate", "acoustic_features", "embeddings", "data_augmentation",
    "machine_learning_method", "ensemble_method_subsystem_count", "decision_making",
    "external_data_usage", "complexity_management",
]
COMPLEXITY_FIELDS = ["total_parameters", "total_parameters_non_zero", "model_size"]
EXTERNAL_DATASET_FIELDS = ["name", "url", "total_audio_length"]
RESULT_FIELDS = ["accuracy", "logloss"]



@dataclass
class Problem:
    """One thing wrong with the package: where (file, 1-based line or None) and what."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.message}"


@dataclass
class Report:
    """Problems (the package is rejected if there is any) and warnings (accepted, but worth a look)."""

    package: str
    systems: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str, line: int | None, message: str) -> None:
        self.problems.append(Problem(file, line, message))

    def warn(self, file: str, line: int | None, message: str) -> None:
        self.warnings.append(Problem(file, line, message))

    def summary(self) -> str:
        n = len(self.problems)
        systems = ", ".join(self.systems) or "no systems"
        if n == 0:
            return f"{self.package}: OK ({systems})"
        return f"{self.package}: {n} problem{'s' if n != 1 else ''} ({systems})"


# ---------------------------------------------------------------- expected files


def evaluation_set_files() -> list[str]:
    """The 8,640 file names of the 2020 3Class evaluation set, as listed in its fold1_test.csv."""
    return [f"audio/{i}.wav" for i in range(EVAL_FILE_COUNT)]


def dataset_test_files(root: str | Path) -> list[str]:
    """File names of a dataset's test split: `evaluation_setup/fold1_test.csv` (first column)."""
    root = Path(root)
    path = root / "evaluation_setup" / "fold1_test.csv"
    if not path.is_file():
        raise UserError(f"{path}: file not found (the test split of the dataset given with --dataset)")
    try:
        rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines(), delimiter="\t"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if not rows or not rows[0] or rows[0][0] != "filename":
        raise UserError(f"{path}: expected a header row starting with 'filename'")
    names = [row[0] for row in rows[1:] if row and row[0]]
    if not names:
        raise UserError(f"{path}: no files listed after the header")
    return names


def _key(name: str) -> str:
    """Files are matched by base name, as the official checker does (`audio/0.wav` == `0.wav`)."""
    return PurePosixPath(name.replace("\\", "/")).name


# ---------------------------------------------------------------- reading a package


def _read_package(path: Path, report: Report) -> dict[str, bytes]:
    """All files of the package as {posix path relative to the package root: bytes}."""
    files: dict[str, bytes] = {}
    if path.is_file():
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
                if bad is not None:
                    report.add(str(path), None, f"damaged file in the zip: {bad}")
                for info in z.infolist():
                    if not info.is_dir() and info.filename != bad:
                        files[info.filename] = z.read(info)
        except zipfile.BadZipFile:
            raise UserError(f"{path}: not a zip file (give a .zip package or a folder)") from None
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file() and p.suffix.lower() == ".zip":
                # `submit` leaves the zip beside task1/; it is checked when given on its own.
                report.warn(str(p), None, "zip file ignored while checking the folder (validate it on its own)")
            elif p.is_file():
                files[p.relative_to(path).as_posix()] = p.read_bytes()
    else:
        raise UserError(f"{path}: no such file or folder")
    # Tools and operating systems leave these behind; they are not part of a submission.
    return {
        name: data for name, data in files.items()
        if not any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(name).parts)
    }


def _group_systems(files: dict[str, bytes], report: Report) -> dict[str, dict[str, str]]:
    """{folder: {'output': path, 'meta': path}} for every folder that holds system files."""
    systems: dict[str, dict[str, str]] = {}
    for name in files:
        p = PurePosixPath(name)
        if name.endswith(".output.csv"):
            kind = "output"
        elif name.endswith(".meta.yaml"):
            kind = "meta"
        elif p.suffix.lower() == ".pdf":
            continue  # technical report
        else:
            report.add(name, None, "unexpected file in the package (only <label>.output.csv, <label>.meta.yaml "
                                   "and the technical report PDF belong there)")
            continue
        folder = str(p.parent)
        entry = systems.setdefault(folder, {})
        if kind in entry:
            report.add(name, None, f"a second .{kind} file in {folder}/ (one system per folder)")
            continue
        entry[kind] = name
    return systems


# ---------------------------------------------------------------- labels and names


def check_label(label: Any, file: str, line: int | None, report: Report, what: str = "submission label") -> bool:
    if not isinstance(label, str) or not LABEL_RE.match(label):
        report.add(file, line, f"{what} {label!r} is not {LABEL_FORMAT}")
        return False
    m = LABEL_RE.match(label)
    if m["task"] != TASK:
        report.add(file, line, f"{what} {label!r} names task '{m['task']}', expected '{TASK}' ({LABEL_FORMAT})")
        return False
    if not 1 <= int(m["index"]) <= MAX_SYSTEMS:
        report.add(file, line, f"{what} {label!r}: the index must be 1..{MAX_SYSTEMS}")
        return False
    return True


def _check_layout(folder: str, entry: dict[str, str], report: Report) -> str | None:
    """File names `<label>.output.csv` / `<label>.meta.yaml` in `task1/<label>/`; returns the label."""
    label = None
    for kind, suffix in (("output", ".output.csv"), ("meta", ".meta.yaml")):
        name = entry.get(kind)
        if name is None:
            other = next(iter(entry.values()))
            report.add(other, None, f"no {suffix} file next to it (each system needs both files)")
            continue
        stem = PurePosixPath(name).name[: -len(suffix)]
        if check_label(stem, name, None, report, what="file name label"):
            label = label or stem
        if label is not None and stem != label:
            report.add(name, None, f"file name label '{stem}' differs from '{label}' in the same folder")
    parts = PurePosixPath(folder).parts
    if label is not None and (len(parts) < 2 or parts[-1] != label or parts[-2] != "task1"):
        report.add(folder + "/", None, f"system files must be in task1/{label}/ (found in '{folder}/')")
    return label


# ---------------------------------------------------------------- meta.yaml


def _line_index(text: str) -> dict[tuple, int]:
    """1-based line of every key path in a YAML document: {('system', 'complexity'): 42, ...}."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                k = key.value
                lines[path + (k,)] = key.start_mark.line + 1
                walk(value, path + (k,))
                lines[path + (k,)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _is_number(value: Any, integer: bool = False) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, str):  # the official checker accepts numeric strings, e.g. '115219'
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            return False
    if integer:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def check_meta(name: str, data: bytes, report: Report) -> dict | None:
    """Check one `<label>.meta.yaml`; returns the parsed mapping (or None when it does not parse)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        report.add(name, None, "not a UTF-8 text file")
        return None
    try:
        meta = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        report.add(name, mark.line + 1 if mark else None, f"malformed YAML: {problem}")
        return None
    if not isinstance(meta, dict):
        report.add(name, 1, f"expected a mapping with 'submission', 'system' and 'results', got {type(meta).__name__}")
        return None
    lines = _line_index(text)

    def line(*path) -> int | None:
        while path and path not in lines:
            path = path[:-1]
        return lines.get(path)

    def block(parent: dict, key: str, path: tuple) -> dict | None:
        """A required mapping; reports it missing or of the wrong type."""
        where = ".".join(map(str, path[:-1])) or "top level"
        if key not in parent:
            report.add(name, line(*path[:-1]) if path[:-1] else 1, f"'{'.'.join(map(str, path))}' missing ({where} needs it)")
            return None
        value = parent[key]
        if not isinstance(value, dict):
            report.add(name, line(*path), f"'{'.'.join(map(str, path))}' must be a mapping, got {value!r}")
            return None
        return value

    def require(mapping: dict, fields: list[str], path: tuple) -> None:
        missing = [f for f in fields if f not in mapping]
        if missing:
            report.add(name, line(*path), f"'{'.'.join(map(str, path))}' lacks required field(s): {', '.join(missing)}")

    # submission
    sub = block(meta, "submission", ("submission",))
    if sub is not None:
        require(sub, SUBMISSION_FIELDS, ("submission",))
        if "label" in sub:
            check_label(sub["label"], name, line("submission", "label"), report)
        if "name" in sub and (not isinstance(sub["name"], str) or not sub["name"].strip()):
            report.add(name, line("submission", "name"), f"submission.name must be a non-empty text, got {sub['name']!r}")
        if "abbreviation" in sub:
            abbr = sub["abbreviation"]
            if not isinstance(abbr, str) or not abbr.strip():
                report.add(name, line("submission", "abbreviation"), f"submission.abbreviation must be a non-empty text, got {abbr!r}")
            elif len(abbr) > ABBREVIATION_MAX:
                report.add(name, line("submission", "abbreviation"),
                           f"submission.abbreviation '{abbr}' is {len(abbr)} characters; at most {ABBREVIATION_MAX} allowed")
        if "authors" in sub:
            authors = sub["authors"]
            if not isinstance(authors, list) or not authors:
                report.add(name, line("submission", "authors"), "submission.authors must be a non-empty list of authors")
            else:
                corresponding = 0
                for i, author in enumerate(authors):
                    if not isinstance(author, dict):
                        report.add(name, line("submission", "authors", i), f"submission.authors[{i}] must be a mapping")
                        continue
                    missing = [f for f in AUTHOR_FIELDS if f not in author or author[f] in (None, "")]
                    if missing:
                        report.add(name, line("submission", "authors", i),
                                   f"submission.authors[{i}] lacks required field(s): {', '.join(missing)}")
                    if author.get("corresponding") is True:
                        corresponding += 1
                if corresponding != 1:
                    found = "none is" if corresponding == 0 else f"{corresponding} are"
                    report.add(name, line("submission", "authors"),
                               f"exactly one author must be marked 'corresponding: true'; {found}")

    # system
    system = block(meta, "system", ("system",))
    if system is not None:
        require(system, SYSTEM_FIELDS, ("system",))
        desc = block(system, "description", ("system", "description"))
        if desc is not None:
            require(desc, DESCRIPTION_FIELDS, ("system", "description"))
        comp = block(system, "complexity", ("system", "complexity"))
        if comp is not None:
            require(comp, COMPLEXITY_FIELDS, ("system", "complexity"))
            for key in COMPLEXITY_FIELDS:
                if key not in comp:
                    continue
                integer = key != "model_size"
                if not _is_number(comp[key], integer=integer):
                    kind = "an integer" if integer else "a number (KB)"
                    report.add(name, line("system", "complexity", key), f"system.complexity.{key} must be {kind}, got {comp[key]!r}")
            if _is_number(comp.get("model_size")) and float(comp["model_size"]) > SIZE_LIMIT_KB:
                report.add(name, line("system", "complexity", "model_size"),
                           f"system.complexity.model_size {float(comp['model_size']):.2f} KB is over the {SIZE_LIMIT_KB:.0f} KB limit of 2020 Task 1B")
            if all(_is_number(comp.get(k), integer=True) for k in COMPLEXITY_FIELDS[:2]) and \
                    int(float(comp["total_parameters_non_zero"])) > int(float(comp["total_parameters"])):
                report.add(name, line("system", "complexity", "total_parameters_non_zero"),
                           "system.complexity.total_parameters_non_zero is larger than total_parameters")
        external = system.get("external_datasets")
        if external is not None:
            if not isinstance(external, list):
                report.add(name, line("system", "external_datasets"), "system.external_datasets must be a list (or null)")
            else:
                for i, item in enumerate(external):
                    if not isinstance(item, dict):
                        report.add(name, line("system", "external_datasets", i), f"system.external_datasets[{i}] must be a mapping")
                    else:
                        require(item, EXTERNAL_DATASET_FIELDS, ("system", "external_datasets", i))

    # results
    results = block(meta, "results", ("results",))
    if results is not None:
        dev = block(results, "development_dataset", ("results", "development_dataset"))
        if dev is not None:
            overall = block(dev, "overall", ("results", "development_dataset", "overall"))
            if overall is not None:
                _check_result(overall, ("results", "development_dataset", "overall"), name, line, report)
            class_wise = block(dev, "class_wise", ("results", "development_dataset", "class_wise"))
            if class_wise is not None:
                require(class_wise, CLASSES, ("results", "development_dataset", "class_wise"))
                for cls, value in class_wise.items():
                    path = ("results", "development_dataset", "class_wise", cls)
                    if cls not in CLASSES:
                        report.add(name, line(*path), f"unknown class '{cls}' in class_wise (classes: {', '.join(CLASSES)})")
                    elif not isinstance(value, dict):
                        report.add(name, line(*path), f"'{'.'.join(path)}' must be a mapping with accuracy and logloss")
                    else:
                        _check_result(value, path, name, line, report)
    return meta


def _check_result(values: dict, path: tuple, name: str, line, report: Report) -> None:
    where = ".".join(path)
    missing = [f for f in RESULT_FIELDS if f not in values]
    if missing:
        report.add(name, line(*path), f"'{where}' lacks required field(s): {', '.join(missing)}")
    for key in RESULT_FIELDS:
        if key not in values:
            continue
        value = values[key]
        if not _is_number(value):
            report.add(name, line(*path, key), f"{where}.{key} must be a number, got {value!r}")
        elif key == "accuracy" and not 0 <= float(value) <= 100:
            report.add(name, line(*path, key), f"{where}.accuracy {value} is not a percentage in [0, 100]")
        elif key == "logloss" and float(value) < 0:
            report.add(name, line(*path, key), f"{where}.logloss {value} is negative")


# ---------------------------------------------------------------- output.csv


def check_output(name: str, data: bytes, expected: list[str], report: Report, hint_dataset: bool = False) -> int:
    """Check one `<label>.output.csv` against the expected file names; returns the number of rows."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        report.add(name, text_line(data, exc.start), "not a UTF-8 text file")
        return 0
    if text.startswith("\ufeff"):
        report.add(name, 1, "starts with a byte order mark (BOM); write plain UTF-8")
        text = text[1:]
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()  # a trailing newline (or blank lines) at the end is fine
    if not lines:
        report.add(name, None, "empty file: expected a header and one row per file")
        return 0

    header = lines[0].split("\t")
    if header != OUTPUT_FIELDS:
        if "\t" not in lines[0] and ("," in lines[0] or ";" in lines[0] or " " in lines[0].strip()):
            report.add(name, 1, f"fields must be separated by tabs, got {lines[0][:80]!r}")
        elif "filename" not in header:
            report.add(name, 1, f"no header row: expected '{chr(9).join(OUTPUT_FIELDS)}' (tab-separated)")
        else:
            report.add(name, 1, f"header {header} must be exactly {OUTPUT_FIELDS} (tab-separated, this order)")
    has_header = "filename" in header
    start = 1 if has_header else 0

    expected_keys = {_key(f): f for f in expected}
    seen: dict[str, int] = {}
    n_rows = 0
    for i in range(start, len(lines)):
        lineno = i + 1
        raw = lines[i]
        if not raw.strip():
            report.add(name, lineno, "empty line")
            continue
        n_rows += 1
        row = raw.split("\t")
        if len(row) != len(OUTPUT_FIELDS):
            hint = " (fields must be separated by tabs)" if len(row) == 1 and ("," in raw or " " in raw) else ""
            report.add(name, lineno, f"expected {len(OUTPUT_FIELDS)} tab-separated fields, got {len(row)}{hint}")
            if len(row) < 1:
                continue
        filename = row[0].strip()
        key = _key(filename)
        if not filename.lower().endswith(".wav"):
            report.add(name, lineno, f"file name '{filename}' does not end in .wav")
        if key in seen:
            report.add(name, lineno, f"duplicate file '{filename}' (first on line {seen[key]})")
        else:
            seen[key] = lineno
            if key not in expected_keys:
                report.add(name, lineno, f"file '{filename}' is not in the expected set of files")
        if len(row) != len(OUTPUT_FIELDS):
            continue
        label = row[1]
        if label not in CLASSES:
            report.add(name, lineno, f"scene_label '{label}' is not one of {', '.join(CLASSES)}")
        probs = []
        for cls, value in zip(CLASSES, row[2:]):
            try:
                p = float(value)
            except ValueError:
                report.add(name, lineno, f"probability of {cls} '{value}' is not a number")
                continue
            if not math.isfinite(p) or not 0.0 <= p <= 1.0:
                report.add(name, lineno, f"probability of {cls} {value} is not in [0, 1]")
                continue
            probs.append(p)
        if len(probs) != len(CLASSES):
            continue
        total = sum(probs)
        if abs(total - 1.0) > SUM_TOLERANCE:
            report.add(name, lineno, f"probabilities sum to {total:.6g}, not 1 (tolerance {SUM_TOLERANCE:g})")
        if label in CLASSES and probs[CLASSES.index(label)] < max(probs):
            best = CLASSES[probs.index(max(probs))]
            report.add(name, lineno, f"scene_label '{label}' is not the most probable class ('{best}')")

    if has_header and n_rows and not any(k in expected_keys for k in seen):
        report.add(name, None, f"none of the {n_rows} rows names an expected file"
                               + (" (for a development-set package pass --dataset DIR)" if hint_dataset else ""))
    missing = [f for k, f in expected_keys.items() if k not in seen]
    if missing:
        shown = ", ".join(missing[:MAX_LISTED]) + (", ..." if len(missing) > MAX_LISTED else "")
        report.add(name, None, f"{len(missing)} of the {len(expected_keys)} expected files have no row ({shown})")
    if len(seen) != len(expected_keys):
        report.add(name, None, f"{len(seen)} unique files, expected exactly {len(expected_keys)}")
    return n_rows


def text_line(data: bytes, offset: int) -> int:
    return data[:offset].count(b"\n") + 1


# ---------------------------------------------------------------- the whole package


def validate_package(path: str | Path, expected: list[str] | None = None) -> Report:
    """Check a package (zip or folder); `expected` file names default to the 2020 evaluation set."""
    path = Path(path)
    default = expected is None
    expected = evaluation_set_files() if default else list(expected)
    report = Report(str(path))
    files = _read_package(path, report)
    systems = _group_systems(files, report)
    if not systems:
        report.add(str(path), None, "no system found (expected task1/<label>/<label>.output.csv and <label>.meta.yaml)")
        return report
    if len(systems) > MAX_SYSTEMS:
        report.add(str(path), None, f"{len(systems)} systems; a package holds at most {MAX_SYSTEMS}")
    if not any(PurePosixPath(n).suffix.lower() == ".pdf" for n in files):
        report.warn(str(path), None, "no technical report PDF in the package (required when submitting)")

    labels: dict[str, str] = {}
    for folder in sorted(systems):
        entry = systems[folder]
        label = _check_layout(folder, entry, report)
        report.systems.append(label or folder)
        if label is not None:
            if label in labels:
                report.add(folder + "/", None, f"label '{label}' used twice (also in {labels[label]}/)")
            labels[label] = folder
        if "meta" in entry:
            meta = check_meta(entry["meta"], files[entry["meta"]], report)
            sub = meta.get("submission") if isinstance(meta, dict) else None
            meta_label = sub.get("label") if isinstance(sub, dict) else None
            if label is not None and meta_label is not None and meta_label != label:
                report.add(entry["meta"], _line_index(files[entry["meta"]].decode("utf-8", "replace")).get(("submission", "label")),
                           f"submission.label '{meta_label}' differs from the label '{label}' of the file and folder names")
        if "output" in entry:
            check_output(entry["output"], files[entry["output"]], expected, report, hint_dataset=default)
    institutes = {tuple(lab.split("_")[:2]) for lab in labels}
    if len(institutes) > 1:
        names = ", ".join(sorted("_".join(i) for i in institutes))
        report.warn(str(path), None, f"labels start differently ({names}); a package normally holds one team's systems")
    return report


def format_report(report: Report) -> str:
    """Every problem and warning on its own line, then the one-line summary."""
    lines = [f"error: {p}" for p in report.problems]
    lines += [f"warning: {w}" for w in report.warnings]
    lines.append(report.summary())
    return "\n".join(lines)
