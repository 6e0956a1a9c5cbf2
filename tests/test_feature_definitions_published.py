"""The Koutini, Hu and McDonnell feature definitions load strictly and give the published input shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dcase_effdl.config import load_features
from dcase_effdl.features.logmel import feature_shape, logmel

FEATURES = Path(__file__).resolve().parents[1] / "features"

# (file stem, (channels, mel bands, frames) for a 10 s clip) from the published systems' code.
PUBLISHED = [
    ("koutini_256mel_22k_stereo", (2, 256, 431)),  # eval_pretrained.ipynb: x: [1, 2, 256, 431]
    ("hu_128mel_deltas", (6, 128, 469)),  # 469 frames before the original's 8-frame delta crop (461)
    ("mcdonnell_256mel_48k_stereo", (2, 256, 469)),  # LM_train.shape (9185, 256, 469, 2)
]


@pytest.mark.parametrize("stem,shape", PUBLISHED)
def test_published_shapes(stem, shape):
    cfg = load_features(FEATURES / f"{stem}.yaml")
    assert cfg.name == stem
    assert cfg.channels == "stereo"
    assert feature_shape(cfg) == shape


def test_stereo_channels_are_kept_and_deltas_stacked():
    cfg = load_features(FEATURES / "hu_128mel_deltas.yaml", ["duration=1.0"])
    rng = np.random.default_rng(0)
    left = rng.standard_normal(48000) * 0.1
    audio = np.stack([left, 0.5 * left])  # right = left - 6 dB
    feats = logmel(audio, cfg)
    assert feats.shape == (6, 128, 47)
    # Power spectra scale by 0.25, so the natural-log statics differ by ln(0.25) (eps is negligible).
    assert np.allclose(feats[0] - feats[1], -np.log(0.25), atol=1e-3)
    # Deltas of L and R are equal (a constant offset has no slope): channels 2, 3 are the deltas.
    assert np.allclose(feats[2], feats[3], atol=1e-3)
