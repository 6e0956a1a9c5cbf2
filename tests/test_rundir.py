"""The run folder module: one label rule, one JSON reader, strict config, stamps, what writers leave, the lock."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from dcase_effdl.config import FeatureConfig, Recipe, from_dict
from dcase_effdl.errors import UserError
from dcase_effdl.metrics import compute_metrics
from dcase_effdl.rundir import RunDir, VariantDir, config_hash, read_json
from fake_run import CLASSES, make_dataset, make_run, size_report


@pytest.fixture
def run(tmp_path):
    ds = tmp_path / "data"
    make_dataset(ds)
    return RunDir(make_run(tmp_path / "runs" / "r", ds)), ds


def test_readers_return_what_the_writers_wrote(run):
    run, ds = run
    recipe = run.recipe()
    assert recipe.name == "r" and [v.name for v in recipe.variants] == ["float32", "float16"]
    assert run.features().sample_rate == 48000 and run.features().n_mels == 40
    env = run.environment()
    assert env["dcase_effdl"] and env["torch"]
    # which kernels the numbers came from: floats differ in the last bits between CPUs
    assert env["torch_cpu_capability"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX", "NO AVX") and env["cpu"]
    assert env["cores"] == os.cpu_count() and isinstance(env["cpu_flags"], str)
    assert (run.path / "config_hash.txt").read_text().strip() == config_hash(recipe, run.features(), str(ds))
    # Thread and worker counts change no number: a run folder resumes with other values; the epochs do not.
    def train_hash(**changes):
        return config_hash(dataclasses.replace(recipe, train=dataclasses.replace(recipe.train, **changes)), run.features(), str(ds))
    assert train_hash(threads=7, loader_workers=3, num_workers=2) == config_hash(recipe, run.features(), str(ds))
    assert train_hash(epochs=recipe.train.epochs + 1) != config_hash(recipe, run.features(), str(ds))
    history = run.history()
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4, 5, 6] and history["best_epoch"] == 6
    variants = run.variants()
    assert [v.name for v in variants] == ["float32", "float16"]  # the recipe's order
    assert [v.label for v in variants] == ["Lastname_INST_task1b_1", "Lastname_INST_task1b_2"]
    assert variants[1].size()["n_nonzero"] == 115_219 and variants[1].metrics()["n_clips"] == 60
    assert variants[0].output == run.path / "float32" / "Lastname_INST_task1b_1.output.csv"
    assert variants[0].run.path == run.path
    assert not list(run.path.rglob("*.tmp"))  # every write went through atomic_write


def test_one_json_reader(tmp_path):
    path = tmp_path / "m.json"
    with pytest.raises(UserError, match=r"m\.json: file not found"):
        read_json(path)
    path.write_text("{broken")
    with pytest.raises(UserError, match=r"m\.json: not valid JSON"):
        read_json(path)
    path.write_text("[1]")
    with pytest.raises(UserError, match=r"m\.json: expected a JSON object"):
        read_json(path)
    path.write_text('{"a": NaN}')
    assert np.isnan(read_json(path)["a"])  # what json.dumps writes for a run without validation clips


def test_history_is_optional_only_when_asked(tmp_path):
    run = RunDir(tmp_path)
    assert run.history(optional=True) is None
    with pytest.raises(UserError, match=r"train/history\.json: file not found"):
        run.history()
    run.history_path.parent.mkdir()
    run.history_path.write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        run.history(optional=True)  # optional means absent, never damaged


def test_config_is_read_strictly(run):
    run, _ = run
    run.config_path.write_text(run.config_path.read_text() + "colour: red\n")
    with pytest.raises(UserError, match=r"config\.yaml: unknown key 'colour'"):
        run.recipe()
    with pytest.raises(UserError, match="unknown key 'colour'"):
        run.variants()  # a damaged config is an error, not a reason to guess the variants
    run.config_path.unlink()
    with pytest.raises(UserError, match="not a run folder"):
        run.recipe()
    assert [v.name for v in run.variants()] == ["float16", "float32"]  # no config: folders in name order


def test_label_rule(tmp_path):
    v = VariantDir(tmp_path / "v")
    v.path.mkdir()
    assert v.label is None and v.output is None and not v.finished
    (v.path / "Doe_UNI_task1b_1.meta.yaml").write_text("submission: {}\n")
    assert v.label is None  # the label is the output's name; a meta file alone is no system
    (v.path / "Doe_UNI_task1b_1.output.csv").write_text("filename\tscene_label\n")
    assert v.label == "Doe_UNI_task1b_1"
    (v.path / "Doe_UNI_task1b_2.output.csv").write_text("filename\tscene_label\n")
    with pytest.raises(UserError, match=r"several outputs \(Doe_UNI_task1b_1\.output\.csv, Doe_UNI_task1b_2\.output\.csv\)"):
        v.label


def test_write_results_replaces_an_older_label(run):
    run, _ = run
    v = run.variant("float16")
    names = [n for n in (run.path.parent.parent / "data" / "evaluation_setup" / "fold1_test.csv").read_text().split()[1:]]
    y = np.array([CLASSES.index(n.split("/")[1].split("-")[0]) for n in names])
    probs = np.full((len(y), 3), 0.2)
    probs[np.arange(len(y)), y] = 0.6
    metrics = compute_metrics(y, probs, CLASSES)
    v.write_results("Doe_UNI_task1b_4", metrics, size_report(1000, 16, 1.0, "float16"), names, probs, CLASSES)
    assert sorted(p.name for p in v.path.iterdir()) == [
        "Doe_UNI_task1b_4.meta.yaml", "Doe_UNI_task1b_4.output.csv", "metrics.json", "size.json"]
    assert v.label == "Doe_UNI_task1b_4" and v.metrics()["accuracy"] == 100.0 and v.size()["n_params"] == 1000


def test_prepare_refuses_other_configurations_and_foreign_folders(tmp_path):
    recipe = from_dict(Recipe, {"name": "x"}, "test")
    feat = FeatureConfig(name="f")
    run = RunDir(tmp_path / "x")
    run.prepare(recipe, feat, "abc", "data")
    run.prepare(recipe, feat, "abc", "data")  # the same configuration again: fine
    assert sorted(p.name for p in run.path.iterdir()) == ["config.yaml", "config_hash.txt", "environment.json", "features.yaml"]
    with pytest.raises(UserError, match="holds a run of a different configuration"):
        run.prepare(recipe, feat, "abd", "data")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(UserError, match="exists and is not a dcase-effdl run folder"):
        RunDir(foreign).prepare(recipe, feat, "abc", "data")
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"]


def test_variants_need_a_finished_one(tmp_path):
    with pytest.raises(UserError, match="run folder not found"):
        RunDir(tmp_path / "missing").variants()
    (tmp_path / "float32").mkdir()
    (tmp_path / "float32" / "size.json").write_text(json.dumps({"n_params": 1}))  # metrics.json comes last
    with pytest.raises(UserError, match="no finished variant"):
        RunDir(tmp_path).variants()


def test_config_records_the_dataset_used_as_an_absolute_path(tmp_path, monkeypatch):
    """`run --data DIR` (issue 11 B4): config.yaml names DIR, resolved, not the recipe's dataset.root."""
    monkeypatch.chdir(tmp_path)
    recipe = from_dict(Recipe, {"name": "x", "dataset": {"root": "data/quickstart"}}, "test")
    run = RunDir("runs/x")
    run.prepare(recipe, FeatureConfig(name="f"), "abc", "elsewhere/../copy")
    assert run.recipe().dataset.root == str(tmp_path / "copy")
    digits = from_dict(Recipe, {"name": "d", "dataset": {"kind": "digits"}}, "test")
    RunDir("runs/d").prepare(digits, FeatureConfig(name="f"), "abc", "data/quickstart")
    assert RunDir("runs/d").recipe().dataset.root == "data/quickstart"  # digits read no folder: as given


