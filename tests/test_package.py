"""submit: a package from a run passes the validator (folder and zip); an invalid one is never written."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import yaml

from dcase_effdl.cli import main
from dcase_effdl.errors import UserError
from dcase_effdl.submission.package import build_package, load_submission_info
from dcase_effdl.submission.validate import dataset_test_files, format_report, validate_package
from fake_run import make_dataset, make_run

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "dcase_effdl" / "submission" / "submission_info.example.yaml"


@pytest.fixture
def run(tmp_path):
    ds = tmp_path / "data"
    make_dataset(ds)
    return make_run(tmp_path / "runs" / "quickstart", ds), ds


def test_template_loads_strictly():
    info = load_submission_info(TEMPLATE)
    assert [a.corresponding for a in info.authors] == [True, False]
    assert info.abbreviation == "LcCNN_{index}" and "float16" in info.systems


def test_package_from_run_passes_validate(run, tmp_path):
    run_dir, ds = run
    info = load_submission_info(TEMPLATE)
    out = tmp_path / "submission"
    pkg = build_package([run_dir / "float32", run_dir / "float16"], out, info=info)
    assert pkg.labels == ["Lastname_INST_task1b_1", "Lastname_INST_task1b_2"]
    assert pkg.zip_path == out / "Lastname_INST_task1b.zip"
    assert "test split" in pkg.expected  # the run's own dataset (config.yaml dataset.root)
    names = dataset_test_files(ds)
    for target in (out, pkg.zip_path):
        report = validate_package(target, names)
        assert report.ok, format_report(report)
        assert report.systems == pkg.labels
    with zipfile.ZipFile(pkg.zip_path) as z:
        names = sorted(z.namelist())
        assert names == [
            "Lastname_INST_task1b/task1/Lastname_INST_task1b_1/Lastname_INST_task1b_1.meta.yaml",
            "Lastname_INST_task1b/task1/Lastname_INST_task1b_1/Lastname_INST_task1b_1.output.csv",
            "Lastname_INST_task1b/task1/Lastname_INST_task1b_2/Lastname_INST_task1b_2.meta.yaml",
            "Lastname_INST_task1b/task1/Lastname_INST_task1b_2/Lastname_INST_task1b_2.output.csv",
        ]
        # The official 2020 checker takes the label from the third path component of each member.
        assert {n.split("/")[2].split("_")[2] for n in names} == {"task1b"}
    # The output is the variant's file, byte for byte; the meta carries the info and the run's numbers.
    label = "Lastname_INST_task1b_2"
    assert (out / "task1" / label / f"{label}.output.csv").read_bytes() == (run_dir / "float16" / f"{label}.output.csv").read_bytes()
    meta = yaml.safe_load((out / "task1" / label / f"{label}.meta.yaml").read_text())
    assert meta["submission"]["name"] == "Low-complexity CNN (float16)"
    assert meta["submission"]["abbreviation"] == "LcCNN_2"
    assert [a["lastname"] for a in meta["submission"]["authors"]] == ["Lastname", "Secondauthor"]
    assert meta["system"]["description"]["complexity_management"] == "float16 weights"  # systems.float16 override
    assert meta["system"]["description"]["input_sampling_rate"] == "48kHz"  # from the run's features.yaml
    assert meta["system"]["complexity"] == {"total_parameters": 115219, "total_parameters_non_zero": 115219, "model_size": 225.04}  # 115,219 x 2 B / 1024
    metrics = yaml.safe_load((run_dir / "float16" / "metrics.json").read_text())
    assert meta["results"]["development_dataset"]["overall"]["accuracy"] == round(metrics["accuracy"], 2)


def test_labels_from_the_command_line(run, tmp_path):
    run_dir, ds = run
    pkg = build_package([run_dir / "float16"], tmp_path / "out", labels=["Doe_UNI_task1b_3"], dataset=ds)
    assert pkg.labels == ["Doe_UNI_task1b_3"] and pkg.zip_path.name == "Doe_UNI_task1b.zip"
    assert validate_package(pkg.zip_path, dataset_test_files(ds)).ok
    assert any("placeholders" in str(w) for w in pkg.report.warnings)
    assert not any(".staging" in str(w) for w in pkg.report.warnings)  # warnings name the real package


def test_invalid_package_is_never_written(run, tmp_path):
    run_dir, ds = run
    out = tmp_path / "out"
    # Checked against the 8,640-file evaluation set, a development-set output is incomplete.
    (run_dir / "config.yaml").write_text((run_dir / "config.yaml").read_text().replace(str(ds), str(tmp_path / "gone")))
    with pytest.raises(UserError, match=r"package not written.*evaluation set.*expected files have no row"):
        build_package([run_dir / "float32"], out)
    assert not out.exists()
    # A broken output file (probabilities that do not sum to 1) is refused even with the right file list.
    csv_path = next((run_dir / "float32").glob("*.output.csv"))
    lines = csv_path.read_text().splitlines()
    cells = lines[3].split("\t")
    lines[3] = "\t".join(cells[:2] + ["0.9", "0.9", "0.9"])
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"output\.csv:4: probabilities sum to 2\.7"):
        build_package([run_dir / "float32"], out, dataset=ds)
    assert not out.exists()
    assert not list(tmp_path.glob(".staging-*"))


@pytest.mark.parametrize(
    "labels, message",
    [
        (["Doe_UNI_task1b_1", "Doe_UNI_task1b_1"], "used for two systems"),
        (["Doe_UNI_task1b_1", "Roe_LAB_task1b_2"], "different teams"),
        (["Doe_UNI_task1b_9", "Doe_UNI_task1b_2"], "the index must be 1..4"),
        (["Doe_UNI_task1b_1"], "1 --label values for 2 variant folders"),
    ],
)
def test_bad_labels(run, tmp_path, labels, message):
    run_dir, ds = run
    with pytest.raises(UserError, match=message):
        build_package([run_dir / "float32", run_dir / "float16"], tmp_path / "out", labels=labels, dataset=ds)


def test_bad_info_files(tmp_path):
    good = yaml.safe_load(TEMPLATE.read_text())
    cases = [
        ({**good, "colour": "red"}, "unknown key 'colour'"),
        ({**good, "authors": [dict(good["authors"][0], corresponding=False)]}, "exactly one author needs 'corresponding: true', found 0"),
        ({**good, "description": {"cnn_depth": 3}}, "unknown field 'cnn_depth'"),
        ({**good, "technical_report": "missing.pdf"}, "technical_report: file not found"),
    ]
    for data, message in cases:
        path = tmp_path / "info.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(UserError, match=message):
            load_submission_info(path)


def test_abbreviation_too_long_is_refused(run, tmp_path):
    run_dir, ds = run
    data = yaml.safe_load(TEMPLATE.read_text())
    data["abbreviation"] = "VeryLongName_{index}"
    path = tmp_path / "info.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="abbreviation 'VeryLongName_1' .* is 14 characters"):
        build_package([run_dir / "float32"], tmp_path / "out", info=load_submission_info(path), dataset=ds)


def test_technical_report_is_packaged(run, tmp_path):
    run_dir, ds = run
    data = yaml.safe_load(TEMPLATE.read_text())
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4\n%fake\n")
    data["technical_report"] = "report.pdf"
    path = tmp_path / "info.yaml"
    path.write_text(yaml.safe_dump(data))
    pkg = build_package([run_dir / "float32"], tmp_path / "out", info=load_submission_info(path), dataset=ds)
    with zipfile.ZipFile(pkg.zip_path) as z:
        assert "Lastname_INST_task1b/task1/Lastname_INST_task1.technical_report.pdf" in z.namelist()
    # The only warning left: these are development test-split outputs, not the evaluation set's.
    assert [str(w) for w in pkg.report.warnings] == [f"{pkg.zip_path}: development test-split outputs: a DCASE "
                                                     "submission holds the outputs on the evaluation set (the official "
                                                     "checker reads only its names, audio/N.wav); run `dcase-effdl "
                                                     "evaluate RUN --data EVALSET`, then submit again"]


def test_cli_submit_then_validate(run, tmp_path, capsys):
    run_dir, ds = run
    out = tmp_path / "pkg"
    assert main(["submit", str(run_dir / "float32"), "--out", str(out), "--info", str(TEMPLATE)]) == 0
    printed = capsys.readouterr().out
    assert "Lastname_INST_task1b.zip" in printed and "Lastname_INST_task1b_1" in printed
    assert main(["validate", str(out / "Lastname_INST_task1b.zip"), "--dataset", str(ds)]) == 0
    assert main(["submit", str(run_dir / "nope"), "--out", str(out)]) == 2
    assert "variant folder not found" in capsys.readouterr().err
