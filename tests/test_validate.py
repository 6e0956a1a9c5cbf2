"""Validator: a good package passes; one broken package per rule is rejected with the right message and line."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from dcase_effdl.cli import main
from dcase_effdl.errors import UserError
from dcase_effdl.submission.files import write_meta_yaml, write_output_csv
from dcase_effdl.submission.validate import dataset_test_files, evaluation_set_files, format_report, validate_package

CLASSES = ["indoor", "outdoor", "transportation"]
LABEL = "Doe_UNI_task1b_1"
SHARED = Path(__file__).resolve().parents[1].parent / "shared"

METRICS = {
    "accuracy": 88.12, "log_loss": 0.41,
    "class_wise": {c: {"accuracy": 85.0 + i, "log_loss": 0.4 + i / 10, "n_clips": 10} for i, c in enumerate(CLASSES)},
}
SIZE = {"n_params": 115219, "n_nonzero": 115219, "size_kb": 450.07, "complexity_management": None}


def _probs(n: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(scale=3.0, size=(n, 3))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def make_package(root: Path, files: list[str], label: str = LABEL) -> Path:
    """task1/<label>/ with a valid output for `files` and a valid meta (two authors, one corresponding)."""
    folder = root / "task1" / label
    write_output_csv(folder / f"{label}.output.csv", files, _probs(len(files)), CLASSES)
    meta_path = write_meta_yaml(folder / f"{label}.meta.yaml", label, METRICS, SIZE, name="Baseline CNN", abbreviation="Base_1")
    meta = yaml.safe_load(meta_path.read_text())
    meta["submission"]["authors"].append(
        {"lastname": "Roe", "firstname": "Rita", "email": "rita@example.org", "affiliation": {"abbreviation": "UNI", "institute": "Uni"}}
    )
    meta_path.write_text(yaml.safe_dump(meta, sort_keys=False))
    return root


@pytest.fixture
def small(tmp_path):
    """A dataset with a 30-file test split and a valid package for it."""
    names = [f"audio/clip-{i:02d}.wav" for i in range(30)]
    ds = tmp_path / "ds"
    (ds / "evaluation_setup").mkdir(parents=True)
    (ds / "evaluation_setup" / "fold1_test.csv").write_text("filename\n" + "\n".join(names) + "\n")
    pkg = make_package(tmp_path / "pkg", names)
    return pkg, names


def _output(pkg: Path) -> Path:
    return pkg / "task1" / LABEL / f"{LABEL}.output.csv"


def _meta(pkg: Path) -> Path:
    return pkg / "task1" / LABEL / f"{LABEL}.meta.yaml"


def _edit_output(pkg: Path, line: int, new: str | None) -> None:
    """Replace (or delete, new=None) 1-based line `line` of the output file."""
    lines = _output(pkg).read_text().splitlines()
    if new is None:
        del lines[line - 1]
    else:
        lines[line - 1] = new
    _output(pkg).write_text("\n".join(lines) + "\n")


def _edit_meta(pkg: Path, edit) -> None:
    meta = yaml.safe_load(_meta(pkg).read_text())
    edit(meta)
    _meta(pkg).write_text(yaml.safe_dump(meta, sort_keys=False))


def _messages(report) -> list[str]:
    return [str(p) for p in report.problems]


def test_good_package_passes_folder_and_zip(small, tmp_path):
    pkg, names = small
    report = validate_package(pkg, names)
    assert report.ok, format_report(report)
    assert report.systems == [LABEL]
    assert any("technical report" in str(w) for w in report.warnings)
    archive = shutil.make_archive(str(tmp_path / "Doe_UNI_task1b"), "zip", pkg.parent, pkg.name)  # pkg/task1/...
    assert validate_package(archive, names).ok
    # Without the top folder (task1/<label>/... at the zip's root) the official checker crashes (main.py:161).
    bare = shutil.make_archive(str(tmp_path / "bare"), "zip", pkg)
    report = validate_package(bare, names)
    assert not report.ok and report.systems == [LABEL]
    assert sorted(p.message for p in report.problems) == [
        f"'task1/{LABEL}/{LABEL}.{kind}': a zip's files must lie under one top folder (ROOT/task1/<label>/...): the "
        "official 2020 checker reads the label from the third folder and crashes without it"
        for kind in ("meta.yaml", "output.csv")]


def test_full_evaluation_set_default(tmp_path):
    names = evaluation_set_files()
    assert len(names) == 8640 and names[0] == "audio/0.wav" and names[-1] == "audio/8639.wav"
    pkg = make_package(tmp_path, names)
    assert validate_package(pkg).ok
    _edit_output(pkg, 8641, None)  # drop the last row: audio/8639.wav
    messages = _messages(validate_package(pkg))
    assert any("1 of the 8640 expected files have no row (audio/8639.wav)" in m for m in messages)
    assert any("8639 unique files, expected exactly 8640" in m for m in messages)


OUTPUT_CASES = [
    # (description, line to edit, new text (None = delete), expected line, expected message part)
    ("wrong separator", 1, "filename,scene_label,indoor,outdoor,transportation", 1, "separated by tabs"),
    ("wrong header", 1, "filename\tscene_label\toutdoor\tindoor\ttransportation", 1, "must be exactly"),
    ("comma row", 5, "audio/clip-03.wav,indoor,0.5,0.25,0.25", 5, "expected 5 tab-separated fields, got 1 (fields must be separated by tabs)"),
    ("field count", 5, "audio/clip-03.wav\tindoor\t0.5\t0.5", 5, "expected 5 tab-separated fields, got 4"),
    ("unparsable probability", 4, "audio/clip-02.wav\tindoor\t0.5x\t0.25\t0.25", 4, "probability of indoor '0.5x' is not a number"),
    ("negative probability", 4, "audio/clip-02.wav\toutdoor\t-0.1\t0.9\t0.2", 4, "probability of indoor -0.1 is not in [0, 1]"),
    ("sum not 1", 6, "audio/clip-04.wav\tindoor\t0.6\t0.3\t0.3", 6, "probabilities sum to 1.2, not 1"),
    ("not argmax", 7, "audio/clip-05.wav\toutdoor\t0.7\t0.2\t0.1", 7, "scene_label 'outdoor' is not the most probable class ('indoor')"),
    ("unknown label", 8, "audio/clip-06.wav\tpark\t0.7\t0.2\t0.1", 8, "scene_label 'park' is not one of"),
    ("duplicate", 9, "audio/clip-00.wav\tindoor\t0.7\t0.2\t0.1", 9, "duplicate file 'audio/clip-00.wav' (first on line 2)"),
    ("extra file", 10, "audio/other.wav\tindoor\t0.7\t0.2\t0.1", 10, "file 'audio/other.wav' is not in the expected set"),
    ("not a wav", 10, "audio/clip-08.mp3\tindoor\t0.7\t0.2\t0.1", 10, "does not end in .wav"),
    ("missing row", 3, None, None, "1 of the 30 expected files have no row (audio/clip-01.wav)"),
    ("empty line", 12, "", 12, "empty line"),
]


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=[c[0] for c in OUTPUT_CASES])
def test_broken_output_is_rejected(small, case):
    pkg, names = small
    _desc, line, new, want_line, want = case
    _edit_output(pkg, line, new)
    report = validate_package(pkg, names)
    assert not report.ok
    hits = [p for p in report.problems if want in p.message]
    assert hits, format_report(report)
    assert hits[0].line == want_line
    assert hits[0].file.endswith(f"{LABEL}.output.csv")


def test_every_problem_is_reported_not_just_the_first(small):
    pkg, names = small
    _edit_output(pkg, 3, "audio/clip-01.wav\tindoor\tx\t0.25\t0.25")
    _edit_output(pkg, 20, "audio/clip-18.wav\tindoor\t0.1\t0.8\t0.1")
    _edit_meta(pkg, lambda m: m["submission"].update(abbreviation="MuchTooLongName"))
    report = validate_package(pkg, names)
    lines = {(Path(p.file).name, p.line) for p in report.problems}
    assert (f"{LABEL}.output.csv", 3) in lines and (f"{LABEL}.output.csv", 20) in lines
    assert any("abbreviation 'MuchTooLongName' is 15 characters" in m for m in _messages(report))


META_CASES = [
    ("abbreviation too long", lambda m: m["submission"].update(abbreviation="ElevenChars"), ("submission", "abbreviation"),
     "is 11 characters; at most 10 allowed"),
    ("no corresponding author", lambda m: m["submission"]["authors"][0].pop("corresponding"), ("submission", "authors"),
     "exactly one author must be marked 'corresponding: true'; none is"),
    ("two corresponding authors", lambda m: m["submission"]["authors"][1].update(corresponding=True), ("submission", "authors"),
     "exactly one author must be marked 'corresponding: true'; 2 are"),
    ("author without email", lambda m: m["submission"]["authors"][1].pop("email"), ("submission", "authors", 1),
     "submission.authors[1] lacks required field(s): email"),
    ("missing description field", lambda m: m["system"]["description"].pop("acoustic_features"), ("system", "description"),
     "'system.description' lacks required field(s): acoustic_features"),
    ("missing complexity field", lambda m: m["system"]["complexity"].pop("model_size"), ("system", "complexity"),
     "'system.complexity' lacks required field(s): model_size"),
    ("non-numeric complexity", lambda m: m["system"]["complexity"].update(total_parameters="about 100k"),
     ("system", "complexity", "total_parameters"), "system.complexity.total_parameters must be an integer, got 'about 100k'"),
    ("over the size limit", lambda m: m["system"]["complexity"].update(model_size=512.3),
     ("system", "complexity", "model_size"), "512.30 KB is over the 500 KB limit"),
    ("non-numeric result", lambda m: m["results"]["development_dataset"]["overall"].update(accuracy="high"),
     ("results", "development_dataset", "overall", "accuracy"), "overall.accuracy must be a number, got 'high'"),
    ("accuracy not a percentage", lambda m: m["results"]["development_dataset"]["class_wise"]["indoor"].update(accuracy=0.88 * 200),
     ("results", "development_dataset", "class_wise", "indoor", "accuracy"), "is not a percentage in [0, 100]"),
    ("missing class", lambda m: m["results"]["development_dataset"]["class_wise"].pop("outdoor"),
     ("results", "development_dataset", "class_wise"), "'results.development_dataset.class_wise' lacks required field(s): outdoor"),
    ("missing system block", lambda m: m.pop("system"), None, "'system' missing"),
    ("meta label differs", lambda m: m["submission"].update(label="Doe_UNI_task1b_2"), ("submission", "label"),
     "submission.label 'Doe_UNI_task1b_2' differs from the label 'Doe_UNI_task1b_1'"),
    ("meta label malformed", lambda m: m["submission"].update(label="Doe_task1b_1"), ("submission", "label"),
     "submission label 'Doe_task1b_1' is not Lastname_INST_task1b_N"),
]


def _line_of(path: Path, keys) -> int | None:
    from dcase_effdl.submission.validate import _line_index

    return _line_index(path.read_text()).get(tuple(keys)) if keys else 1


@pytest.mark.parametrize("case", META_CASES, ids=[c[0] for c in META_CASES])
def test_broken_meta_is_rejected(small, case):
    pkg, names = small
    _desc, edit, keys, want = case
    _edit_meta(pkg, edit)
    report = validate_package(pkg, names)
    hits = [p for p in report.problems if want in p.message]
    assert hits, format_report(report)
    assert Path(hits[0].file).name == f"{LABEL}.meta.yaml"
    assert hits[0].line == _line_of(_meta(pkg), keys)


def test_malformed_yaml_names_the_line(small):
    pkg, names = small
    text = _meta(pkg).read_text().splitlines()
    text.insert(6, "\tname: indented with a tab")  # YAML refuses tabs for indentation
    _meta(pkg).write_text("\n".join(text) + "\n")
    hits = [p for p in validate_package(pkg, names).problems if "malformed YAML" in p.message]
    assert hits and hits[0].line is not None and abs(hits[0].line - 7) <= 1


@pytest.mark.parametrize(
    "label, message",
    [
        ("Doe_UNI_task1a_1", "names task 'task1a', expected 'task1b'"),
        ("Doe_UNI_task1b_5", "the index must be 1..4"),
        ("Doe_UNI_task1b", "is not Lastname_INST_task1b_N"),
        ("Doe_Big_UNI_task1b_1", "is not Lastname_INST_task1b_N"),
    ],
)
def test_bad_labels_are_rejected(tmp_path, label, message):
    names = [f"audio/{i}.wav" for i in range(5)]
    folder = tmp_path / "task1" / label
    write_output_csv(folder / f"{label}.output.csv", names, _probs(5), CLASSES)
    (folder / f"{label}.meta.yaml").write_text((make_package(tmp_path / "ok", names) / "task1" / LABEL / f"{LABEL}.meta.yaml")
                                               .read_text().replace(LABEL, label))
    report = validate_package(tmp_path / "task1", names)
    assert any(message in m for m in _messages(report)), format_report(report)


def test_layout_problems(small):
    pkg, names = small
    (pkg / "task1" / LABEL / "notes.txt").write_text("hello")
    (pkg / "task1" / LABEL / f"{LABEL}.meta.yaml").rename(pkg / "task1" / LABEL / "meta.yaml")
    messages = _messages(validate_package(pkg, names))
    assert any("notes.txt: unexpected file in the package" in m for m in messages)
    assert any("meta.yaml: unexpected file" in m for m in messages)
    assert any("no .meta.yaml file next to it" in m for m in messages)


def test_wrong_folder_and_too_many_systems(tmp_path):
    names = [f"audio/{i}.wav" for i in range(5)]
    for i in range(1, 6):
        make_package(tmp_path / "pkg", names, label=f"Doe_UNI_task1b_{min(i, 4)}" if i < 5 else "Doe_UNI_task1b_4")
    shutil.move(str(tmp_path / "pkg" / "task1" / "Doe_UNI_task1b_4"), str(tmp_path / "pkg" / "task1" / "elsewhere"))
    messages = _messages(validate_package(tmp_path / "pkg", names))
    assert any("system files must be in task1/Doe_UNI_task1b_4/ (found in 'task1/elsewhere/')" in m for m in messages)
    for i in range(1, 5):
        make_package(tmp_path / "pkg2", names, label=f"Doe_UNI_task1b_{i}")
    (tmp_path / "pkg2" / "task1" / "Doe_UNI_task1b_5").mkdir()
    shutil.copytree(tmp_path / "pkg2" / "task1" / "Doe_UNI_task1b_1", tmp_path / "pkg2" / "extra" / "task1" / "Doe_UNI_task1b_1")
    messages = _messages(validate_package(tmp_path / "pkg2", names))
    assert any("5 systems; a package holds at most 4" in m for m in messages)
    assert any("label 'Doe_UNI_task1b_1' used twice" in m for m in messages)


def test_bad_zip_and_missing_inputs(tmp_path):
    bad = tmp_path / "pkg.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a zip file"):
        validate_package(bad)
    with pytest.raises(UserError, match="no such file or folder"):
        validate_package(tmp_path / "nothing")
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w"):
        pass
    assert any("no system found" in m for m in _messages(validate_package(empty)))
    with pytest.raises(UserError, match="fold1_test.csv: file not found"):
        dataset_test_files(tmp_path)


def test_real_development_test_split():
    meta = SHARED / "data" / "TAU-urban-acoustic-scenes-2020-3class-development-meta"
    if not meta.is_dir():
        pytest.skip(f"shared TAU metadata not found at {meta}")
    names = dataset_test_files(meta)
    assert len(names) == 4185 and len(set(names)) == 4185 and all(n.startswith("audio/") for n in names)


def test_cli_exit_codes(small, capsys):
    pkg, names = small
    ds = pkg.parent / "ds"
    assert main(["validate", str(pkg), "--dataset", str(ds)]) == 0
    assert "OK" in capsys.readouterr().out
    # Without --dataset the files are checked against the evaluation set: a development package says so.
    assert main(["validate", str(pkg)]) == 1
    assert "none of the 30 rows names an expected file (for a development-set package pass --dataset DIR)" in capsys.readouterr().out
    _edit_output(pkg, 4, "audio/clip-02.wav\tindoor\t0.5x\t0.25\t0.25")
    assert main(["validate", str(pkg), "--dataset", str(ds)]) == 1
    out = capsys.readouterr().out
    assert f"{LABEL}.output.csv:4: probability of indoor '0.5x' is not a number" in out
    assert "1 problem" in out