# ---------------------------------------------------------------- the lock

HOLD = """\
import sys, time
from dcase_effdl.rundir import RunDir
with RunDir(sys.argv[1]).lock():
    print("held", flush=True)
    time.sleep(120)
"""


def hold_lock(path):
    """A process that takes the lock of `path` and keeps it; returns once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_lock_refuses_a_second_holder_and_takes_over_from_a_killed_one(tmp_path):
    path = tmp_path / "run"
    holder = hold_lock(path)
    try:
        info = json.loads((path / ".lock").read_text())
        assert info["pid"] == holder.pid and info["host"] == socket.gethostname()
        with pytest.raises(UserError, match=rf"^{path}: in use by pid {holder.pid} on {socket.gethostname()} \(since "):
            with RunDir(path).lock():
                pass
        assert (path / ".lock").is_file()
    finally:
        holder.kill()  # as kill -9: the lock file stays, naming a dead pid
        holder.wait()
    assert json.loads((path / ".lock").read_text())["pid"] == holder.pid
    notes = []
    with RunDir(path).lock(log=notes.append):
        assert json.loads((path / ".lock").read_text())["pid"] == os.getpid()
        (path / "config.yaml").write_text("name: run\n")
    assert len(notes) == 1 and f"taking over the lock left by pid {holder.pid}" in notes[0]
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml"]  # released: the lock file is gone


HOLD_WITH_CHILD = """\
import os, sys, time
from dcase_effdl.rundir import RunDir
with RunDir(sys.argv[1]).lock():
    ready, started = os.pipe()
    if os.fork() == 0:  # as a DataLoader worker: forked while the lock is held, outlives its parent
        os.write(started, b"x")  # after the fork hooks ran: the parent is not killed before them
        time.sleep(60)
        os._exit(0)
    os.read(ready, 1)
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_run(tmp_path):
    # CI once failed here: a resumed run found the folder 'in use' by the run it had just killed,
    # because its loader worker (which shares the flock through its fd) was still alive.
    path = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WITH_CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    notes = []
    try:
        with RunDir(path).lock(log=notes.append):
            pass
    finally:
        subprocess.run(["pkill", "-f", "as a DataLoader worker"], check=False)
    assert len(notes) == 1 and f"taking over the lock left by pid {holder.pid}" in notes[0]


