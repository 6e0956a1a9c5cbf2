"""HTML report: self-contained (no outside references), holds the tables and plots, renders in headless chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from dcase_effdl.cli import main
from dcase_effdl.reporting.report import write_comparison_report, write_report
from fake_run import make_dataset, make_run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    ds = root / "data"
    make_dataset(ds)
    return make_run(root / "runs" / "baseline", ds), make_run(root / "runs" / "small", ds, n_params=40_000, seed=1)


def _no_outside_references(text: str) -> None:
    assert not re.search(r'(src|href)="(https?:)?//', text), "the page must not load anything from elsewhere"
    assert "<script" not in text and "<link" not in text and "@import" not in text


def test_run_report(runs):
    run = runs[0]
    path = write_report(run)
    assert path == run / "report.html"
    text = path.read_text()
    _no_outside_references(text)
    assert text.count("<svg") == 4  # accuracy vs size, training curves, two confusion matrices
    assert '<tr class="own">' in text and "Koutini_CPJKU_task1b_2" in text  # own rows beside published ones
    assert "Lastname_INST_task1b_1" in text and "450.07" in text
    assert "bn1.weight" in text and "batch norm (not counted in 2020)" in text  # the size table
    assert "within the limit of 512,000 bytes" in text
    # Element ids of the inlined SVGs do not collide.
    ids = re.findall(r' id="([^"]+)"', text)
    assert len(ids) == len(set(ids))


def test_comparison_report_and_cli(runs, tmp_path, capsys):
    out = write_comparison_report(list(runs), tmp_path / "compare.html")
    text = out.read_text()
    _no_outside_references(text)
    assert "Run baseline" in text and "Run small" in text and text.count("<svg") == 2 + 4
    assert main(["report", *map(str, runs)]) == 2
    assert "needs --out" in capsys.readouterr().err
    assert main(["report", str(runs[1]), "--no-published"]) == 0
    assert "Koutini" not in (runs[1] / "report.html").read_text()


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_headless_chromium(runs, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no chromium installed (apt-get install chromium); CI installs it")
    import matplotlib.image
    import numpy as np

    page = write_report(runs[0])
    shot = tmp_path / "report.png"
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
        page.resolve().as_uri(),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (2000, 1200)
    gray = image[..., :3].mean(axis=2)
    # A rendered page, not a blank or error page: plenty of dark text pixels, the highlighted own rows
    # (#fff5d6) and the plots' colours are on it.
    assert (gray < 0.5).mean() > 0.01
    rgb = (image[..., :3] * 255).round().astype(int)
    own_row = (abs(rgb[..., 0] - 255) <= 2) & (abs(rgb[..., 1] - 245) <= 2) & (abs(rgb[..., 2] - 214) <= 2)
    assert own_row.sum() > 2000
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)  # the limit line and own markers
    assert red.sum() > 200
    assert np.unique(rgb.reshape(-1, 3), axis=0).shape[0] > 200  # not a flat image


def test_run_report_shows_deploy_json(tmp_path):
    from dcase_effdl.rundir import RunDir

    make_dataset(tmp_path / "data")
    run = make_run(tmp_path / "run", tmp_path / "data")
    row = {"variant": "float16", "runtime": "onnxruntime", "file_bytes": 870_058, "macs": 384_012_000,
           "batch1": {"median_ms": 21.25, "p90_ms": 30.5}, "batch64": {"median_ms": 901.0, "p90_ms": 950.0},
           "peak_rss_mb": 612.4, "base_rss_mb": 63.0, "storage": "float16 weights, computed in float32"}
    RunDir(run).write_deploy({"machine": {"cpu": "Test CPU", "cores": 2}, "command": "python benchmarks/deploy.py run",
                              "rows": [row]})
    text = write_report(run).read_text()
    assert "<h2>Deployment</h2>" in text
    for cell in ("onnxruntime", "849.7", "384.0", "21.25", "30.50", "901.0", "612", "float16 weights, computed in float32",
                 "Test CPU"):
        assert f">{cell}<" in text or cell in text, cell
