"""DCASE 2020 Task 1 submission files: `<label>.output.csv` (per-clip probabilities) and `<label>.meta.yaml`.

Formats follow the 2020 submission validator (toni-heittola/dcase2020_task1_submission_validator):

- output: tab-separated, header `filename  scene_label  <class 1>  <class 2> ...` with the classes in
  alphabetical order, one row per clip, `scene_label` = the most probable class, probabilities that
  sum to 1. Filenames are written exactly as given (as in the fold CSV, e.g. `audio/0.wav`).
- meta: the 2020 template's `submission`, `system` (`description`, `complexity`, `external_datasets`,
  `source_code`) and `results.development_dataset` (`overall` and `class_wise` accuracy / logloss).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from dcase_effdl.errors import UserError
from dcase_effdl.files import atomic_write
from dcase_effdl.task import ABBREVIATION_MAX

OUTPUT_DIGITS = 10  # significant digits of the probabilities in output.csv

# system.description of the 2020 template, with the official baseline's values as defaults.
DESCRIPTION_DEFAULTS: dict[str, Any] = {
    "input_channels": "mono",
    "input_sampling_rate": "48kHz",
    "acoustic_features": "log-mel energies",
    "embeddings": None,
    "data_augmentation": None,
    "machine_learning_method": "CNN",
    "ensemble_method_subsystem_count": None,
    "decision_making": None,
    "external_data_usage": None,
    "complexity_management": None,
}


# ---------------------------------------------------------------- output.csv


def _format_rows(probs: np.ndarray, digits: int) -> list[list[str]]:
    """Probabilities as text with `digits` significant digits (small values keep their exponent).

    Rounding to a fixed number of decimals would print 1e-9 as 0 and inflate the log loss computed
    from the file; significant digits keep it. A row whose printed values would change the argmax
    (a near tie) or drift from a sum of 1 by more than 1e-9 is printed exactly (shortest repr).
    """
    text = [[f"{v:.{digits}g}" for v in row] for row in probs.tolist()]
    parsed = np.array([[float(v) for v in row] for row in text]).reshape(probs.shape)
    unsafe = (parsed.argmax(axis=1) != probs.argmax(axis=1)) | (np.abs(parsed.sum(axis=1) - 1) > 1e-9)
    for i in np.flatnonzero(unsafe):
        text[i] = [repr(v) for v in probs[i].tolist()]
    return text


def write_output_csv(
    path: str | Path,
    filenames: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    *,
    digits: int = OUTPUT_DIGITS,
) -> Path:
    """Write one row per clip: filename, predicted scene label, a probability per class (sum 1).

    Columns are ordered alphabetically by class name whatever the order of `classes` (the columns of
    `probs`). Rows are renormalised to sum to 1; the printed values sum to 1 within 1e-9, keep the
    argmax and keep small probabilities (`digits` significant digits, so the log loss computed from
    the file equals the one computed in memory).
    Refuses (UserError) zero rows, a length mismatch, duplicate filenames and non-probabilities.
    """
    path = Path(path)
    filenames = [str(f) for f in filenames]
    probs = np.asarray(probs, dtype=np.float64)
    classes = [str(c) for c in classes]
    if len(filenames) == 0:
        raise UserError(f"{path}: refusing to write a system output with zero rows (no test clips)")
    if probs.ndim != 2 or probs.shape != (len(filenames), len(classes)):
        raise UserError(
            f"{path}: {len(filenames)} filenames and {len(classes)} classes need probabilities of shape "
            f"({len(filenames)}, {len(classes)}), got {probs.shape}"
        )
    if len(set(classes)) != len(classes):
        raise UserError(f"{path}: duplicate class names {classes}")
    seen: set[str] = set()
    dup = next((f for f in filenames if f in seen or seen.add(f)), None)
    if dup is not None:
        raise UserError(f"{path}: duplicate filename '{dup}' (the output needs one row per clip)")
    bad = next((f for f in filenames if not f or re.search(r"[\t\r\n]", f)), None)
    if bad is not None:
        raise UserError(f"{path}: filename {bad!r} is empty or contains a tab or line break")
    sums = probs.sum(axis=1)
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or sums.min() <= 0:
        raise UserError(f"{path}: probabilities must be finite, non-negative and not all zero in a row")

    order = sorted(range(len(classes)), key=lambda k: classes[k])
    classes = [classes[k] for k in order]
    probs = probs[:, order] / sums[:, None]
    winners = probs.argmax(axis=1)
    text = _format_rows(probs, digits)

    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["filename", "scene_label", *classes])
    for name, winner, row in zip(filenames, winners, text):
        writer.writerow([name, classes[winner], *row])
    atomic_write(path, buf.getvalue())
    return path


def read_output_csv(path: str | Path) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """Read an output.csv back: (filenames, scene labels, probabilities (N, C), classes)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    if not rows or rows[0][:2] != ["filename", "scene_label"] or len(rows[0]) < 3:
        found = rows[0] if rows else "an empty file"
        raise UserError(f"{path}: header must be 'filename<TAB>scene_label<TAB><class>...', got {found}")
    classes = rows[0][2:]
    filenames, labels, probs = [], [], []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise UserError(f"{path}: line {line}: expected {len(rows[0])} tab-separated fields, got {len(row)}")
        if row[1] not in classes:
            raise UserError(f"{path}: line {line}: scene_label '{row[1]}' is not one of {classes}")
        try:
            probs.append([float(v) for v in row[2:]])
        except ValueError:
            raise UserError(f"{path}: line {line}: probabilities must be numbers, got {row[2:]}") from None
        filenames.append(row[0])
        labels.append(row[1])
    if not filenames:
        raise UserError(f"{path}: no rows after the header")
    return filenames, labels, np.array(probs, dtype=np.float64), classes


