"""A run folder as the pipeline leaves it, written in milliseconds (for submit, plots and report tests).

Metrics come from the real `compute_metrics` on random probabilities, every file from the real
writers (`RunDir`, `VariantDir`); sizes follow the 2020 rule (non-zero values x bits / 8, KB = 1024 B).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dcase_effdl.config import FeatureConfig, Recipe, from_dict
from dcase_effdl.files import atomic_write
from dcase_effdl.metrics import compute_metrics
from dcase_effdl.rundir import RunDir, config_hash

CLASSES = ["indoor", "outdoor", "transportation"]

# (variant, bits per value, non-zero fraction, complexity management, how good the predictions are)
VARIANTS = [
    ("float32", 32, 1.0, "", 2.0),
    ("float16", 16, 1.0, "float16", 1.9),
]


def make_dataset(root: Path, n_clips: int = 60, numbered: bool = False) -> list[str]:
    """Just the test split a package is checked against: evaluation_setup/fold1_test.csv.

    `numbered`: the evaluation set's names (audio/0.wav, ...; clip i is of class i % 3), which the
    official 2020 checker needs (it reads each name's stem as an index)."""
    names = [f"audio/{i}.wav" if numbered else f"audio/{CLASSES[i % 3]}-city-{i}-0-a.wav" for i in range(n_clips)]
    (root / "evaluation_setup").mkdir(parents=True, exist_ok=True)
    (root / "evaluation_setup" / "fold1_test.csv").write_text("filename\n" + "\n".join(names) + "\n")
    return names


def size_report(n_params: int, bits: int, nonzero_fraction: float, management: str) -> dict:
    n_nonzero = int(round(n_params * nonzero_fraction))
    size_bytes = n_nonzero * bits // 8
    rows = [
        {"name": "conv1.weight", "n_params": n_params - 100, "n_nonzero": n_nonzero - 100, "bits": bits,
         "size_bytes": (n_nonzero - 100) * bits // 8, "counted": True, "reason": ""},
        {"name": "conv1.bias", "n_params": 100, "n_nonzero": 100, "bits": bits, "size_bytes": 100 * bits // 8,
         "counted": True, "reason": ""},
        {"name": "bn1.weight", "n_params": 32, "n_nonzero": 32, "bits": 32, "size_bytes": 0, "counted": False,
         "reason": "batch norm (not counted in 2020)"},
    ]
    return {
        "n_params": n_params, "n_nonzero": n_nonzero, "size_bytes": size_bytes, "size_kb": size_bytes / 1024,
        "sparsity": 1 - n_nonzero / n_params, "limit_bytes": 512_000, "policy": "dcase2020", "rows": rows,
        "not_counted": ["bn1.weight"], "complexity_management": management,
    }


def make_run(run_dir: Path, dataset: Path, *, n_params: int = 115_219, epochs: int = 6, seed: int = 0,
             variants=VARIANTS, lastname: str = "Lastname", institute: str = "INST") -> Path:
    """Write config.yaml, features.yaml, train/history.json and one folder per variant, through RunDir."""
    rng = np.random.default_rng(seed)
    names = [line for line in (dataset / "evaluation_setup" / "fold1_test.csv").read_text().splitlines()[1:] if line]
    stems = [n.split("/")[1].rsplit(".", 1)[0] for n in names]
    y = np.array([int(s) % 3 if s.isdigit() else CLASSES.index(s.split("-")[0]) for s in stems])
    recipe = from_dict(Recipe, {
        "name": run_dir.name, "seed": seed,
        "dataset": {"kind": "tau", "root": str(dataset)},
        "model": {"name": "dcase2020_baseline", "params": {}},
        "variants": [{"name": v[0], "compress": [], "label": None} for v in variants],
        "submission": {"lastname": lastname, "institute": institute, "task": "task1b"},
        "size_policy": "dcase2020",
    }, "fake_run")
    feat = FeatureConfig(name="dcase2020_baseline", sample_rate=48000, n_mels=40)
    run = RunDir(run_dir)
    run.prepare(recipe, feat, config_hash(recipe, feat, str(dataset)), dataset)
    history = []
    for e in range(1, epochs + 1):
        history.append({
            "epoch": e, "train_loss": 1.1 / e + 0.05, "val_loss": 1.0 / e ** 0.7 + 0.1,
            "val_accuracy": 100 * (0.95 - 0.6 / (e + 1)), "lr": 1e-3, "seconds": 1.5,
        })
    best = max(history, key=lambda h: h["val_accuracy"])["epoch"]
    # training.loop.History.to_json's format, written by hand: importing the loop would import torch.
    atomic_write(run.history_path, json.dumps({"best_epoch": best, "epochs": history}))
    for i, (name, bits, fraction, management, sharpness) in enumerate(variants):
        logits = rng.normal(size=(len(y), 3))
        logits[np.arange(len(y)), y] += sharpness
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        metrics = compute_metrics(y, probs, CLASSES)
        size = size_report(n_params, bits, fraction, management)
        run.variant(name).write_results(recipe.variant_label(i), metrics, size, names, probs, CLASSES)
    return run_dir
