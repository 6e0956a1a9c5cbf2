"""Check a DCASE 2020 Task 1B submission package as strictly as the official 2020 checker, and more.

    dcase-effdl validate PACKAGE [--dataset DIR]

PACKAGE is a zip file whose files lie under one top folder (`ROOT/task1/<label>/<label>.output.csv`
and `<label>.meta.yaml`, up to four systems), or a folder holding `task1/<label>/...` (optionally
under one top folder). The checks mirror toni-heittola/dcase2020_task1_submission_validator (labels,
file names, required meta fields, numeric complexity and results, output header, field count, scene
labels, parseable probabilities, unique files, file count) and refuse whatever that checker crashes
on (a zip without its top folder, `external_datasets: null`, a blank line in an output), and add what
the task rules say but that checker left out: the header's column order, probabilities in [0, 1]
that sum to 1 per row, scene_label = the most probable class, exactly the expected set of files, the
500 KB model size limit. Every problem is reported with its file and line; nothing stops at the
first one. tests/test_official_rules.py lists the official checker's rules with their lines.

Expected files: the 2020 3Class evaluation set (`audio/0.wav` ... `audio/8639.wav`) by default, or
the test split (`evaluation_setup/fold1_test.csv`) of the dataset given with `--dataset`.

A package may be hostile, so it is read within hard limits (entries, bytes per file and in all,
checked from the zip's headers and counted again while decompressing; meta.yaml through the bounded
YAML reader) and names that could point outside the package are refused: one line, before the checks.
"""

from __future__ import annotations

import csv
import math
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from dcase_effdl import safe_yaml
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


# ---------------------------------------------------------------- package limits

# A package is read within these bounds, so a hostile one (a zip bomb, a header that lies about a
# size, thousands of entries) is refused after reading at most about their sum. Each bound is what a
# valid 2020 Task 1B package holds, with headroom; sizes are uncompressed bytes.
ROW_MAX_BYTES = 256  # one output row: 60 B as `submit` writes them ("audio/8639.wav", a class, three
                     # 6-decimal probabilities), ~130 B with a 37-character development file name and
                     # 17-digit floats
META_MAX_BYTES = 64 * 1024  # <label>.meta.yaml: ~2 KB as `submit` writes it, ~5 KB for the commented template
META_MAX_VALUES = 10_000  # meta.yaml values once YAML aliases are expanded; a complete one has ~60
REPORT_MAX_BYTES = 16 * 1024 * 1024  # the technical report PDF: 5 pages; never read, only its size and CRC checked
OTHER_MAX_BYTES = 1024 * 1024  # any other file (reported as unexpected) and the .DS_Store/__MACOSX files macOS adds
MAX_ENTRIES = 64  # files and folders: 4 systems x 2 files + 1 report + 6 folders = 15, doubled by macOS's
                  # __MACOSX twins, and doubled again
CENTRAL_DIRECTORY_MAX_BYTES = MAX_ENTRIES * 1024  # a zip's table of entries: ~100 B each (name, sizes, times)
READ_CHUNK = 64 * 1024  # bytes decompressed at a time
# Compression methods a package may use. Deflate is decompressed in bounded steps; zipfile hands a
# bzip2 or LZMA chunk to a decompressor that returns all its output at once (785 B of bzip2 are 1 GB).
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}


def output_max_bytes(n_files: int) -> int:
    """The most bytes an output.csv for `n_files` expected files may have (header + rows), at least the evaluation set's."""
    return (max(n_files, EVAL_FILE_COUNT) + 1) * ROW_MAX_BYTES


def package_max_bytes(n_files: int) -> int:
    """The most uncompressed bytes a whole package may have: four full systems, a report, one stray file."""
    return MAX_SYSTEMS * (output_max_bytes(n_files) + META_MAX_BYTES) + REPORT_MAX_BYTES + OTHER_MAX_BYTES


def file_max_bytes(name: str, n_files: int) -> tuple[str, int]:
    """(the kind of file, in the plural; the most bytes it may have) for a package file named `name`."""
    if name.endswith(".output.csv"):
        return "output.csv files", output_max_bytes(n_files)
    if name.endswith(".meta.yaml"):
        return "meta.yaml files", META_MAX_BYTES
    if name.lower().endswith(".pdf"):
        return "technical reports", REPORT_MAX_BYTES
    return "other files", OTHER_MAX_BYTES


