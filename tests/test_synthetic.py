"""Synthetic dataset: exact TAU 3Class layout, location-disjoint folds, byte-identical for a seed, safe rewrites."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dcase_effdl.data.dataset import check_layout, load_dataset
from dcase_effdl.errors import UserError
from dcase_effdl.data.synthetic import MARKER, SCENES, make_dataset

SCENE_TO_CLASS = {scene: label for label, scenes in SCENES.items() for scene in scenes}


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """10 clips per class, 1 s at 16 kHz: enough for layout, folds and determinism."""
    return make_dataset(tmp_path_factory.mktemp("syn") / "small", clips_per_class=10, seed=3, duration=1.0, sample_rate=16000)


def test_layout_loads_and_passes_the_layout_check(small):
    ds = load_dataset(small)
    check_layout(ds)
    assert ds.classes == ["indoor", "outdoor", "transportation"]
    assert Counter(c.scene_label for c in ds.clips) == {"indoor": 10, "outdoor": 10, "transportation": 10}
    assert len(ds.fold("train")) + len(ds.fold("evaluate")) == 30
    assert [c.filename for c in ds.fold("test")] == [c.filename for c in ds.fold("evaluate")]
    header = (small / "meta.csv").read_text().splitlines()[0]
    assert header == "filename\tscene_label\tidentifier\tsource_label"
    assert (small / "evaluation_setup" / "fold1_test.csv").read_text().splitlines()[0] == "filename"
    for clip in ds.clips:
        # File names follow <scene>-<city>-<location>-<segment>-<device>.wav with a real TAU scene.
        assert clip.filename == f"audio/{clip.scene10}-{clip.city}-{clip.location}-{clip.segment}-a.wav"
        assert SCENE_TO_CLASS[clip.scene10] == clip.scene_label
        assert clip.identifier == f"{clip.city}-{clip.location}"
    assert sorted(p.name for p in (small / "audio").iterdir()) == sorted(Path(c.filename).name for c in ds.clips)


def test_folds_are_location_disjoint_with_every_class_on_both_sides(small):
    ds = load_dataset(small)
    train, evaluate = ds.fold("train"), ds.fold("evaluate")
    assert not {c.identifier for c in train} & {c.identifier for c in evaluate}
    assert {c.scene_label for c in train} == {c.scene_label for c in evaluate} == set(ds.classes)
    assert 0.15 <= len(evaluate) / len(ds.clips) <= 0.45


def test_larger_dataset_has_several_cities_scenes_and_about_30_percent_evaluate(tmp_path):
    root = make_dataset(tmp_path / "d", clips_per_class=60, seed=0, duration=0.2, sample_rate=16000)
    ds = load_dataset(root)
    assert {c.scene10 for c in ds.clips} == set(SCENE_TO_CLASS)
    assert len({c.city for c in ds.clips}) >= 5
    for label in ds.classes:
        clips = [c for c in ds.clips if c.scene_label == label]
        n_eval = sum(c.scene_label == label for c in ds.fold("evaluate"))
        assert len({c.identifier for c in clips}) >= 10
        assert abs(n_eval / len(clips) - 0.3) <= 0.05, label


def test_every_scene_gets_its_share_of_the_evaluate_fold(tmp_path):
    # Evaluate locations are spread over the scenes, so the test mix (and the accuracy on it) does
    # not depend on which locations a data seed happens to pick.
    for seed in (0, 1):
        ds = load_dataset(make_dataset(tmp_path / f"d{seed}", clips_per_class=60, seed=seed, duration=0.1, sample_rate=16000))
        evaluate = {c.identifier for c in ds.fold("evaluate")}
        for label, scenes in SCENES.items():
            locations = {c.identifier: c.scene10 for c in ds.clips if c.scene_label == label}
            n_eval = sum(key in evaluate for key in locations)
            for scene in scenes:
                mine = [key for key, s in locations.items() if s == scene]
                share = n_eval * len(mine) / len(locations)
                assert abs(sum(key in evaluate for key in mine) - share) <= 1.0, (seed, scene)


def test_files_do_not_depend_on_the_number_of_threads(small, tmp_path):
    one = make_dataset(tmp_path / "one", clips_per_class=10, seed=3, duration=1.0, sample_rate=16000, workers=1)
    three = make_dataset(tmp_path / "three", clips_per_class=10, seed=3, duration=1.0, sample_rate=16000, workers=3)
    assert _digest(one) == _digest(three) == _digest(small)


def test_audio_files_have_the_requested_format(tmp_path):
    root = make_dataset(tmp_path / "d", clips_per_class=2, seed=1, duration=0.5, sample_rate=48000, channels=2, subtype="PCM_24")
    ds = load_dataset(root)
    for clip in ds.clips:
        info = sf.info(ds.audio_path(clip))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (48000, 2, 24000, "PCM_24")
    audio, rate = sf.read(ds.audio_path(ds.clips[0]))
    assert audio.shape == (24000, 2) and rate == 48000
    assert 1e-4 < np.sqrt(np.mean(audio**2)) < 0.5 and np.max(np.abs(audio)) < 1.0
    # Content up to 24 kHz: the band above the Nyquist of the 16 kHz composition rate is not empty.
    spectrum = np.abs(np.fft.rfft(audio[:, 0]))
    freqs = np.fft.rfftfreq(audio.shape[0], 1 / 48000)
    assert np.mean(spectrum[(freqs > 12000) & (freqs < 20000)]) > 1e-6 * np.mean(spectrum[freqs < 8000])
    # Two microphones: the same scene (level envelopes agree), not the same samples.
    frames = (audio[: 24000 // 1200 * 1200] ** 2).reshape(-1, 1200, 2).mean(axis=1)
    assert np.corrcoef(frames[:, 0], frames[:, 1])[0, 1] > 0.8
    assert not np.allclose(audio[:, 0], audio[:, 1], atol=1e-3)


def test_same_seed_same_bytes_other_seed_other_bytes(small, tmp_path):
    again = make_dataset(tmp_path / "again", clips_per_class=10, seed=3, duration=1.0, sample_rate=16000)
    other = make_dataset(tmp_path / "other", clips_per_class=10, seed=4, duration=1.0, sample_rate=16000)
    first = _digest(small)
    assert _digest(again) == first
    other_digest = _digest(other)
    assert other_digest != first
    audio = lambda d: {h for k, h in d.items() if k.startswith("audio")}  # noqa: E731
    assert not audio(first) & audio(other_digest)


def test_classes_are_learnable_across_locations(tmp_path):
    # Proxy for "a CNN can learn it": logistic regression on mean/std of 16 log bands, trained on
    # the train fold, must reach well above chance (33 %) on the unseen locations of the evaluate
    # fold without being perfect (the data is a test of the method, not a giveaway). This set
    # gives 75.0 % (data seeds 1, 2, 3: 75.0, 70.8, 66.7 %, i.e. 16-18 of 24 clips); on the
    # quickstart's 300 clips of 10 s at 48 kHz the same kind of proxy gets 81-88 %.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = make_dataset(tmp_path / "d", clips_per_class=30, seed=0, duration=2.0, sample_rate=16000)
    ds = load_dataset(root)
    edges = np.geomspace(50, 8000, 17)

    def features(clip):
        x, rate = sf.read(ds.audio_path(clip))
        frames = x[: x.size // 512 * 512].reshape(-1, 512) * np.hanning(512)
        power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
        f = np.fft.rfftfreq(512, 1 / rate)
        bands = np.stack([power[:, (f >= lo) & (f < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])], 1)
        bands = np.log(bands + 1e-10)
        return np.concatenate([bands.mean(0), bands.std(0)])

    train, evaluate = ds.fold("train"), ds.fold("evaluate")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit([features(c) for c in train], ds.labels(train))
    y = ds.labels(evaluate)
    predicted = model.predict([features(c) for c in evaluate])
    macro = np.mean([np.mean(predicted[y == k] == k) for k in range(3)])
    assert 0.6 <= macro <= 0.92


def test_existing_dataset_is_kept_and_interrupted_one_regenerated(tmp_path):
    root = make_dataset(tmp_path / "d", clips_per_class=2, seed=0, duration=0.2, sample_rate=16000)
    marker = json.loads((root / MARKER).read_text())
    assert marker["complete"] is True and marker["params"]["seed"] == 0
    before = _digest(root)
    stamp = (root / "meta.csv").stat().st_mtime_ns
    make_dataset(root, clips_per_class=2, seed=0, duration=0.2, sample_rate=16000)
    assert (root / "meta.csv").stat().st_mtime_ns == stamp  # same arguments: nothing rewritten

    # An interrupted run: marker says incomplete, meta.csv not written yet, an audio file missing.
    (root / "meta.csv").unlink()
    next((root / "audio").iterdir()).unlink()
    (root / MARKER).write_text(json.dumps({**marker, "complete": False}))
    make_dataset(root, clips_per_class=2, seed=0, duration=0.2, sample_rate=16000)
    assert _digest(root) == before
    check_layout(load_dataset(root))

    # Different arguments: the old synthetic files are replaced, not mixed with the new ones.
    make_dataset(root, clips_per_class=3, seed=0, duration=0.2, sample_rate=16000)
    assert len(list((root / "audio").iterdir())) == 9
    assert len(load_dataset(root).clips) == 9


def test_refuses_to_overwrite_a_folder_that_is_not_a_synthetic_dataset(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match=rf"{target}: folder is not empty and is not a synthetic dataset"):
        make_dataset(target, clips_per_class=2, duration=0.2, sample_rate=16000)
    assert (target / "notes.txt").read_text() == "keep me"
    with pytest.raises(UserError, match="clips_per_class must be an integer >= 2"):
        make_dataset(tmp_path / "x", clips_per_class=1)
    with pytest.raises(UserError, match="subtype 'MP3X'"):
        make_dataset(tmp_path / "x", clips_per_class=2, subtype="MP3X")
