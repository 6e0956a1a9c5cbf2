"""The submission flow: an evaluation-layout copy of a test fold, evaluate on it, submit its outputs, the official rules."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from dcase_effdl.cli import main
from dcase_effdl.data.dataset import load_dataset
from dcase_effdl.data.evaluation_layout import make_evaluation_layout
from dcase_effdl.errors import UserError
from dcase_effdl.rundir import VariantDir
from dcase_effdl.submission.package import build_package, load_submission_info
from dcase_effdl.submission.validate import dataset_test_files, format_report, validate_package
from fake_run import CLASSES, make_dataset, make_run
from test_official_rules import Package, official_problems

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "dcase_effdl" / "submission" / "submission_info.example.yaml"


def _labelled(root: Path, n: int = 9) -> list[str]:
    """A labelled TAU-layout set whose test fold holds `n` short clips (each with its own content)."""
    names = [f"audio/{CLASSES[i % 3]}-city-{i}-0-a.wav" for i in range(n)]
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, np.full((480, 2), (i + 1) / 100, np.float32), 48000, subtype="PCM_24")
    (root / "meta.csv").write_text("filename\tscene_label\n" + "".join(f"{n}\t{CLASSES[i % 3]}\n" for i, n in enumerate(names)))
    (root / "evaluation_setup").mkdir()
    (root / "evaluation_setup" / "fold1_test.csv").write_text("filename\n" + "".join(f"{n}\n" for n in names))
    return names


def test_evaluation_layout_copy(tmp_path):
    names = _labelled(tmp_path / "dev")
    key = make_evaluation_layout(tmp_path / "dev", tmp_path / "eval", seed=0)
    out = tmp_path / "eval"
    assert list(key) == [f"audio/{i}.wav" for i in range(9)] and sorted(key.values()) == sorted(names)
    assert list(key.values()) != names  # shuffled: an index says nothing about the class
    for new, old in key.items():
        assert (out / new).read_bytes() == (tmp_path / "dev" / old).read_bytes()
    listing = "filename\n" + "".join(f"audio/{i}.wav\n" for i in range(9))
    assert (out / "evaluation_setup" / "fold1_test.csv").read_text() == listing == (out / "meta.csv").read_text()
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(["meta.csv", "fold1_test.csv", *(f"{i}.wav" for i in range(9))])
    ds = load_dataset(out, folds=("test",))
    assert not ds.has_labels and all(c.scene_label is None and c.city is None for c in ds.clips)
    assert dataset_test_files(out) == list(key)
    assert make_evaluation_layout(tmp_path / "dev", tmp_path / "again", seed=0) == key  # the seed fixes the order
    assert make_evaluation_layout(tmp_path / "dev", tmp_path / "other", seed=1) != key
    with pytest.raises(UserError, match="exists and is not empty"):
        make_evaluation_layout(tmp_path / "dev", out)
    with pytest.raises(UserError, match="inside the source dataset"):
        make_evaluation_layout(tmp_path / "dev", tmp_path / "dev" / "eval")
    (tmp_path / "dev" / names[4]).unlink()
    with pytest.raises(UserError, match="1 of 9 audio files missing"):
        make_evaluation_layout(tmp_path / "dev", tmp_path / "broken")
    assert not (tmp_path / "broken").exists()  # checked before anything is written


def test_cli_make_dataset_evaluation_of(tmp_path, capsys):
    _labelled(tmp_path / "dev", n=6)
    assert main(["make-dataset", str(tmp_path / "eval"), "--evaluation-of", str(tmp_path / "dev")]) == 0
    assert "evaluation-layout copy" in capsys.readouterr().out and (tmp_path / "eval" / "audio" / "5.wav").is_file()
    assert main(["make-dataset", str(tmp_path / "eval"), "--evaluation-of", str(tmp_path / "dev")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


@pytest.fixture
def evaluated(tmp_path):
    """A fake run whose two variants have outputs on a 12-clip evaluation-layout set, as `evaluate` writes them."""
    dev = tmp_path / "dev"
    make_dataset(dev)
    run = make_run(tmp_path / "runs" / "r", dev)
    names = make_dataset(tmp_path / "eval", n_clips=12, numbered=True)
    probs = np.random.default_rng(0).dirichlet(np.ones(3), size=12)
    for v in ("float32", "float16"):
        variant = VariantDir(run / v)
        variant.model_path.write_bytes(f"model of {v}".encode())  # evaluation.json pins the model file's sha256
        variant.evaluation.write(variant.label, names, probs, CLASSES, tmp_path / "eval", variant.model_path)
    return run, names


def test_evaluate_does_not_write_into_a_run_folder_in_use(evaluated, tmp_path):
    # Writing <run>/<variant>/evaluation/ takes the run folder's lock first, before any audio is read.
    from dcase_effdl.evaluation.evaluate import evaluate_run
    from dcase_effdl.rundir import RunDir

    run, _ = evaluated
    before = (run / "float32" / "evaluation" / "evaluation.json").read_bytes()
    with RunDir(run).lock():
        with pytest.raises(UserError, match=r"runs/r: in use by pid \d+ on .* \(since "):
            evaluate_run(run, tmp_path / "eval")
    assert (run / "float32" / "evaluation" / "evaluation.json").read_bytes() == before


def test_submit_packages_the_evaluation_outputs(evaluated, tmp_path):
    run, names = evaluated
    pkg = build_package([run / "float32", run / "float16"], tmp_path / "sub", info=load_submission_info(TEMPLATE))
    assert pkg.outputs == "evaluation set" and pkg.expected == f"the evaluation set {tmp_path / 'eval'}"
    label = "Lastname_INST_task1b_1"
    packaged = tmp_path / "sub" / "task1" / label / f"{label}.output.csv"
    assert packaged.read_bytes() == (run / "float32" / "evaluation" / f"{label}.output.csv").read_bytes()
    meta = yaml.safe_load((packaged.parent / f"{label}.meta.yaml").read_text())
    dev = json.loads((run / "float32" / "metrics.json").read_text())
    assert meta["results"]["development_dataset"]["overall"]["accuracy"] == round(dev["accuracy"], 2)  # development results
    report = validate_package(pkg.zip_path, names)
    assert report.ok, format_report(report)
    with zipfile.ZipFile(pkg.zip_path) as z:
        assert official_problems(Package({n: z.read(n) for n in z.namelist()}, len(names))) == []
    assert not any("development test-split" in str(w) for w in pkg.report.warnings)
    # --outputs development packages the test-split outputs instead, and says what that is.
    dev_pkg = build_package([run / "float32"], tmp_path / "dev_sub", outputs="development")
    assert dev_pkg.outputs == "development test split"
    assert any("development test-split outputs" in str(w) for w in dev_pkg.report.warnings)


def test_submit_refuses_stale_missing_and_mixed_evaluation_outputs(evaluated, tmp_path):
    run, _ = evaluated
    (run / "float16" / "model.safetensors").write_bytes(b"trained again")
    with pytest.raises(UserError, match=r"made by an older model.safetensors .*run evaluate again"):
        build_package([run / "float16"], tmp_path / "a")
    (run / "float16" / "evaluation" / "evaluation.json").unlink()
    with pytest.raises(UserError, match="some variants have evaluation-set outputs and some do not"):
        build_package([run / "float32", run / "float16"], tmp_path / "b")
    with pytest.raises(UserError, match=r"evaluation: no evaluation-set outputs \(run `dcase-effdl evaluate"):
        build_package([run / "float16"], tmp_path / "c", outputs="evaluation")
    assert not any((tmp_path / d).exists() for d in "abc")


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dcase_effdl", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_train_evaluate_submit_end_to_end(tmp_path):
    """run on a generated development set, evaluate on an evaluation-layout copy of its test fold, submit, check."""
    proc = run_cli("run", str(REPO / "recipes" / "quickstart.yaml"), "--out", "runs/q", "--set", "train.epochs=1",
                   "--set", "dataset.root=data/tiny", "--set", "dataset.synthetic.clips_per_class=6",
                   "--set", "cache_dir=cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    key = make_evaluation_layout(tmp_path / "data" / "tiny", tmp_path / "data" / "tiny-eval")
    proc = run_cli("evaluate", "runs/q", "--data", "data/tiny-eval", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{len(key)} clips, no labels: wrote runs/q/float16/evaluation/Lastname_INST_task1b_2.output.csv" in proc.stdout
    proc = run_cli("submit", "runs/q/float32", "runs/q/float16", "--info", str(TEMPLATE), "--out", "submission", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(evaluation set outputs)" in proc.stdout
    assert [x for x in proc.stdout.splitlines() if x.startswith("warning")] == [
        "warning: submission: no technical report PDF in the package (required when submitting)"]  # the example has none
    zip_path = tmp_path / "submission" / "Lastname_INST_task1b.zip"
    proc = run_cli("validate", str(zip_path), "--dataset", "data/tiny-eval", cwd=tmp_path)
    assert proc.returncode == 0 and "OK (Lastname_INST_task1b_1, Lastname_INST_task1b_2)" in proc.stdout, proc.stdout
    with zipfile.ZipFile(zip_path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    assert official_problems(Package(files, len(key))) == []  # the official 2020 rules, no crash
    # The evaluation outputs are the development outputs of the same clips under their new names.
    for label, variant in (("Lastname_INST_task1b_1", "float32"), ("Lastname_INST_task1b_2", "float16")):
        rows = list(csv.reader(files[f"Lastname_INST_task1b/task1/{label}/{label}.output.csv"].decode().splitlines(), delimiter="\t"))
        dev = {r[0]: r for r in csv.reader((tmp_path / "runs/q" / variant / f"{label}.output.csv").read_text().splitlines(), delimiter="\t")}
        assert [r[0] for r in rows[1:]] == list(key)
        for row in rows[1:]:
            original = dev[key[row[0]]]
            # Same audio, features and model; only the batches differ, which can move float32 sums in the last bits.
            assert np.allclose([float(v) for v in row[2:]], [float(v) for v in original[2:]], atol=1e-5), row[0]
        meta = yaml.safe_load(files[f"Lastname_INST_task1b/task1/{label}/{label}.meta.yaml"])
        metrics = json.loads((tmp_path / "runs/q" / variant / "metrics.json").read_text())
        assert meta["results"]["development_dataset"]["overall"]["logloss"] == round(metrics["log_loss"], 3)
