"""The digits image bundle and the small image CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dcase_effdl.errors import UserError
from dcase_effdl.data.digits import load_digits_bundle
from dcase_effdl.models import build_model


def test_bundle_shapes_splits_and_normalisation():
    bundle = load_digits_bundle(seed=0, validation_fraction=0.3)
    assert bundle.classes == [str(c) for c in range(10)]
    assert bundle.input_shape == (1, 8, 8)
    n = len(bundle.x_train) + len(bundle.x_val) + len(bundle.x_test)
    assert n == 1797
    assert abs(len(bundle.x_test) - 0.3 * 1797) < 10
    assert bundle.x_train.dtype == torch.float32 and bundle.y_train.dtype == torch.int64
    # Normalised with training statistics: mean 0 and std 1 on the training images only.
    assert abs(float(bundle.x_train.mean())) < 1e-4
    assert abs(float(bundle.x_train.std()) - 1.0) < 1e-3
    assert set(bundle.y_val.tolist()) == set(range(10))
    assert len(bundle.test_filenames) == len(bundle.x_test) == len(set(bundle.test_filenames))


def test_test_split_fixed_validation_split_follows_seed():
    a, b = load_digits_bundle(seed=0), load_digits_bundle(seed=1)
    assert a.test_filenames == b.test_filenames
    assert not torch.equal(a.y_val, b.y_val) or not torch.equal(a.x_val, b.x_val)
    again = load_digits_bundle(seed=0)
    # The same seeded permutation of the same array: exact.
    assert torch.equal(a.x_train, again.x_train) and torch.equal(a.y_val, again.y_val)


def test_bad_validation_fraction():
    with pytest.raises(UserError, match="validation_fraction"):
        load_digits_bundle(seed=0, validation_fraction=1.5)


def test_small_cnn_parameter_count_and_bad_knob():
    model = build_model("digits_cnn", {}, n_classes=10, in_channels=1, n_mels=8, n_frames=8)
    counted = sum(p.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for p in m.parameters())
    assert counted == 40_394  # as documented in models/small_cnn.py
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    with pytest.raises(UserError, match="unknown parameter 'widht'"):
        build_model("digits_cnn", {"widht": 3}, n_classes=10, n_mels=8, n_frames=8)
    with pytest.raises(UserError, match="channels"):
        build_model("digits_cnn", {"channels": [16, 0]}, n_classes=10, n_mels=8, n_frames=8)


def test_digits_cnn_learns_above_90_percent_quickly():
    torch.manual_seed(0)
    bundle = load_digits_bundle(seed=0)
    model = build_model("digits_cnn", {}, n_classes=10, in_channels=1, n_mels=8, n_frames=8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        model.train()
        for idx in torch.randperm(len(bundle.x_train), generator=g).split(32):
            loss = F.cross_entropy(model(bundle.x_train[idx]), bundle.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(bundle.x_test).argmax(1).numpy()
    y = bundle.y_test.numpy()
    macro = np.mean([np.mean(pred[y == c] == c) for c in range(10)]) * 100
    assert macro > 90.0, macro
