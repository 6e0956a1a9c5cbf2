"""Dataset reader: the real TAU 2020 3Class metadata, the ambient3 proxy set, and one-line errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dcase_effdl.data.dataset import (
    Clip,
    check_layout,
    grouped_folds,
    load_dataset,
    missing_audio,
    parse_filename,
    validation_split,
)
from dcase_effdl.errors import UserError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TAU_META = SHARED / "data" / "TAU-urban-acoustic-scenes-2020-3class-development-meta"
AMBIENT3 = SHARED / "data" / "ambient3-development"

SCENE_TO_CLASS = {
    "airport": "indoor", "shopping_mall": "indoor", "metro_station": "indoor",
    "park": "outdoor", "public_square": "outdoor", "street_pedestrian": "outdoor", "street_traffic": "outdoor",
    "bus": "transportation", "metro": "transportation", "tram": "transportation",
}


@pytest.fixture(scope="module")
def tau():
    if not (TAU_META / "meta.csv").is_file():
        pytest.skip(f"real TAU 2020 3Class metadata not available at {TAU_META}")
    return load_dataset(TAU_META)


# ---------------------------------------------------------------- file names


def test_parse_filename_scenes_with_underscores_and_ambient3_names():
    assert parse_filename("audio/street_pedestrian-lyon-1003-40003-a.wav") == {
        "scene10": "street_pedestrian", "city": "lyon", "location": "1003", "segment": "40003",
        "device": "a", "identifier": "lyon-1003",
    }
    p = parse_filename("audio/public_space-whisperli-0-0-a.flac")
    assert (p["scene10"], p["city"], p["location"], p["segment"], p["device"]) == ("public_space", "whisperli", "0", "0", "a")


@pytest.mark.parametrize("bad", ["audio/17.wav", "audio/airport-lisbon-1000-a.wav", "audio/airport-lisbon-1000-40000-a", "audio/-lisbon-1-2-a.wav"])
def test_parse_filename_rejects_other_names(bad):
    with pytest.raises(UserError, match=rf"{bad}: file name does not follow <scene>-<city>"):
        parse_filename(bad)


# ---------------------------------------------------------------- real TAU metadata


def test_real_tau_counts_and_classes(tau):
    assert len(tau.clips) == 14400
    assert tau.classes == ["indoor", "outdoor", "transportation"]
    assert Counter(c.scene_label for c in tau.clips) == {"indoor": 4320, "outdoor": 5760, "transportation": 4320}
    assert [len(tau.fold(f)) for f in ("train", "evaluate", "test")] == [9185, 4185, 4185]
    assert tau.clips[0] == Clip(
        filename="audio/airport-lisbon-1000-40000-a.wav", scene_label="indoor", identifier="lisbon-1000",
        city="lisbon", location="1000", segment="40000", device="a", scene10="airport", source_label="a",
    )
    # Test rows carry no label in fold1_test.csv: it comes from meta.csv.
    assert all(c.scene_label in tau.classes for c in tau.fold("test"))
    assert np.bincount(tau.labels(tau.fold("train"))).tolist() == [2704, 3757, 2724]


def test_real_tau_split_is_location_disjoint_and_milan_test_only(tau):
    train_ids = {c.identifier for c in tau.fold("train")}
    eval_ids = {c.identifier for c in tau.fold("evaluate")}
    assert train_ids and eval_ids and not train_ids & eval_ids
    assert "milan" not in {c.city for c in tau.fold("train")}
    assert "milan" in {c.city for c in tau.fold("evaluate")}
    assert all(c.identifier == f"{c.city}-{c.location}" for c in tau.clips)


def test_real_tau_scene10_matches_the_dcase_mapping(tau):
    assert {c.scene10 for c in tau.clips} == set(SCENE_TO_CLASS)
    assert all(SCENE_TO_CLASS[c.scene10] == c.scene_label for c in tau.clips)
    assert Counter(c.scene10 for c in tau.clips) == {s: 1440 for s in SCENE_TO_CLASS}
    assert tau.scene10_classes == sorted(SCENE_TO_CLASS)


def test_real_tau_layout_check_names_missing_audio(tau):
    # The shared copy has metadata only: every audio file is missing, and the message says where.
    assert len(missing_audio(tau)) == 14400
    with pytest.raises(UserError) as err:
        check_layout(tau)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"14400 of 14400 audio files missing under {TAU_META / 'audio'}: audio/airport-lisbon-1000-40000-a.wav")
    assert f"(expected {TAU_META / 'audio' / 'airport-lisbon-1000-40000-a.wav'}" in msg
    with pytest.raises(UserError, match=r"^4185 of 4185 audio files missing"):
        check_layout(tau, folds=("evaluate",))


def test_real_tau_validation_split(tau):
    train = tau.fold("train")
    fit, val = validation_split(train, 0.3, seed=0)
    assert len(fit) + len(val) == len(train) and {c.filename for c in fit}.isdisjoint(c.filename for c in val)
    assert not {c.identifier for c in fit} & {c.identifier for c in val}
    assert abs(len(val) / len(train) - 0.3) < 0.03
    for label in tau.classes:
        n_class = sum(c.scene_label == label for c in train)
        n_val = sum(c.scene_label == label for c in val)
        assert abs(n_val / n_class - 0.3) < 0.03, label
    # Input order is kept on both sides; the same seed gives the same split, another seed another one.
    order = {c.filename: i for i, c in enumerate(train)}
    assert [order[c.filename] for c in val] == sorted(order[c.filename] for c in val)
    assert validation_split(train, 0.3, seed=0) == (fit, val)
    assert validation_split(train, 0.3, seed=1)[1] != val


def test_validation_split_small_sets_keep_every_class_on_both_sides():
    clips = []
    for label, n_locations in (("a", 2), ("b", 3), ("c", 5)):
        for loc in range(n_locations):
            clips += [Clip(f"audio/{label}-c-{label}{loc}-{i}-a.wav", label, f"c-{label}{loc}") for i in range(4)]
    fit, val = validation_split(clips, 0.3, seed=3)
    assert {c.scene_label for c in fit} == {c.scene_label for c in val} == {"a", "b", "c"}
    assert not {c.identifier for c in fit} & {c.identifier for c in val}
    with pytest.raises(UserError, match="between 0 and 1"):
        validation_split(clips, 1.0, seed=0)
    # 0: the whole fold trains (a fixed-epoch recipe), whatever the seed.
    assert validation_split(clips, 0.0, seed=3) == (clips, [])


def test_grouped_folds_keep_locations_together_and_spread_each_class():
    clips = []
    for label, sizes in (("a", [4, 4, 4, 4]), ("b", [6, 1, 2, 3, 2, 2]), ("c", [3, 3, 3])):
        for loc, n in enumerate(sizes):
            clips += [Clip(f"audio/{label}-c-{label}{loc}-{i}-a.wav", label, f"c-{label}{loc}") for i in range(n)]
    folds = grouped_folds(clips, 3, seed=0)
    for loc in {c.identifier for c in clips}:
        assert len({int(f) for c, f in zip(clips, folds) if c.identifier == loc}) == 1
    per_fold = {label: sorted(sum(1 for c, f in zip(clips, folds) if c.scene_label == label and f == k) for k in range(3))
                for label in "abc"}
    # Largest location first, each to the emptiest fold: a 16 -> 8/4/4, b 16 (6, 3, 2, 2, 2, 1) -> 6/5/5, c 9 -> 3/3/3.
    assert per_fold == {"a": [4, 4, 8], "b": [5, 5, 6], "c": [3, 3, 3]}
    assert (grouped_folds(clips, 3, seed=0) == folds).all()
    with pytest.raises(UserError, match="at least 2 folds"):
        grouped_folds(clips, 1, seed=0)


# ---------------------------------------------------------------- ambient3 (real audio, FLAC)


def test_ambient3_loads_and_every_audio_file_exists():
    if not (AMBIENT3 / "meta.csv").is_file():
        pytest.skip(f"ambient3 development set not available at {AMBIENT3}")
    ds = load_dataset(AMBIENT3)
    assert len(ds.clips) == 597
    assert (len(ds.fold("train")), len(ds.fold("evaluate")), len(ds.fold("test"))) == (450, 147, 147)
    assert ds.classes == ["indoor", "outdoor", "transportation"]
    assert {c.filename.rsplit(".", 1)[1] for c in ds.clips} == {"flac"}
    assert all(c.scene10 and c.identifier for c in ds.clips)
    assert not {c.identifier for c in ds.fold("train")} & {c.identifier for c in ds.fold("evaluate")}
    check_layout(ds)
    assert missing_audio(ds) == []
    assert all(ds.audio_path(c).is_file() for c in ds.fold("evaluate"))


# ---------------------------------------------------------------- errors, on a tiny layout


def _layout(root: Path, *, with_audio: bool = True) -> Path:
    names = [
        ("audio/airport-lyon-1-10-a.wav", "indoor"),
        ("audio/park-lyon-2-11-a.wav", "outdoor"),
        ("audio/bus-lyon-3-12-a.wav", "transportation"),
        ("audio/metro-paris-4-13-a.wav", "transportation"),
    ]
    (root / "evaluation_setup").mkdir(parents=True)
    (root / "meta.csv").write_text(
        "filename\tscene_label\tidentifier\tsource_label\n"
        + "".join(f"{n}\t{lab}\t{n.split('-')[1]}-{n.split('-')[2]}\ta\n" for n, lab in names)
    )
    (root / "evaluation_setup" / "fold1_train.csv").write_text(
        "filename\tscene_label\n" + "".join(f"{n}\t{lab}\n" for n, lab in names[:3])
    )
    (root / "evaluation_setup" / "fold1_evaluate.csv").write_text(f"filename\tscene_label\n{names[3][0]}\t{names[3][1]}\n")
    (root / "evaluation_setup" / "fold1_test.csv").write_text(f"filename\n{names[3][0]}\n")
    if with_audio:
        (root / "audio").mkdir()
        for n, _ in names:
            (root / n).write_bytes(b"")
    return root


def test_tiny_layout_loads(tmp_path):
    ds = load_dataset(_layout(tmp_path / "d"))
    assert ds.classes == ["indoor", "outdoor", "transportation"]
    assert [c.scene10 for c in ds.fold("train")] == ["airport", "park", "bus"]
    assert ds.fold("test")[0].scene_label == "transportation"
    assert ds.labels(ds.fold("train")).tolist() == [0, 1, 2]
    assert ds.audio_path(ds.clips[0]) == tmp_path / "d" / "audio" / "airport-lyon-1-10-a.wav"
    check_layout(ds)
    (tmp_path / "d" / "audio" / "park-lyon-2-11-a.wav").unlink()
    with pytest.raises(UserError, match=r"^1 of 4 audio files missing under .*/d/audio: audio/park-lyon-2-11-a.wav \(expected .*/d/audio/park-lyon-2-11-a.wav\)$"):
        check_layout(ds)
    check_layout(ds, folds=("evaluate",))  # the missing file is not in this fold
    with pytest.raises(UserError, match="unknown class label 'tram'"):
        ds.class_index("tram")


def test_missing_root_says_which_path(tmp_path):
    with pytest.raises(UserError, match=rf"^dataset root {tmp_path / 'nowhere'} does not exist$"):
        load_dataset(tmp_path / "nowhere")


def test_root_one_folder_off_suggests_the_real_root(tmp_path):
    real = _layout(tmp_path / "TAU-dev" / "TAU-dev")  # zip unpacked into a folder of the same name
    with pytest.raises(UserError, match=rf"meta.csv: file not found.*did you mean {real}\?"):
        load_dataset(tmp_path / "TAU-dev")
    with pytest.raises(UserError, match=rf"{real / 'audio' / 'x'} does not exist \(did you mean {real}\?"):
        load_dataset(real / "audio" / "x")  # a path below the root
    (real / "audio").rename(real / "audio_moved")
    with pytest.raises(UserError, match=rf"dataset root {real / 'audio'} does not exist \(did you mean {real}\?"):
        load_dataset(real / "audio")


def test_missing_meta_and_fold_files_name_the_expected_path(tmp_path):
    root = _layout(tmp_path / "d")
    (root / "meta.csv").unlink()
    with pytest.raises(UserError, match=rf"^{root / 'meta.csv'}: file not found"):
        load_dataset(root)
    root = _layout(tmp_path / "e")
    (root / "evaluation_setup" / "fold1_evaluate.csv").unlink()
    with pytest.raises(UserError, match=rf"^{root / 'evaluation_setup' / 'fold1_evaluate.csv'}: fold file not found"):
        load_dataset(root)
    assert len(load_dataset(root, folds=("train",)).fold("train")) == 3


@pytest.mark.parametrize(
    "target, text, message",
    [
        ("meta.csv", "filename\tscene_label\tidentifier\tsource_label\naudio/airport-lyon-1-10-a.wav\tindoor\n",
         r"meta.csv:2: malformed row: expected 4 tab-separated fields \(filename, scene_label, identifier, source_label\), got 2"),
        ("meta.csv", "filename,scene_label\naudio/a.wav,indoor\n", r"meta.csv: header lacks column\(s\) filename \(the file must be tab-separated\)"),
        ("meta.csv", "filename\tscene_label\n/etc/passwd\tindoor\n", r"meta.csv:2: file name '/etc/passwd' must be a path relative"),
        ("evaluation_setup/fold1_train.csv", "filename\tscene_label\naudio/airport-lyon-1-10-a.wav\tindoor\naudio/tram-x-9-9-a.wav\ttransportation\n",
         r"fold1_train.csv:3: audio/tram-x-9-9-a.wav is not listed in .*meta.csv"),
        ("evaluation_setup/fold1_train.csv", "filename\tscene_label\naudio/airport-lyon-1-10-a.wav\toutdoor\n",
         r"fold1_train.csv:2: label 'outdoor' of audio/airport-lyon-1-10-a.wav contradicts meta.csv \('indoor'\)"),
        ("evaluation_setup/fold1_test.csv", "", r"fold1_test.csv: empty file"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, target, text, message):
    root = _layout(tmp_path / "d")
    (root / target).write_text(text)
    with pytest.raises(UserError, match=message) as err:
        load_dataset(root)
    assert "\n" not in str(err.value)