def test_lock_leaves_no_folder_when_nothing_was_written(tmp_path):
    with RunDir(tmp_path / "runs" / "q").lock():
        assert (tmp_path / "runs" / "q" / ".lock").is_file()
    assert list(tmp_path.iterdir()) == []  # a run that failed before writing leaves no stub folder
    (tmp_path / "kept").mkdir()
    with RunDir(tmp_path / "kept").lock():
        pass
    assert (tmp_path / "kept").is_dir()  # not created by the lock: not removed


def test_deploy_json_round_trip_and_checks(tmp_path):
    from dcase_effdl.errors import UserError
    from dcase_effdl.rundir import RunDir

    run = RunDir(tmp_path)
    assert run.deploy(optional=True) is None
    data = {"machine": {"cpu": "x"}, "rows": [{"variant": "int8", "runtime": "onnxruntime", "file_bytes": 1}]}
    run.write_deploy(data)
    assert run.deploy() == data
    run.write_deploy({"rows": [{"variant": "int8"}]})
    with pytest.raises(UserError, match="deploy.json: expected 'rows', a list of records with 'variant' and 'runtime'"):
        run.deploy()


def test_export_files_through_variant_dir(tmp_path):
    from dcase_effdl.errors import UserError
    from dcase_effdl.rundir import VariantDir

    vdir = VariantDir(tmp_path / "int8")
    with pytest.raises(UserError, match="not exported"):
        vdir.export_info("onnx")
    path = vdir.write_export("onnx", b"\x08\x01", {"size_bytes": 2})
    assert path == tmp_path / "int8" / "export" / "model.onnx" and path.read_bytes() == b"\x08\x01"
    assert vdir.export_info("onnx") == {"size_bytes": 2}
    path.unlink()  # a record without its file is no export
    with pytest.raises(UserError, match="no onnx export"):
        vdir.export_info("onnx")