# ---------------------------------------------------------------- meta.yaml


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def write_meta_yaml(
    path: str | Path,
    label: str,
    metrics: dict,
    size: dict,
    system: dict | None = None,
    *,
    name: str | None = None,
    abbreviation: str | None = None,
    authors: list[dict] | None = None,
    external_datasets: list[dict] | None = None,
    source_code: str | None = None,
) -> Path:
    """Write the 2020 Task 1 meta YAML for submission `label` (`Lastname_INST_task1b_N`).

    metrics: a `compute_metrics` result (accuracy %, log_loss, class_wise).
    size: at least `n_params`, `n_nonzero`, `size_kb` (KB = 1024 B); `complexity_management` is used
        as the description's complexity_management when `system` does not set it.
    system: overrides for `system.description` fields (keys of DESCRIPTION_DEFAULTS).
    authors: the template's author records; without them the single author is a placeholder
    (corresponding) built from the label's lastname and institute, to be edited before submitting.
    external_datasets: the template's records (name, url, total_audio_length in minutes); none is
    written as [] (the official 2020 checker iterates the list and crashes on null).
    """
    path = Path(path)
    parts = label.split("_")
    if len(parts) != 4 or not all(parts):
        raise UserError(f"{path}: submission label '{label}' is not Lastname_INST_task1b_N (four parts joined by '_')")
    lastname, institute, _task, index = parts
    system = dict(system or {})
    unknown = sorted(set(system) - set(DESCRIPTION_DEFAULTS))
    if unknown:
        known = ", ".join(DESCRIPTION_DEFAULTS)
        raise UserError(f"{path}: unknown system.description field '{unknown[0]}' (known: {known})")
    for key in ("n_params", "n_nonzero", "size_kb"):
        if key not in size:
            raise ValueError(f"size report lacks '{key}' (has {sorted(size)})")
    if abbreviation is None:
        abbreviation = f"{lastname[: ABBREVIATION_MAX - len(index) - 1]}_{index}"[:ABBREVIATION_MAX]
    if len(abbreviation) > ABBREVIATION_MAX:
        raise UserError(f"{path}: abbreviation '{abbreviation}' is longer than {ABBREVIATION_MAX} characters")

    description = dict(DESCRIPTION_DEFAULTS)
    description["complexity_management"] = size.get("complexity_management") or None
    description.update(system)
    class_wise = {
        cls: {"accuracy": _round(m["accuracy"], 2), "logloss": _round(m["log_loss"], 3)}
        for cls, m in metrics["class_wise"].items()
    }
    meta = {
        "submission": {
            "label": label,
            "name": name or label,
            "abbreviation": abbreviation,
            "authors": authors or [
                {
                    "lastname": lastname,
                    "firstname": "Firstname",
                    "email": "firstname.lastname@example.org",
                    "corresponding": True,
                    "affiliation": {
                        "abbreviation": institute,
                        "institute": institute,
                        "department": None,
                        "location": None,
                    },
                }
            ],
        },
        "system": {
            "description": description,
            "complexity": {
                "total_parameters": int(size["n_params"]),
                "total_parameters_non_zero": int(size["n_nonzero"]),
                "model_size": round(float(size["size_kb"]), 2),  # KB = 1024 B
            },
            "external_datasets": list(external_datasets or []),  # [] for none: the official checker iterates it
            "source_code": source_code,
        },
        "results": {
            "development_dataset": {
                "overall": {"accuracy": _round(metrics["accuracy"], 2), "logloss": _round(metrics["log_loss"], 3)},
                "class_wise": class_wise,
            }
        },
    }
    header = (
        f"# DCASE 2020 Task 1 submission meta information for {label}, written by dcase-effdl.\n"
        "# Accuracy is the macro average of class-wise accuracies (%); model_size is in KB (1024 B).\n"
        + ("" if authors else "# The author below is a placeholder: fill in real names before submitting.\n")
    )
    atomic_write(path, header + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
    return path