# ---------------------------------------------------------------- reading a package


def _refuse(source: str, what: str) -> UserError:
    return UserError(f"{source}: {what}; refused")


def _package_path(source: str, raw: str) -> str:
    """A member name as a normalised relative POSIX path ('.' parts and doubled slashes dropped).

    Names that could be written outside the folder a package is unpacked into, or mean different
    files on different systems, are refused: absolute paths, '..' parts, backslashes (a separator
    on Windows), control characters (they also rewrite the terminal that prints the name).
    """
    if "\\" in raw:
        why = "contains a backslash"
    elif any(ord(c) < 32 or ord(c) == 127 for c in raw):
        why = "contains a control character"
    elif raw.startswith("/") or re.match(r"[A-Za-z]:", raw):
        why = "is an absolute path"
    elif ".." in raw.split("/"):
        why = "has a '..' part"
    elif str(PurePosixPath(raw)) == ".":
        why = "is empty"
    else:
        return str(PurePosixPath(raw))
    raise _refuse(source, f"entry {raw!r} {why} (a package's files lie in task1/<label>/)")


def _is_clutter(name: str) -> bool:
    """Files tools and operating systems leave behind (.DS_Store, __MACOSX/): not part of a submission."""
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(name).parts)


def _keeps_content(name: str) -> bool:
    """The files the checks read; others are only sized (and, in a zip, their CRC checked)."""
    return name.endswith((".output.csv", ".meta.yaml")) and not _is_clutter(name)


_END = struct.Struct("<4s4H2LH")  # end of central directory: signature, disks, entries, size, offset, comment
_END64_LOCATOR = struct.Struct("<4sLQL")  # ZIP64 locator: signature, disk, offset of the ZIP64 end record
_END64 = struct.Struct("<4sQ2H2L4Q")  # ZIP64 end record: ..., entries on disk, entries, size, offset


def _central_directory_extent(fh) -> tuple[int, int] | None:
    """(entries, bytes) of a zip's table of entries, from its end record (ZIP64 included), or None.

    The record zipfile itself reads, found the way it finds it: the last end-record signature in
    the final 64 KiB + 22 bytes (a zip comment is at most 65,535 bytes). Read here because
    zipfile offers no public call that stops before building the whole table.
    """
    fh.seek(0, 2)
    file_size = fh.tell()
    fh.seek(max(0, file_size - _END.size - 0xFFFF))
    tail = fh.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < _END.size:
        return None
    _, _, _, _, entries, size, _, _ = _END.unpack_from(tail, at)
    start = file_size - len(tail) + at
    if entries != 0xFFFF and size != 0xFFFFFFFF:
        return entries, size
    if start < _END64_LOCATOR.size:
        return None
    fh.seek(start - _END64_LOCATOR.size)
    signature, _, offset, _ = _END64_LOCATOR.unpack(fh.read(_END64_LOCATOR.size))
    if signature != b"PK\x06\x07":
        return None
    fh.seek(offset)
    record = fh.read(_END64.size)
    if len(record) < _END64.size or record[:4] != b"PK\x06\x06":
        return None
    fields = _END64.unpack(record)
    return fields[7], fields[8]


def _check_entry_count(path: Path) -> None:
    """Refuse a zip whose table of entries is too long before zipfile reads all of it.

    zipfile builds one object per entry as it opens a zip: 750,000 empty entries in a 64 MB zip
    took 18 s and 430 MB before any check could run. The end record says how long the table is.
    """
    with open(path, "rb") as fh:
        end = _central_directory_extent(fh)
    if end is None:
        raise UserError(f"{path}: not a zip file (give a .zip package or a folder)")
    entries, size = end
    if entries > MAX_ENTRIES or size > CENTRAL_DIRECTORY_MAX_BYTES:
        raise _refuse(str(path), f"{entries:,} entries in {size:,} bytes, more than the {MAX_ENTRIES} a package "
                                 f"holds ({MAX_SYSTEMS} systems x 2 files, a report and their folders)")


