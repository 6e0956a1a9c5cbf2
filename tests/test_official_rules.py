"""The official 2020 Task 1B checker's rules, each with the file and line it comes from, on packages from `submit`.

The official checker is toni-heittola/dcase2020_task1_submission_validator (main.py, validators.py,
utils.py at commit a36eb64361ff302fc1840de151efb24871172868), run as `python main.py -p PACKAGE.zip`.
It is not vendored here. Below, each of its checks on a task 1B zip is one rule: where it is, whether
breaking it is a counted error (the checker then ends "In total N errors found") or a crash (an
uncaught exception: no verdict at all), and a predicate that applies it to a package. A package the
official checker accepts is one that breaks no rule. Checks it only prints without counting
(main.py:152, 178, 231; validators.py:53, 277, 299) are no rules: packages that break them are in
STRICTER, with the other things ours refuses and the official one lets through.

The tests: a package from `submit` (shipped example info) breaks no official rule and passes ours;
for each rule a package that breaks it, which ours rejects too; for each stricter rule a package
that breaks no official rule, which ours rejects, and why ours is right to.
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from pathlib import Path

import pytest
import yaml

from dcase_effdl.submission.package import build_package, load_submission_info
from dcase_effdl.submission.validate import dataset_test_files, format_report, validate_package
from fake_run import make_dataset, make_run

TEMPLATE = Path(__file__).resolve().parents[1] / "dcase_effdl" / "submission" / "submission_info.example.yaml"
FIELDS = ["filename", "scene_label", "indoor", "outdoor", "transportation"]  # main.py:82
FLOAT_FIELDS = ["indoor", "outdoor", "transportation"]  # main.py:83
SCENE_LABELS = ["indoor", "outdoor", "transportation"]  # main.py:84
INDEX_MIN, INDEX_MAX = 0, 8639  # main.py:86-87
SUBMISSION_FIELDS = ["label", "name", "abbreviation", "authors"]  # main.py:93
AUTHOR_FIELDS = ["lastname", "firstname", "email", "affiliation"]  # main.py:95
SYSTEM_FIELDS = ["description", "complexity", "external_datasets", "source_code"]  # main.py:99
DESCRIPTION_FIELDS = ["input_sampling_rate", "acoustic_features", "embeddings", "data_augmentation",  # main.py:101-104
                      "machine_learning_method", "ensemble_method_subsystem_count", "decision_making",
                      "external_data_usage", "complexity_management"]
COMPLEXITY_FIELDS = ["total_parameters", "total_parameters_non_zero", "model_size"]  # main.py:107
EXTERNAL_FIELDS = ["name", "url", "total_audio_length"]  # main.py:110
RESULT_FIELDS = ["accuracy", "logloss"]  # main.py:118, 122


# ---------------------------------------------------------------- a package as the official checker sees it


class Package:
    """A zip's files ({name: bytes}) and how many files its outputs must cover.

    The official checker hard-codes the evaluation set's 8,640 files (main.py:89); these small packages
    are checked with their own set's count instead.
    """

    def __init__(self, files: dict[str, bytes], n_files: int):
        self.files, self.n_files = files, n_files
        self.damaged: set[str] = set()  # members whose stored bytes no longer match their CRC

    def task_files(self) -> dict[str, dict[str, str]]:
        """main.py:157-178: {label folder: {'output': name, 'meta': name}} of the files it reads."""
        out: dict[str, dict[str, str]] = {}
        for name in self.files:
            if "task1" in name and ".pdf" not in name:
                parts = os.path.split(name)[0].split("/")
                if len(parts) < 3:
                    continue  # the crash of rule main.py:161
                entry = out.setdefault(parts[2], {})
                if ".output.csv" in name:
                    entry["output"] = name
                elif ".meta.yaml" in name:
                    entry["meta"] = name
        return out

    def outputs(self) -> list[tuple[str, list[list[str]]]]:
        """(name, csv rows) of each output that decodes (main.py:200) and parses (validators.py:48-50)."""
        out = []
        for entry in self.task_files().values():
            if "output" in entry:
                try:
                    text = self.files[entry["output"]].decode("utf-8")
                except UnicodeDecodeError:
                    continue
                out.append((entry["output"], list(csv.reader(io.StringIO(text), delimiter="\t"))))
        return out

    def metas(self) -> list[tuple[dict[str, str], object]]:
        """(entry, parsed meta) of each meta that parses as the checker loads it (main.py:208)."""
        out = []
        for entry in self.task_files().values():
            if "meta" in entry:
                try:
                    out.append((entry, yaml.load(self.files[entry["meta"]], Loader=yaml.FullLoader)))
                except yaml.YAMLError:
                    continue
        return out

    def zip(self, path: Path) -> Path:
        """The files as a zip; a damaged member is stored uncompressed with one byte of it flipped."""
        with zipfile.ZipFile(path, "w") as z:
            for name, data in self.files.items():
                z.writestr(name, data, zipfile.ZIP_STORED if name in self.damaged else zipfile.ZIP_DEFLATED)
            offsets = {name: z.getinfo(name).header_offset for name in self.damaged}
        raw = bytearray(path.read_bytes())
        for at in offsets.values():  # local header: 30 bytes, then the name and extra field, then the data
            start = at + 30 + int.from_bytes(raw[at + 26:at + 28], "little") + int.from_bytes(raw[at + 28:at + 30], "little")
            raw[start] ^= 0xFF
        path.write_bytes(bytes(raw))
        return path


def _fields_missing(source, target) -> bool:
    """utils.py check_fields: True when `source` (a mapping's keys or a list) lacks one of `target`;
    None (no error) for anything else."""
    if isinstance(source, (dict, list)):
        return len(set(source) & set(target)) != len(target)
    return None


def _is_float(value) -> bool:  # utils.py is_float
    try:
        float(value)
        return value is not None
    except (TypeError, ValueError):
        return False


def _is_int(value) -> bool:  # utils.py is_int
    try:
        int(value)
        return value is not None
    except (TypeError, ValueError):
        return False


def _rows(pkg):
    """(output name, header, data rows) of outputs with a header row."""
    return [(name, rows[0], rows[1:]) for name, rows in pkg.outputs() if rows]


def _meta_dicts(pkg):
    return [(entry, meta) for entry, meta in pkg.metas() if isinstance(meta, dict)]


# ---------------------------------------------------------------- the official rules

def r_paths(pkg):
    return [n for n in pkg.files if "task1" in n and ".pdf" not in n and len(os.path.split(n)[0].split("/")) < 3]


def r_task(pkg):
    bad = []
    for label in pkg.task_files():
        parts = label.split("_")
        if len(parts) < 3 or parts[2] not in ("task1a", "task1b"):
            bad.append(label)
    return bad


def r_both_files(pkg):
    return [label for label, entry in pkg.task_files().items() if set(entry) != {"output", "meta"}]


def r_intact(pkg):  # read back in full (main.py:196-197, 207), zipfile raises on a wrong CRC
    return [n for e in pkg.task_files().values() for n in e.values() if n in pkg.damaged]


def r_utf8(pkg):
    bad = []
    for entry in pkg.task_files().values():
        try:
            pkg.files[entry["output"]].decode("utf-8") if "output" in entry else None
        except UnicodeDecodeError:
            bad.append(entry["output"])
    return bad


def r_yaml(pkg):
    n = sum("meta" in e for e in pkg.task_files().values())
    return ["meta"] * (n - len(pkg.metas()))


def r_meta_label(pkg):  # validators.py:143 needs a mapping, main.py:229 reads meta['submission']['label']
    return [e["meta"] for e, meta in pkg.metas()
            if not isinstance(meta, dict) or not isinstance(meta.get("submission"), dict) or "label" not in meta["submission"]]


def r_file_names(pkg):
    bad = []
    for entry, meta in _meta_dicts(pkg):
        label = (meta.get("submission") or {}).get("label")
        for kind in ("output", "meta"):
            if kind in entry and os.path.split(entry[kind])[-1].split(".")[0] != label:
                bad.append(entry[kind])
    return bad


def r_header_row(pkg):
    return [name for name, rows in pkg.outputs() if not rows]


def r_header_fields(pkg):
    bad = [name for name, header, _ in _rows(pkg) if _fields_missing(header, FIELDS)]
    # validators.py:119 then looks each probability column up in the header (ValueError if absent)
    return bad + [name for name, header, _ in _rows(pkg) if any(f not in header for f in FLOAT_FIELDS)]


def r_filename_column(pkg):
    bad = []
    for name, header, rows in _rows(pkg):
        i = header.index("filename") if "filename" in header else None
        if i is None and rows or any(i is not None and len(row) <= i for row in rows):
            bad.append(name)
    return bad


def _names(pkg):
    out = []
    for name, header, rows in _rows(pkg):
        if "filename" in header:
            i = header.index("filename")
            out.append((name, [os.path.split(row[i])[-1] for row in rows if len(row) > i]))
    return out


def r_duplicates(pkg):
    return [name for name, files in _names(pkg) if len(set(files)) != len(files)]


def r_wav(pkg):
    return [f for _, files in _names(pkg) for f in files if os.path.splitext(f)[-1] != ".wav"]


def r_integer_names(pkg):
    return [f for _, files in _names(pkg) for f in files if not _is_int(os.path.splitext(f)[0])]


def r_index_range(pkg):
    return [f for _, files in _names(pkg) for f in files
            if _is_int(os.path.splitext(f)[0]) and not INDEX_MIN <= int(os.path.splitext(f)[0]) <= INDEX_MAX]


def r_field_count(pkg):
    return [name for name, _, rows in _rows(pkg) if any(len(row) != len(FIELDS) for row in rows)]


def r_scene_label(pkg):
    bad = []
    for name, header, rows in _rows(pkg):
        if "scene_label" in header and header.index("scene_label"):
            i = header.index("scene_label")
            bad += [name for row in rows if len(row) <= i or row[i] not in SCENE_LABELS]
    return bad


def r_floats(pkg):
    bad = []
    for name, header, rows in _rows(pkg):
        for field in (f for f in FLOAT_FIELDS if f in header):
            i = header.index(field)
            bad += [f"{name}: {row[i]!r}" for row in rows if i < len(row) and not _is_float(row[i])]
    return bad


def r_count(pkg):
    return [name for name, files in _names(pkg) if len(set(files)) != pkg.n_files]


def r_submission(pkg):
    return [e["meta"] for e, m in _meta_dicts(pkg) if "submission" not in m or _fields_missing(m["submission"], SUBMISSION_FIELDS)]


def _submission(pkg):
    return [(e, m["submission"]) for e, m in _meta_dicts(pkg) if isinstance(m.get("submission"), dict)]


def r_authors(pkg):
    bad = []
    for e, sub in _submission(pkg):
        authors = sub.get("authors")
        if not isinstance(authors, (list, tuple)) or not all(isinstance(a, dict) for a in authors):
            bad.append(e["meta"])
    return bad


def _authors(pkg):
    return [(e, a) for e, sub in _submission(pkg) if isinstance(sub.get("authors"), list)
            for a in sub["authors"] if isinstance(a, dict)]


def r_author_fields(pkg):
    return [e["meta"] for e, a in _authors(pkg) if _fields_missing(a, AUTHOR_FIELDS)]


def r_corresponding(pkg):
    bad = []
    for e, sub in _submission(pkg):
        if isinstance(sub.get("authors"), list):
            n = sum(1 for a in sub["authors"] if isinstance(a, dict) and "corresponding" in a and a["corresponding"])
            if n != 1:
                bad.append(e["meta"])
    return bad


def r_label_form(pkg):
    bad = []
    for e, sub in _submission(pkg):
        label = sub.get("label")
        if "label" in sub and (not isinstance(label, str) or len(label.split("_")) != 4 or label.split("_")[2] != "task1b"):
            bad.append(e["meta"])
    return bad


def r_abbreviation(pkg):
    bad = []
    for e, sub in _submission(pkg):
        if "abbreviation" in sub and (not hasattr(sub["abbreviation"], "__len__") or len(sub["abbreviation"]) > 10):
            bad.append(e["meta"])
    return bad


def r_system(pkg):
    return [e["meta"] for e, m in _meta_dicts(pkg) if "system" not in m or _fields_missing(m["system"], SYSTEM_FIELDS)]


def _system(pkg):
    return [(e, m["system"]) for e, m in _meta_dicts(pkg) if isinstance(m.get("system"), dict)]


def r_description(pkg):
    return [e["meta"] for e, s in _system(pkg) if "description" in s and _fields_missing(s["description"], DESCRIPTION_FIELDS)]


def r_complexity(pkg):
    bad = []
    for e, s in _system(pkg):
        c = s.get("complexity")
        if "complexity" in s and _fields_missing(c, COMPLEXITY_FIELDS):
            bad.append(e["meta"])
        elif not isinstance(c, dict) or "total_parameters" not in c or not _is_int(c["total_parameters"]):  # :231
            bad.append(e["meta"])
    return bad


def r_external_datasets(pkg):
    bad = []
    for e, s in _system(pkg):
        if "external_datasets" in s:
            items = s["external_datasets"]
            if not isinstance(items, (list, tuple, str, dict)):  # iterated: None, a number stop it
                bad.append(e["meta"])
            elif isinstance(items, list) and any(_fields_missing(item, EXTERNAL_FIELDS) for item in items):
                bad.append(e["meta"])
    return bad


def _development(pkg):
    return [(e, m["results"]["development_dataset"]) for e, m in _meta_dicts(pkg)
            if isinstance(m.get("results"), dict) and isinstance(m["results"].get("development_dataset"), dict)]


def r_results(pkg):
    bad = [e["meta"] for e, m in _meta_dicts(pkg) if "results" not in m or _fields_missing(m["results"], ["development_dataset"])]
    return bad + [e["meta"] for e, dev in _development(pkg) if _fields_missing(dev, ["overall", "class_wise"])]


def r_overall(pkg):
    return [e["meta"] for e, dev in _development(pkg) if dev.get("overall") and _fields_missing(dev["overall"], RESULT_FIELDS)]


def r_class_wise(pkg):
    bad = []
    for e, dev in _development(pkg):
        cw = dev.get("class_wise")
        if cw:
            if _fields_missing(cw, SCENE_LABELS):
                bad.append(e["meta"])
            for value in (cw.values() if isinstance(cw, dict) else []):
                if not isinstance(value, (dict, list, str)) or _fields_missing(value, RESULT_FIELDS):
                    bad.append(e["meta"])  # validators.py:298 iterates each value (a number stops it)
    return bad


OFFICIAL = [
    # (where, error or crash, what, rule)
    ("main.py:159-161", "crash", "files named with 'task1' (no .pdf) lie in ROOT/task1/<label>/", r_paths),
    ("main.py:161, 164-170", "crash", "that folder's third '_' part is task1a or task1b", r_task),
    ("main.py:191-192", "crash", "each label folder holds an .output.csv and a .meta.yaml", r_both_files),
    ("main.py:196-197, 207", "crash", "the output and meta read back intact (CRC)", r_intact),
    ("main.py:200", "crash", "the output is UTF-8", r_utf8),
    ("main.py:208-225", "crash", "the meta parses as YAML", r_yaml),
    ("validators.py:143; main.py:229", "crash", "the meta is a mapping with submission.label", r_meta_label),
    ("validators.py:31, 36", "error", "output and meta are named <submission.label>.*", r_file_names),
    ("validators.py:50", "crash", "the output has a header row", r_header_row),
    ("validators.py:57, 119", "error", "the header holds the five fields (in any order)", r_header_fields),
    ("validators.py:74", "crash", "the header holds filename and no row is empty", r_filename_column),
    ("validators.py:76", "error", "no file twice (base names)", r_duplicates),
    ("validators.py:86", "error", "every file ends in .wav", r_wav),
    ("validators.py:93", "crash", "every file's stem is an integer (evaluation-set names)", r_integer_names),
    ("validators.py:93, 100", "error", f"file indices in {INDEX_MIN}..{INDEX_MAX}", r_index_range),
    ("validators.py:107", "error", "five fields per row", r_field_count),
    ("validators.py:111", "error", "scene_label is a class", r_scene_label),
    ("validators.py:118-122", "error", "probabilities parse as numbers", r_floats),
    ("validators.py:130", "error", "one row per expected file (unique base names)", r_count),
    ("validators.py:143, 151", "error", "submission holds label, name, abbreviation, authors", r_submission),
    ("validators.py:159, 168", "crash", "submission.authors is a list of mappings", r_authors),
    ("validators.py:160", "error", "each author has lastname, firstname, email, affiliation", r_author_fields),
    ("validators.py:171, 175", "error", "exactly one corresponding author", r_corresponding),
    ("validators.py:179-188", "error", "submission.label has four '_' parts, the third task1b", r_label_form),
    ("validators.py:194", "error", "abbreviation of at most 10 characters", r_abbreviation),
    ("validators.py:200, 208", "error", "system holds description, complexity, external_datasets, source_code", r_system),
    ("validators.py:215-216", "error", "system.description holds the nine fields", r_description),
    ("validators.py:223-231", "error", "system.complexity holds the three counts, total_parameters an integer", r_complexity),
    ("validators.py:235-237", "crash", "system.external_datasets is a list ([] for none) of complete items", r_external_datasets),
    ("validators.py:244, 252, 260", "error", "results.development_dataset holds overall and class_wise", r_results),
    ("validators.py:267-268", "error", "overall holds accuracy and logloss", r_overall),
    ("validators.py:280-298", "error", "class_wise holds the three classes, each with accuracy and logloss", r_class_wise),
]


def official_problems(pkg: Package) -> list[str]:
    return [f"{where}: {what}: {bad}" for where, _, what, rule in OFFICIAL if (bad := rule(pkg))]


# ---------------------------------------------------------------- the package from submit, and edits of it


@pytest.fixture
def package(tmp_path):
    """A package `submit` makes with the shipped example info from outputs on evaluation-style names."""
    names = make_dataset(tmp_path / "eval", n_clips=60, numbered=True)  # audio/0.wav ... audio/59.wav
    run = make_run(tmp_path / "runs" / "r", tmp_path / "eval")
    pkg = build_package([run / "float32", run / "float16"], tmp_path / "submission", info=load_submission_info(TEMPLATE))
    with zipfile.ZipFile(pkg.zip_path) as z:
        files = {n: z.read(n) for n in z.namelist() if not n.endswith("/")}
    return Package(files, len(names)), names


LABEL = "Lastname_INST_task1b_1"
ROOT = f"Lastname_INST_task1b/task1/{LABEL}"
OUTPUT, META = f"{ROOT}/{LABEL}.output.csv", f"{ROOT}/{LABEL}.meta.yaml"
PDF = "Lastname_INST_task1b/task1/Lastname_INST_task1.technical_report.pdf"


def edit_output(edit):
    def apply(pkg):
        files = pkg.files
        lines = files[OUTPUT].decode().split("\n")
        files[OUTPUT] = "\n".join(edit(lines)).encode()
    return apply


def edit_meta(edit):
    def apply(pkg):
        files = pkg.files
        meta = yaml.safe_load(files[META])
        edit(meta)
        files[META] = yaml.safe_dump(meta, sort_keys=False).encode()
    return apply


def set_line(i, text):
    return edit_output(lambda lines: lines[:i] + [text] + lines[i + 1:])


def set_field(i, j, value):
    def edit(lines):
        row = lines[i].split("\t")
        row[j] = value
        return lines[:i] + ["\t".join(row)] + lines[i + 1:]
    return edit_output(edit)


def rename(old: str, new: str):
    def apply(pkg):
        files = pkg.files
        for name in [n for n in files if old in n]:
            files[name.replace(old, new)] = files.pop(name)
    return apply


def add(name: str, data: bytes):
    def apply(pkg):
        files = pkg.files
        files[name] = data
    return apply


def put(path: tuple, value):
    def edit(meta):
        node = meta
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit_meta(edit)


DELETE = object()
S, A = ("submission",), ("submission", "authors")
C, D, R = ("system", "complexity"), ("system", "description"), ("results", "development_dataset")

BREAKS = {  # official rule (its `where`) -> an edit of the package that breaks it
    "main.py:159-161": rename("Lastname_INST_task1b/task1/", "task1/"),  # no top folder
    "main.py:161, 164-170": add(f"__MACOSX/{ROOT}/._{LABEL}.output.csv", b"\0\5\26\7"),  # zipped on macOS
    "main.py:191-192": lambda pkg: pkg.files.pop(META),
    "main.py:196-197, 207": lambda pkg: pkg.damaged.add(OUTPUT),
    "main.py:200": lambda pkg: pkg.files.__setitem__(OUTPUT, pkg.files[OUTPUT].replace(b"indoor", b"ind\xf6or", 1)),
    "main.py:208-225": add(META, b"submission: [label: x\n"),
    "validators.py:143; main.py:229": put(S + ("label",), DELETE),
    "validators.py:31, 36": put(S + ("label",), "Lastname_INST_task1b_3"),
    "validators.py:50": add(OUTPUT, b""),
    "validators.py:57, 119": set_line(0, "filename\tscene_label\tindoor\toutdoor\ttransport"),
    "validators.py:74": edit_output(lambda lines: lines + [""]),  # a blank line after the last row
    "validators.py:76": set_field(5, 0, "audio/0.wav"),
    "validators.py:86": set_field(5, 0, "audio/4.mp3"),
    "validators.py:93": set_field(5, 0, "audio/airport-lisbon-1000-40000-a.wav"),  # a development-set name
    "validators.py:93, 100": set_field(5, 0, "audio/9000.wav"),
    "validators.py:107": edit_output(lambda lines: lines[:5] + ["\t".join(lines[5].split("\t")[:4])] + lines[6:]),
    "validators.py:111": set_field(5, 1, "park"),
    "validators.py:118-122": set_field(5, 2, "0.5x"),
    "validators.py:130": edit_output(lambda lines: lines[:5] + lines[6:]),
    "validators.py:143, 151": put(S + ("name",), DELETE),
    "validators.py:159, 168": put(A, None),
    "validators.py:160": put(A + (0, "email"), DELETE),
    "validators.py:171, 175": put(A + (1, "corresponding"), True),
    "validators.py:179-188": put(S + ("label",), "Lastname_INST_task1b"),
    "validators.py:194": put(S + ("abbreviation",), "LowComplexity_1"),
    "validators.py:200, 208": put(("system", "source_code"), DELETE),
    "validators.py:215-216": put(D + ("embeddings",), DELETE),
    "validators.py:223-231": put(C + ("total_parameters",), "many"),
    "validators.py:235-237": put(("system", "external_datasets"), None),  # what the example info once gave
    "validators.py:244, 252, 260": put(R + ("class_wise",), DELETE),
    "validators.py:267-268": put(R + ("overall", "logloss"), DELETE),
    "validators.py:280-298": put(R + ("class_wise", "outdoor"), DELETE),
}


def _relabel(pkg, label):
    """Every file and folder name and the meta's label of system 1 changed to `label`, consistently."""
    rename(LABEL, label)(pkg)
    meta = META.replace(LABEL, label)
    pkg.files[meta] = pkg.files[meta].replace(LABEL.encode(), label.encode())


def _swap_indoor_outdoor(lines):
    out = []
    for line in lines:
        row = line.split("\t")
        out.append("\t".join(row[:2] + [row[3], row[2]] + row[4:]) if len(row) == 5 else line)
    return out


STRICTER = {  # what ours refuses that no official rule does: (our message, the edit, why ours is right)
    "probability columns in another order": (
        "must be exactly ['filename', 'scene_label', 'indoor', 'outdoor', 'transportation']",
        edit_output(_swap_indoor_outdoor),
        "the official checker compares the header as a set (validators.py:57) and reads values by name, but the "
        "2020 output format fixes the column order (classes alphabetical), and readers that take columns by "
        "position would score the wrong class: ours is right to refuse it"),
    "probabilities that do not sum to 1": (
        "probabilities sum to", set_field(5, 2, "0.9"), "the task asks for a probability per class"),
    "scene_label that is not the most probable class": (
        "is not the most probable class",
        edit_output(lambda lines: lines[:5] + ["\t".join([lines[5].split("\t")[0], "transportation", "0.6", "0.3", "0.1"])]
                    + lines[6:]),
        "the task's scene_label is the decision; the checker never compares it with the probabilities"),
    "a probability that is not a number in [0, 1]": (
        "probability of indoor nan is not in [0, 1]", set_field(5, 2, "nan"), "'nan' parses as a float (validators.py:122)"),
    "a file outside the expected set, the count unchanged": (
        "file 'audio/100.wav' is not in the expected set of files", set_field(5, 0, "audio/100.wav"),
        "the checker counts unique names (validators.py:130), it never compares them with the set"),
    "model_size over the 500 KB limit": (
        "over the 500 KB limit", put(C + ("model_size",), 600.0), "the task's size limit; the checker reads no size"),
    "total_parameters_non_zero that is not a number": (
        "total_parameters_non_zero must be an integer", put(C + ("total_parameters_non_zero",), "many"),
        "the checker tests only total_parameters (validators.py:231)"),
    "a development result that is not a number": (
        "overall.accuracy must be a number", put(R + ("overall", "accuracy"), "high"),
        "the checker prints it (validators.py:277) and does not count it"),
    "a label folder that differs from the file names and meta label": (
        "system files must be in task1/Lastname_INST_task1b_1/", rename(f"task1/{LABEL}/", "task1/Lastname_INST_task1b_3/"),
        "the checker prints the mismatch (main.py:231) and does not count it"),
    "label index 5": (
        "the index must be 1..4", lambda pkg: _relabel(pkg, "Lastname_INST_task1b_5"),
        "a team submits systems 1-4; the checker tests the index only in its single-file mode (-o, -m), not in a zip"),
    "an unexpected file in a label folder": (
        "unexpected file in the package", add(f"{ROOT}/notes.txt", b"hello"),
        "the checker prints it (main.py:178) and does not count it"),
    "a damaged technical report (CRC)": (
        "damaged file in the zip", lambda pkg: (add(PDF, b"%PDF-1.4\n%%EOF\n")(pkg), pkg.damaged.add(PDF)),
        "the checker prints it (main.py:150-152) and, not reading the PDF, does not count it"),
    "an author with an empty e-mail": (
        "lacks required field(s): email", put(A + (0, "email"), ""), "the checker tests that the key is there, not its value"),
    "system.description that is not a mapping": (
        "'system.description' must be a mapping", put(D, "a CNN"), "utils.py check_fields passes anything but a mapping or list"),
    "corresponding: 'yes'": (
        "exactly one author must be marked 'corresponding: true'", put(A + (0, "corresponding"), "yes"),
        "any truthy value counts there (validators.py:168); the template says true"),
    "external_datasets items that are not mappings": (
        "system.external_datasets[0] must be a mapping", put(("system", "external_datasets"), ["AudioSet"]),
        "check_fields passes a string item (validators.py:237)"),
}


def _ours(tmp_path, pkg: Package, names):
    return validate_package(pkg.zip(tmp_path / "edited.zip"), names)


def test_a_package_from_submit_breaks_no_official_rule(package, tmp_path):
    pkg, names = package
    assert sorted(pkg.task_files()) == ["Lastname_INST_task1b_1", "Lastname_INST_task1b_2"]
    assert official_problems(pkg) == []
    report = _ours(tmp_path, pkg, names)
    assert report.ok, format_report(report)
    meta = yaml.safe_load(pkg.files[META])
    assert meta["system"]["external_datasets"] == []  # null crashed the official checker (validators.py:236)
    assert dataset_test_files(tmp_path / "eval") == names


def test_every_official_rule_has_a_break():
    assert sorted(BREAKS) == sorted(where for where, *_ in OFFICIAL)
    assert all(kind in ("error", "crash") for _, kind, _, _ in OFFICIAL)


@pytest.mark.parametrize("where", [where for where, *_ in OFFICIAL])
def test_a_package_breaking_an_official_rule_is_rejected_by_ours(package, tmp_path, where):
    pkg, names = package
    BREAKS[where](pkg)
    rule = next(rule for w, _, _, rule in OFFICIAL if w == where)
    assert rule(pkg), f"the edit does not break {where}"
    report = _ours(tmp_path, pkg, names)
    assert not report.ok, f"ours accepts a package the official checker refuses ({where})"


@pytest.mark.parametrize("case", sorted(STRICTER))
def test_stricter_rules_refuse_what_the_official_checker_lets_through(package, tmp_path, case):
    """Stricter than the official checker: each of these breaks no official rule, and ours rejects it."""
    pkg, names = package
    message, edit, why = STRICTER[case]
    edit(pkg)
    assert official_problems(pkg) == [], case
    report = _ours(tmp_path, pkg, names)
    assert any(message in p.message for p in report.problems), f"{case}: {why}\n{format_report(report)}"
