"""Smoke: the quickstart recipe runs end to end on a tiny generated set and leaves its files."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dcase_effdl", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def run_tiny_quickstart(work, epochs=2, *more):
    """The quickstart recipe on 8 generated clips per class, into runs/q under `work` (`more`: further arguments)."""
    return run_cli(
        "run", str(REPO / "recipes" / "quickstart.yaml"), "--out", "runs/q",
        "--set", f"train.epochs={epochs}", "--set", "dataset.root=data/tiny",
        "--set", "dataset.synthetic.clips_per_class=8", "--set", "cache_dir=cache", *more,
        cwd=work,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("quick")
    proc = run_tiny_quickstart(work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, proc


def test_quickstart_writes_rows_and_submission(quick_run):
    work, proc = quick_run
    run_dir = work / "runs" / "q"
    assert "float32" in proc.stdout and "float16" in proc.stdout
    for name in ("config.yaml", "features.yaml", "environment.json", "normalization.json", "leaderboard.csv", "train/history.json"):
        assert (run_dir / name).is_file(), name
    test_files = (work / "data/tiny/evaluation_setup/fold1_evaluate.csv").read_text().splitlines()[1:]
    for variant, label in (("float32", "Lastname_INST_task1b_1"), ("float16", "Lastname_INST_task1b_2")):
        vdir = run_dir / variant
        metrics = json.loads((vdir / "metrics.json").read_text())
        size = json.loads((vdir / "size.json").read_text())
        assert metrics["n_clips"] == len(test_files)
        assert 0.0 <= metrics["accuracy"] <= 100.0
        assert size["n_params"] == 115219
        rows = list(csv.reader(open(vdir / f"{label}.output.csv"), delimiter="\t"))
        assert rows[0] == ["filename", "scene_label", "indoor", "outdoor", "transportation"]
        assert len(rows) - 1 == len(test_files)
        assert (vdir / f"{label}.meta.yaml").is_file()
    # dcase2020 counts non-zero values: 32 bits each for float32, 16 for float16. A trained net can
    # keep a few exact zeros (biases of dead units start at 0), so compare with n_nonzero.
    sizes = {v: json.loads((run_dir / v / "size.json").read_text()) for v in ("float32", "float16")}
    assert sizes["float32"]["size_bytes"] == sizes["float32"]["n_nonzero"] * 4
    assert sizes["float16"]["size_bytes"] == sizes["float16"]["n_nonzero"] * 2
    assert 115_000 < sizes["float32"]["n_nonzero"] <= 115_219


def test_rerun_reuses_training(quick_run):
    work, _ = quick_run
    proc = run_tiny_quickstart(work, epochs=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[train] reusing" in proc.stdout


def test_other_config_refuses_the_folder(quick_run):
    work, _ = quick_run
    proc = run_tiny_quickstart(work, epochs=3)
    assert proc.returncode == 2
    assert "holds a run of a different configuration" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "[features]" not in proc.stdout  # refused before the data work


def test_size_json_without_data():
    proc = run_cli("size", "dcase2020_baseline", "--json", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n_params"] == 115219 and out["size_kb"] == pytest.approx(450.07, abs=0.005)


def test_unknown_recipe_key_is_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\ntrian: {}\n")
    proc = run_cli("run", str(recipe), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown key 'trian'" in proc.stderr


def test_missing_data_root_is_one_line(tmp_path):
    proc = run_cli("run", str(REPO / "recipes" / "quickstart.yaml"), "--data", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert proc.returncode == 2
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_labelled_set_reproduces_run_metrics(quick_run):
    work, _ = quick_run
    proc = run_cli("evaluate", "runs/q", "--data", "data/tiny", "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert set(results) == {"float32", "float16"}
    for variant, r in results.items():
        metrics = json.loads((work / "runs/q" / variant / "metrics.json").read_text())
        # same clips, same features, same model file: the run's own numbers come back
        assert r["n_clips"] == metrics["n_clips"]
        assert r["accuracy"] == pytest.approx(metrics["accuracy"], abs=1e-9)
        assert r["log_loss"] == pytest.approx(metrics["log_loss"], rel=1e-6)


def test_evaluate_unlabeled_set_writes_submission_files(quick_run):
    import shutil

    work, _ = quick_run
    src = work / "data/tiny"
    evalset = work / "data/evalset"
    (evalset / "audio").mkdir(parents=True)
    (evalset / "evaluation_setup").mkdir()
    names = [line.split("\t")[0] for line in (src / "evaluation_setup/fold1_test.csv").read_text().splitlines()[1:4]]
    rows = ["filename"]
    for i, name in enumerate(names):  # the 2020 evaluation layout: audio/0.wav ..., no labels
        shutil.copy(src / name, evalset / "audio" / f"{i}.wav")
        rows.append(f"audio/{i}.wav")
    (evalset / "evaluation_setup/fold1_test.csv").write_text("\n".join(rows) + "\n")
    proc = run_cli("evaluate", "runs/q", "--data", "data/evalset", "--out", "eval_out", "--json", cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    out = work / "eval_out" / "float16" / "Lastname_INST_task1b_2.output.csv"
    assert results["float16"] == {"n_clips": 3, "output": str(Path("eval_out") / "float16" / out.name)}
    lines = list(csv.reader(open(out), delimiter="\t"))
    assert [r[0] for r in lines[1:]] == ["audio/0.wav", "audio/1.wav", "audio/2.wav"]
    assert all(abs(sum(float(v) for v in r[2:]) - 1) < 1e-6 for r in lines[1:])


@pytest.mark.parametrize("damage, reason", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 10), "not a readable audio file"),
    (lambda p: p.unlink(), "missing"),
])
def test_bad_audio_stops_with_one_line_naming_the_file(tmp_path, damage, reason):
    from dcase_effdl.data.synthetic import make_dataset

    root = make_dataset(tmp_path / "d", clips_per_class=6, seed=3, duration=10.0, sample_rate=16000)
    victim = sorted((root / "audio").glob("*.wav"))[0]
    damage(victim)
    proc = run_cli("run", str(REPO / "recipes" / "quickstart.yaml"), "--data", str(root), "--out", "runs/x",
                   "--set", "cache_dir=cache", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert victim.name in last and reason in last and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_seeds_give_one_run_folder_per_seed_and_the_spread(tmp_path):
    proc = run_tiny_quickstart(tmp_path, 1, "--seeds", "0", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("[data] generating") == 1  # one dataset for every seed
    runs = tmp_path / "runs"
    metrics = {}
    for seed in (0, 1):
        run_dir = runs / f"q-seed{seed}"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == seed
        assert (run_dir / "leaderboard.csv").is_file()
        metrics[seed] = {v: json.loads((run_dir / v / "metrics.json").read_text()) for v in ("float32", "float16")}
    rows = {r["Variant"]: r for r in csv.DictReader(open(runs / "q-seeds.csv"))}
    assert set(rows) == {"float32", "float16"}
    for variant, row in rows.items():
        a0, a1 = (metrics[s][variant]["accuracy"] for s in (0, 1))
        assert float(row["Accuracy mean (%)"]) == pytest.approx((a0 + a1) / 2, abs=0.005)
        assert float(row["Accuracy std (pp)"]) == pytest.approx(abs(a0 - a1) / 2**0.5, abs=0.005)  # n - 1
        assert (row["Seeds (n)"], row["Seeds"]) == ("2", "0 1")
        assert row["Accuracy per seed (%)"] == f"{a0:.2f} {a1:.2f}"
        assert f"{variant}  macro accuracy {(a0 + a1) / 2:.1f} +- " in proc.stdout
    assert "over 2 seeds (mean +- sample std):" in proc.stdout

    spread = (runs / "q-seeds.csv").read_text()
    again = run_tiny_quickstart(tmp_path, 1, "--seeds", "0", "1")  # finished seeds are reused, not retrained
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("[train] reusing") == 2
    assert (runs / "q-seeds.csv").read_text() == spread


def test_repeated_seed_is_one_line_before_any_work(tmp_path):
    proc = run_tiny_quickstart(tmp_path, 1, "--seeds", "1", "1")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --seeds: seed 1 given twice; each seed is one run"
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()
