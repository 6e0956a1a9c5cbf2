"""Submission files: output.csv round trip (sums, argmax, header, refusals) and the 2020 meta YAML."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from dcase_effdl.errors import UserError
from dcase_effdl.metrics import compute_metrics
from dcase_effdl.submission.files import read_output_csv, write_meta_yaml, write_output_csv

CLASSES = ["indoor", "outdoor", "transportation"]


def _random_probs(n, c, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=4.0, size=(n, c))
    return (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)


def test_output_round_trip(tmp_path):
    names = [f"audio/{i}.wav" for i in range(200)]
    probs = _random_probs(200, 3)
    path = write_output_csv(tmp_path / "Lastname_INST_task1b_1.output.csv", names, probs, CLASSES)
    lines = path.read_text().splitlines()
    assert lines[0] == "filename\tscene_label\tindoor\toutdoor\ttransportation"
    assert len(lines) == 201
    first = lines[1].split("\t")
    assert first[0] == "audio/0.wav"

    filenames, labels, read, classes = read_output_csv(path)
    assert filenames == names and classes == CLASSES
    assert np.abs(read.sum(axis=1) - 1).max() < 1e-9
    assert np.array_equal(read.argmax(axis=1), probs.argmax(axis=1))
    assert labels == [CLASSES[k] for k in probs.argmax(axis=1)]
    assert np.allclose(read, probs, rtol=1e-6, atol=0)  # relative: tiny probabilities survive
    assert probs.min() < 1e-6  # the case a fixed '%.6f' would print as 0
    # Metrics from the file agree with metrics from memory (random labels: many tiny true-class probs).
    y = np.random.default_rng(1).integers(0, 3, 200)
    assert compute_metrics(y, read, CLASSES)["log_loss"] == pytest.approx(compute_metrics(y, probs, CLASSES)["log_loss"], rel=1e-6)


def test_near_ties_sums_and_unnormalised_rows(tmp_path):
    probs = np.array(
        [
            [1 / 3, 1 / 3, 1 / 3],
            [0.5 - 1e-13, 0.5, 1e-13],  # winner by 1e-13: 10 digits would print a tie -> exact repr
            [0.4999996, 0.4999997, 0.0000007],
            [0.0, 0.0, 1.0],
            [2.0, 1.0, 1.0],  # not normalised: divided by its sum
        ]
    )
    names = [f"audio/{i}.wav" for i in range(len(probs))]
    path = write_output_csv(tmp_path / "x.output.csv", names, probs, CLASSES)
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    assert rows[0][1:] == ["indoor", "0.3333333333", "0.3333333333", "0.3333333333"]
    assert rows[1][2:] == [repr(0.5 - 1e-13), "0.5", "1e-13"]
    assert rows[2][2:] == ["0.4999996", "0.4999997", "7e-07"]
    assert rows[3][2:] == ["0", "0", "1"]
    assert rows[4][2:] == ["0.5", "0.25", "0.25"]
    _, labels, read, _ = read_output_csv(path)
    assert labels == ["indoor", "outdoor", "outdoor", "transportation", "indoor"]
    assert list(read.argmax(axis=1)) == [0, 1, 1, 2, 0]
    assert np.abs(read.sum(axis=1) - 1).max() < 1e-9


def test_columns_are_alphabetical(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1]])  # columns in the order transportation, indoor, outdoor
    path = write_output_csv(tmp_path / "x.output.csv", ["a.wav"], probs, ["transportation", "indoor", "outdoor"])
    header, row = path.read_text().splitlines()
    assert header.split("\t")[2:] == CLASSES
    assert row.split("\t") == ["a.wav", "transportation", "0.2", "0.1", "0.7"]


@pytest.mark.parametrize(
    "names, probs, message",
    [
        ([], np.zeros((0, 3)), "zero rows"),
        (["a.wav", "b.wav"], np.full((3, 3), 1 / 3), r"shape \(2, 3\)"),
        (["a.wav", "a.wav"], np.full((2, 3), 1 / 3), "duplicate filename 'a.wav'"),
        (["a\tb.wav"], np.full((1, 3), 1 / 3), "contains a tab"),
        (["a.wav"], np.array([[np.nan, 0.5, 0.5]]), "finite"),
        (["a.wav"], np.zeros((1, 3)), "not all zero"),
    ],
)
def test_refuses_bad_output(tmp_path, names, probs, message):
    path = tmp_path / "x.output.csv"
    with pytest.raises(UserError, match=message):
        write_output_csv(path, names, probs, CLASSES)
    assert not path.exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ("file\tscene_label\tindoor\n", "header must be"),
        ("filename\tscene_label\tindoor\toutdoor\na.wav\tindoor\t1.0\n", "expected 4 tab-separated fields, got 3"),
        ("filename\tscene_label\tindoor\toutdoor\na.wav\tzoo\t1.0\t0.0\n", "'zoo' is not one of"),
        ("filename\tscene_label\tindoor\toutdoor\na.wav\tindoor\tx\t0.0\n", "must be numbers"),
        ("filename\tscene_label\tindoor\toutdoor\n", "no rows"),
        ("", "empty file"),
    ],
)
def test_read_rejects_malformed_files(tmp_path, text, message):
    path = tmp_path / "bad.output.csv"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as info:
        read_output_csv(path)
    assert str(path) in str(info.value)


def _metrics():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7]])
    return compute_metrics(y, probs, CLASSES)


def test_meta_yaml_has_the_2020_fields(tmp_path):
    size = {"n_params": 115_219, "n_nonzero": 115_000, "size_bytes": 460_876, "size_kb": 450.074, "complexity_management": "float16"}
    metrics = _metrics()
    path = write_meta_yaml(tmp_path / "Lastname_INST_task1b_2.meta.yaml", "Lastname_INST_task1b_2", metrics, size)
    meta = yaml.safe_load(path.read_text())
    sub = meta["submission"]
    assert sub["label"] == "Lastname_INST_task1b_2"
    assert set(sub) >= {"label", "name", "abbreviation", "authors"}
    assert len(sub["abbreviation"]) <= 10 and sub["abbreviation"] == "Lastname_2"
    assert sum(bool(a.get("corresponding")) for a in sub["authors"]) == 1
    author = sub["authors"][0]
    assert set(author) >= {"lastname", "firstname", "email", "affiliation"}
    assert author["lastname"] == "Lastname" and author["affiliation"]["abbreviation"] == "INST"
    # Required by the 2020 validator for task 1B.
    assert set(meta["system"]) >= {"description", "complexity", "external_datasets", "source_code"}
    description = meta["system"]["description"]
    assert set(description) >= {
        "input_sampling_rate", "acoustic_features", "embeddings", "data_augmentation", "machine_learning_method",
        "ensemble_method_subsystem_count", "decision_making", "external_data_usage", "complexity_management",
    }
    assert description["complexity_management"] == "float16"
    assert meta["system"]["complexity"] == {"total_parameters": 115_219, "total_parameters_non_zero": 115_000, "model_size": 450.07}
    dev = meta["results"]["development_dataset"]
    assert dev["overall"]["accuracy"] == pytest.approx(round(metrics["accuracy"], 2))
    assert dev["overall"]["logloss"] == pytest.approx(round(metrics["log_loss"], 3))
    assert set(dev["class_wise"]) == set(CLASSES)
    for cls in CLASSES:
        values = dev["class_wise"][cls]
        assert set(values) == {"accuracy", "logloss"}
        assert all(isinstance(v, float) for v in values.values())
    assert dev["class_wise"]["outdoor"]["accuracy"] == 100.0
    assert dev["class_wise"]["indoor"]["accuracy"] == 50.0


def test_meta_yaml_overrides_and_refusals(tmp_path):
    size = {"n_params": 10, "n_nonzero": 5, "size_kb": 0.01}
    path = write_meta_yaml(
        tmp_path / "m.meta.yaml", "Koutini_CPJKU_task1b_2", _metrics(), size,
        system={"data_augmentation": "mixup", "complexity_management": "pruning, float16"}, abbreviation="CPJKU_2",
    )
    meta = yaml.safe_load(path.read_text())
    assert meta["system"]["description"]["data_augmentation"] == "mixup"
    assert meta["system"]["description"]["complexity_management"] == "pruning, float16"
    assert meta["submission"]["abbreviation"] == "CPJKU_2"
    with pytest.raises(UserError, match="not Lastname_INST_task1b_N"):
        write_meta_yaml(tmp_path / "m.meta.yaml", "just_a_label", _metrics(), size)
    with pytest.raises(UserError, match="longer than 10"):
        write_meta_yaml(tmp_path / "m.meta.yaml", "A_B_task1b_1", _metrics(), size, abbreviation="ElevenChars")
    with pytest.raises(UserError, match="unknown system.description field 'colour'"):
        write_meta_yaml(tmp_path / "m.meta.yaml", "A_B_task1b_1", _metrics(), size, system={"colour": "red"})