def _read_zip(path: Path, n_files: int, report: Report) -> dict[str, bytes | None]:
    total_limit = package_max_bytes(n_files)
    # A zip is never much larger than what it holds: a bigger one has data no entry accounts for.
    if path.stat().st_size > total_limit + CENTRAL_DIRECTORY_MAX_BYTES:
        raise _refuse(str(path), f"{path.stat().st_size:,} bytes, more than a package can be "
                                 f"({total_limit + CENTRAL_DIRECTORY_MAX_BYTES:,})")
    _check_entry_count(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise UserError(f"{path}: not a zip file (give a .zip package or a folder)") from None
    files: dict[str, bytes | None] = {}
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ENTRIES:  # the end record may understate what the table holds
            raise _refuse(str(path), f"{len(infos):,} entries, more than the {MAX_ENTRIES} a package holds")
        # First everything the headers say, before a byte is decompressed.
        names, declared = [], 0
        for info in infos:
            name = _package_path(str(path), info.filename)
            if name in names:
                raise _refuse(str(path), f"entry '{name}' appears twice (unpacking tools would keep different copies)")
            names.append(name)
            if info.is_dir():
                continue
            what, limit = file_max_bytes(name, n_files)
            if info.compress_type not in METHODS:
                raise _refuse(str(path), f"'{name}' is compressed with method {info.compress_type}; a package uses "
                                         f"{' or '.join(METHODS.values())}")
            if info.flag_bits & 0x1:
                raise _refuse(str(path), f"'{name}' is encrypted")
            if info.file_size > limit:
                raise _refuse(str(path), f"'{name}' would unpack to {info.file_size:,} bytes, over the limit of "
                                         f"{limit:,} for {what} (a zip bomb?)")
            declared += info.file_size
        if declared > total_limit:
            raise _refuse(str(path), f"the entries would unpack to {declared:,} bytes, more than the {total_limit:,} "
                                     "a package may have")
        _check_official_paths(str(path), [n for n, info in zip(names, infos) if not info.is_dir()], report)
        # Then the bytes, counted as they come out: the limits hold even where a header lies.
        # (zipfile stops at the size the header gives and then finds the CRC wrong; the count does
        # not rely on that.)
        unpacked = 0
        for info, name in zip(infos, names):
            if info.is_dir():
                continue
            what, limit = file_max_bytes(name, n_files)
            keep = _keeps_content(name)
            chunks, size = [], 0
            try:
                with archive.open(info) as member:
                    while chunk := member.read(READ_CHUNK):
                        size += len(chunk)
                        unpacked += len(chunk)
                        if size > limit or size > info.file_size:
                            raise _refuse(str(path), f"'{name}' unpacks to more than the {info.file_size:,} bytes "
                                                     f"its header says (the limit for {what} is {limit:,})")
                        if unpacked > total_limit:
                            raise _refuse(str(path), f"the entries unpack to more than the {total_limit:,} bytes "
                                                     "a package may have")
                        if keep:
                            chunks.append(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                report.add(str(path), None, f"damaged file in the zip: {name} ({exc})")
                continue
            if size != info.file_size:
                report.add(str(path), None, f"damaged file in the zip: {name} (unpacks to {size:,} bytes, "
                                            f"its header says {info.file_size:,})")
                continue
            files[name] = b"".join(chunks) if keep else None
    return files


def _check_official_paths(package: str, names: list[str], report: Report) -> None:
    """Zip members the official 2020 checker stops on, clutter included.

    It takes every file whose name contains 'task1' and no '.pdf' (main.py:159), reads the label from
    the third folder of its path, ROOT/task1/<label>/ (main.py:160-161), and the task from that
    label's third '_' part (main.py:161, 164-170): a member without the top folder, or under another
    one (macOS's __MACOSX/ROOT/task1/...), ends it with an IndexError or KeyError.
    """
    for name in names:
        if "task1" not in name or ".pdf" in name:
            continue
        folders = PurePosixPath(name).parent.parts
        if len(folders) < 3:
            report.add(package, None, f"'{name}': a zip's files must lie under one top folder (ROOT/task1/<label>/...): "
                                      "the official 2020 checker reads the label from the third folder and crashes without it")
        elif len(folders[2].split("_")) < 3 or folders[2].split("_")[2] not in ("task1a", "task1b"):
            report.add(package, None, f"'{name}': the official 2020 checker crashes on this file (its third folder "
                                      f"'{folders[2]}' is no task1b label); remove it from the zip")


def _read_folder(path: Path, n_files: int, report: Report) -> dict[str, bytes | None]:
    total_limit = package_max_bytes(n_files)
    entries = []
    for p in path.rglob("*"):  # counted as found: a folder of a million files is refused at the 65th
        entries.append(p)
        if len(entries) > MAX_ENTRIES:
            raise _refuse(str(path), f"more than {MAX_ENTRIES} files and folders, more than a package holds "
                                     f"({MAX_SYSTEMS} systems x 2 files, a report and their folders)")
    files: dict[str, bytes | None] = {}
    total = 0
    for p in sorted(entries):
        name = _package_path(str(path), p.relative_to(path).as_posix())
        if p.is_symlink():  # it may point anywhere, at anything; a zip of the package would not hold it
            raise _refuse(str(p), "a symbolic link (a package holds plain files: copy the file in)")
        if not p.is_file():
            continue
        if p.suffix.lower() == ".zip":
            # `submit` leaves the zip beside task1/; it is checked when given on its own.
            report.warn(str(p), None, "zip file ignored while checking the folder (validate it on its own)")
            continue
        what, limit = file_max_bytes(name, n_files)
        size = p.stat().st_size
        total += size
        if size > limit:
            raise _refuse(str(p), f"{size:,} bytes, over the limit of {limit:,} for {what}")
        if total > total_limit:
            raise _refuse(str(path), f"its files hold more than the {total_limit:,} bytes a package may have")
        data = None
        if _keeps_content(name):
            with open(p, "rb") as fh:
                data = fh.read(limit + 1)  # never more, whatever the file became since stat
            if len(data) > limit:
                raise _refuse(str(p), f"more than {limit:,} bytes, the limit for {what}")
        files[name] = data
    return files


def _read_package(path: Path, n_files: int, report: Report) -> dict[str, bytes | None]:
    """The package's files as {posix path relative to the package root: bytes of the files the checks
    read (output and meta), None for the others}; within the limits above (UserError otherwise)."""
    if path.is_file():
        files = _read_zip(path, n_files, report)
    elif path.is_dir():
        files = _read_folder(path, n_files, report)
    else:
        raise UserError(f"{path}: no such file or folder")
    return {name: data for name, data in files.items() if not _is_clutter(name)}


def _in_task1(parts: tuple[str, ...]) -> bool:
    """Under `task1/`, or under `ROOT/task1/` (a zip's one root folder, as `submit` writes it)."""
    return "task1" in parts[:2]


def _group_systems(files: dict[str, bytes | None], report: Report) -> dict[str, dict[str, str]]:
    """{folder: {'output': path, 'meta': path}} for every folder that holds system files."""
    systems: dict[str, dict[str, str]] = {}
    for name in files:
        p = PurePosixPath(name)
        if name.endswith(".output.csv"):
            kind = "output"
        elif name.endswith(".meta.yaml"):
            kind = "meta"
        elif p.suffix.lower() == ".pdf":  # technical report
            if not _in_task1(p.parent.parts):
                report.add(name, None, "the technical report belongs in task1/ (outside task1/ nothing is read)")
            continue
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
    if label is not None and (parts[-2:] != ("task1", label) or len(parts) > 3):  # [ROOT/]task1/<label>
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
        root = safe_yaml.compose(text, "meta.yaml", max_bytes=META_MAX_BYTES, max_nodes=META_MAX_VALUES)
    except safe_yaml.BadYAML:
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
    try:  # bounded: before, the checks below walked a 1 KB meta.yaml of nested aliases for 12 s and 1.1 GB
        meta = safe_yaml.loads(text, name, max_bytes=META_MAX_BYTES, max_nodes=META_MAX_VALUES)
    except safe_yaml.BadYAML as exc:
        report.add(name, exc.line, exc.message)
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
        external = system.get("external_datasets", [])
        if external is None:  # the official checker iterates it (validators.py:236) and stops on null
            report.add(name, line("system", "external_datasets"),
                       "system.external_datasets is null: write [] for none (the official 2020 checker crashes on null)")
        elif not isinstance(external, list):
            report.add(name, line("system", "external_datasets"), "system.external_datasets must be a list ([] for none)")
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
    lines = text.splitlines()  # a final newline ends the last row; a blank line after it is an empty line
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
        if not raw.strip():  # the official checker reads an empty row's filename and crashes (validators.py:74)
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
    files = _read_package(path, len(expected), report)
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
