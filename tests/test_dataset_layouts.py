"""Dataset layouts beyond 3Class development: evaluation sets without labels, the 2020 Mobile set, scene10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dcase_effdl.evaluation.breakdown import device_wise
from dcase_effdl.data.check_data import check_data
from dcase_effdl.data.dataset import check_layout, load_dataset
from dcase_effdl.errors import UserError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TAU_META = SHARED / "data" / "TAU-urban-acoustic-scenes-2020-3class-development-meta"

SCENE_TO_CLASS = {
    "airport": "indoor", "shopping_mall": "indoor", "metro_station": "indoor",
    "park": "outdoor", "public_square": "outdoor", "street_pedestrian": "outdoor", "street_traffic": "outdoor",
    "bus": "transportation", "metro": "transportation", "tram": "transportation",
}


def _wav(path: Path, seconds: float = 0.2, rate: int = 48000, channels: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros((int(seconds * rate), channels), np.float32), rate, subtype="PCM_24")


def _evaluation_set(root: Path, n: int, meta: str | None) -> Path:
    """Layout of the 3Class evaluation set: audio/0.wav ..., fold1_test.csv, meta.csv absent or filename-only."""
    for i in range(n):
        _wav(root / "audio" / f"{i}.wav")
    (root / "evaluation_setup").mkdir(parents=True)
    (root / "evaluation_setup" / "fold1_test.csv").write_text("filename\n" + "".join(f"audio/{i}.wav\n" for i in range(n)))
    if meta == "filename-only":
        (root / "meta.csv").write_text("filename\n" + "".join(f"audio/{i}.wav\n" for i in range(n)))
    return root


@pytest.mark.parametrize("meta", [None, "filename-only"])
def test_evaluation_set_without_labels(tmp_path, meta):
    root = _evaluation_set(tmp_path / "eval", 5, meta)
    ds = load_dataset(root, folds=("test",))
    assert not ds.has_labels
    assert ds.classes == []
    assert [c.filename for c in ds.fold("test")] == [f"audio/{i}.wav" for i in range(5)]
    assert all(c.scene_label is None and c.device is None for c in ds.clips)
    check_layout(ds, folds=("test",))
    with pytest.raises(UserError, match="clip has no scene label"):
        ds.labels(ds.fold("test"))
    report = check_data(root, progress=False)
    assert report.ok and report.n_read == 5 and report.formats == {"WAV PCM_24": 5}


def test_evaluation_set_missing_audio_is_named(tmp_path):
    root = _evaluation_set(tmp_path / "eval", 4, None)
    (root / "audio" / "2.wav").unlink()
    ds = load_dataset(root, folds=("test",))
    with pytest.raises(UserError, match=r"1 of 4 audio files missing .*audio/2.wav"):
        check_layout(ds, folds=("test",))


def test_folder_without_meta_or_folds_still_fails_clearly(tmp_path):
    (tmp_path / "x" / "audio").mkdir(parents=True)
    with pytest.raises(UserError, match=r"meta.csv: file not found"):
        load_dataset(tmp_path / "x")


def test_development_set_has_labels_and_scene10_target():
    if not TAU_META.is_dir():
        pytest.skip(f"real TAU metadata not available at {TAU_META}")
    ds = load_dataset(TAU_META)
    assert ds.has_labels and ds.classes == ["indoor", "outdoor", "transportation"]
    assert ds.scene10_classes == sorted(SCENE_TO_CLASS)
    train = ds.fold("train")
    y10 = ds.scene10_labels(train)
    y3 = ds.labels(train)
    assert y10.dtype == np.int64 and y10.shape == (9185,)
    # The auxiliary 10-scene target refines the 3-class label: every scene maps to one class.
    scenes = ds.scene10_classes
    assert {(scenes[a], ds.classes[b]) for a, b in zip(y10, y3)} == set(SCENE_TO_CLASS.items())
    assert np.bincount(y10).tolist() == [sum(c.scene10 == s for c in train) for s in scenes]


def _mobile_set(root: Path) -> Path:
    """The 2020 Mobile layout: 10 scene classes, device in the file name (a, b, c, s1-s6), 44.1 kHz."""
    scenes = sorted(SCENE_TO_CLASS)
    train_devices, eval_devices = ["a", "b", "c", "s1", "s2", "s3"], ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"]
    meta = ["filename\tscene_label\tidentifier\tsource_label"]
    train, evaluate = ["filename\tscene_label"], ["filename\tscene_label"]
    for i, scene in enumerate(scenes):
        for fold, devices, city in ((train, train_devices, "lyon"), (evaluate, eval_devices, "milan")):
            for d in devices:
                name = f"audio/{scene}-{city}-{i}-{100 + i}-{d}.wav"
                _wav(root / name, seconds=0.1, rate=44100, channels=1)
                meta.append(f"{name}\t{scene}\t{city}-{i}\t{d}")
                fold.append(f"{name}\t{scene}")
    (root / "evaluation_setup").mkdir(parents=True)
    (root / "meta.csv").write_text("\n".join(meta) + "\n")
    (root / "evaluation_setup" / "fold1_train.csv").write_text("\n".join(train) + "\n")
    (root / "evaluation_setup" / "fold1_evaluate.csv").write_text("\n".join(evaluate) + "\n")
    return root


def test_mobile_set_ten_classes_and_device_wise_results(tmp_path):
    ds = load_dataset(_mobile_set(tmp_path / "mobile"), folds=("train", "evaluate"))
    assert ds.has_labels and ds.classes == sorted(SCENE_TO_CLASS) and len(ds.classes) == 10
    evaluate = ds.fold("evaluate")
    assert sorted({c.device for c in evaluate}) == ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert {c.device for c in ds.fold("train")} == {"a", "b", "c", "s1", "s2", "s3"}
    y = ds.labels(evaluate)
    # A classifier that is right except on device s5: s5 scores 0 %, every other device 100 %.
    probs = np.full((len(y), 10), 0.01)
    probs[np.arange(len(y)), y] = 0.91
    s5 = np.array([c.device == "s5" for c in evaluate])
    probs[s5] = np.roll(probs[s5], 1, axis=1)
    results = device_wise(evaluate, y, probs, ds.classes)
    assert list(results) == ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"]
    assert results["s5"]["accuracy"] == 0.0 and results["s4"]["accuracy"] == 100.0
    assert all(r["n_clips"] == 10 for r in results.values())
    report = check_data(ds.root, progress=False)
    assert report.per_device == {d: 10 + (10 if d in ("a", "b", "c", "s1", "s2", "s3") else 0)
                                 for d in ["a", "b", "c", "s1", "s2", "s3", "s4", "s5", "s6"]}
    assert report.sample_rates == {44100: 150}
