"""check-data: summary and problems on the real TAU metadata, real ambient3 audio and genuine-format WAVs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dcase_effdl.data.check_data import check_data, format_report
from dcase_effdl.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TAU_META = SHARED / "data" / "TAU-urban-acoustic-scenes-2020-3class-development-meta"
AMBIENT3 = SHARED / "data" / "ambient3-development"

NAMES = [  # real TAU 2020 3Class file names: scene-city-location-segment-device
    ("airport-lisbon-1000-40000-a", "indoor"),
    ("bus-lyon-1001-40001-a", "transportation"),
    ("park-paris-104-3021-a", "outdoor"),
    ("street_traffic-milan-1161-44410-a", "outdoor"),
    ("metro_station-vienna-59-1703-a", "indoor"),
    ("tram-helsinki-161-4909-a", "transportation"),
]


def _write_tau(root: Path, names=NAMES, seconds: float = 10.0) -> Path:
    """Genuine TAU format: 48 kHz, 24-bit PCM, stereo WAV, with meta.csv and fold files."""
    (root / "audio").mkdir(parents=True)
    (root / "evaluation_setup").mkdir()
    rng = np.random.default_rng(0)
    meta = ["filename\tscene_label\tidentifier\tsource_label"]
    fold = ["filename\tscene_label"]
    for name, label in names:
        audio = (0.1 * rng.standard_normal((int(seconds * 48000), 2))).astype(np.float32)
        sf.write(root / "audio" / f"{name}.wav", audio, 48000, subtype="PCM_24")
        meta.append(f"audio/{name}.wav\t{label}\t{'-'.join(name.split('-')[1:3])}\ta")
        fold.append(f"audio/{name}.wav\t{label}")
    (root / "meta.csv").write_text("\n".join(meta) + "\n")
    (root / "evaluation_setup" / "fold1_train.csv").write_text("\n".join(fold[:4]) + "\n")
    (root / "evaluation_setup" / "fold1_evaluate.csv").write_text("\n".join(fold[:1] + fold[4:]) + "\n")
    return root


@pytest.mark.skipif(not TAU_META.is_dir(), reason=f"real TAU metadata not available at {TAU_META}")
def test_real_tau_metadata_without_audio_reports_all_missing(capsys):
    rc = main(["check-data", str(TAU_META)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "14400 clips in meta.csv" in out
    assert "classes (3): indoor 4320, outdoor 5760, transportation 4320" in out
    assert "cities (10):" in out and "milan 1440" in out
    assert "fold1_train: 9185 clips" in out and "fold1_evaluate: 4185 clips" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("MISSING: 14400 of 14400 audio files not found;")
    assert "audio does not exist: audio/airport-lisbon-1000-40000-a.wav, audio/bus-lyon-1001-40001-a.wav" in last


@pytest.mark.skipif(not AMBIENT3.is_dir(), reason=f"ambient3 dataset not available at {AMBIENT3}")
def test_ambient3_real_flac_summary(capsys):
    rc = main(["check-data", str(AMBIENT3), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["ok"]
    assert report["n_clips"] == report["n_read"] == 597
    assert report["sample_rates"] == {"16000": 597}
    assert report["channels"] == {"1": 597}
    assert report["formats"] == {"FLAC PCM_16": 597}
    assert report["duration_s"]["min"] == pytest.approx(10.0, abs=0.01)
    assert report["per_fold"] == {"train": 450, "evaluate": 147, "test": 147}
    assert sum(report["per_class"].values()) == 597


def test_genuine_format_wavs_summary(tmp_path):
    root = _write_tau(tmp_path / "tau")
    report = check_data(root, progress=False)
    assert report.ok and report.n_read == 6
    assert report.sample_rates == {48000: 6}
    assert report.channels == {2: 6}
    assert report.formats == {"WAV PCM_24": 6}
    assert report.per_city == {"helsinki": 1, "lisbon": 1, "lyon": 1, "milan": 1, "paris": 1, "vienna": 1}
    assert report.per_device == {"a": 6}
    assert report.per_fold == {"train": 3, "evaluate": 3}
    text = format_report(report)
    assert "formats: WAV PCM_24 6" in text and text.endswith("OK: all 6 audio files present and readable")


def test_broken_files_are_named_with_reasons(tmp_path, capsys):
    root = _write_tau(tmp_path / "tau")
    audio = root / "audio"
    (audio / "bus-lyon-1001-40001-a.wav").write_bytes(b"")  # empty
    (audio / "park-paris-104-3021-a.wav").write_bytes(b"RIFF....not audio at all" * 10)  # corrupt
    full = (audio / "street_traffic-milan-1161-44410-a.wav").read_bytes()
    (audio / "street_traffic-milan-1161-44410-a.wav").write_bytes(full[: len(full) // 3])  # truncated copy
    sf.write(audio / "metro_station-vienna-59-1703-a.wav", np.zeros((44100 * 10, 2), np.float32), 44100, subtype="PCM_24")
    (audio / "tram-helsinki-161-4909-a.wav").unlink()  # missing
    (audio / "extra-file-1-1-a.wav").write_bytes(b"x")  # on disk, not in meta.csv

    rc = main(["check-data", str(root)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "MISSING: 1 of 6 audio files not found" in out and "audio/tram-helsinki-161-4909-a.wav" in out
    unreadable = next(line for line in out.splitlines() if line.startswith("UNREADABLE:"))
    assert unreadable.startswith("UNREADABLE: 3 audio file(s):")
    assert "audio/bus-lyon-1001-40001-a.wav: empty file" in unreadable
    assert "audio/park-paris-104-3021-a.wav: not a readable audio file" in unreadable
    assert "audio/street_traffic-milan-1161-44410-a.wav: truncated WAV file" in unreadable
    assert "warning: 1 file(s) unlike the rest: audio/metro_station-vienna-59-1703-a.wav: 44100 Hz" in out
    assert "1 audio file(s) on disk are not listed in meta.csv" in out


def test_layout_error_is_one_line(tmp_path, capsys):
    (tmp_path / "data" / "TAU-x").mkdir(parents=True)
    _write_tau(tmp_path / "data" / "TAU-x" / "inner", names=NAMES[:1], seconds=0.1)
    rc = main(["check-data", str(tmp_path / "data" / "TAU-x")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "meta.csv: file not found" in err and "did you mean" in err


RECIPE = """\
name: nan_check
features: {features}
dataset:
  root: {root}
