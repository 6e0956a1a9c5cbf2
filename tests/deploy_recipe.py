"""The tiny digits recipe the export tests train (shared by the ONNX and LiteRT tests)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def digits_recipe(name: str) -> dict:
    """The digits set (shipped with scikit-learn, 539 test images) trains a small CNN in about a second:
    enough test clips to measure a 99 % agreement, no audio to generate. One variant per export kind."""
    return {
        "name": name, "seed": 0, "features": str(REPO / "features" / "dcase2020_baseline.yaml"),
        "dataset": {"kind": "digits", "validation_fraction": 0.3},
        "model": {"name": "digits_cnn", "params": {"channels": [8, 16, 16], "hidden": 16}},
        "train": {"epochs": 1, "batch_size": 64, "optimizer": "adam", "lr": 0.003},
        "variants": [
            {"name": "float32", "compress": []},
            {"name": "float16", "compress": [{"method": "float16"}]},
            {"name": "int8", "compress": [{"method": "int8", "calibration_samples": 128}]},
            {"name": "binary", "compress": [{"method": "binary", "scale": "fixed", "epochs": 1}]},
        ],
        "submission": {"lastname": "Lastname", "institute": "INST"},
        "size_policy": "dcase2020",
    }