model:
  name: dcase2020_baseline
train:
  epochs: 1
  batch_size: 4
variants:
  - name: float32
    compress: []
cache_dir: {cache}
"""


def test_nan_samples_reported_by_check_data_and_by_run_before_extraction(tmp_path, capsys):
    import subprocess
    import sys

    root = _write_tau(tmp_path / "tau")
    test_fold = [f"audio/{name}.wav" for name, _ in NAMES[4:]]
    (root / "evaluation_setup" / "fold1_test.csv").write_text("filename\n" + "\n".join(test_fold) + "\n")  # run needs it
    bad = "audio/park-paris-104-3021-a.wav"
    x = (0.1 * np.random.default_rng(1).standard_normal((480000, 2))).astype(np.float32)
    x[300000, 0] = np.nan
    sf.write(root / bad, x, 48000, subtype="FLOAT")  # only float files can hold NaN

    # check-data and run call the same check (features.audio.check_audio).
    rc = main(["check-data", str(root)])
    out = capsys.readouterr().out
    assert rc == 1
    unreadable = next(line for line in out.splitlines() if line.startswith("UNREADABLE:"))
    assert unreadable == f"UNREADABLE: 1 audio file(s): {bad}: audio contains NaN or infinite samples"

    recipe = tmp_path / "recipe.yaml"
    features = Path(__file__).resolve().parents[1] / "features" / "dcase2020_baseline.yaml"
    recipe.write_text(RECIPE.format(features=features, root=root, cache=tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "dcase_effdl", "run", str(recipe), "--out", str(tmp_path / "run")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"{root / bad}: audio contains NaN or infinite samples" in proc.stderr
    assert not list((tmp_path / "cache").rglob("*.npy"))  # stopped before extracting anything
