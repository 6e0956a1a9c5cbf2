"""The run folder: the one module that reads and writes the files a run leaves behind.

    config.yaml          the resolved recipe; dataset.root is the dataset actually used (absolute)
    features.yaml        the feature definition
    config_hash.txt      hash of everything the trained model depends on: the folder's identity
    environment.json     versions, git commit, CPU model and flags, torch kernels and threads
    normalization.json   per-channel, per-band mean and std of the training fold
    train/               best.safetensors, last.pt, history.json (the last two written by training.loop)
    work/                scratch of compression steps (teacher logits)
    <variant>/           model.safetensors, size.json, <label>.output.csv, <label>.meta.yaml, metrics.json
    <variant>/evaluation/  <label>.output.csv on an unlabeled evaluation set, evaluation.json (written last)
    <variant>/export/    model.onnx (`dcase-effdl export`), export.json (storage, agreement; written last)
    export/              frontend.onnx (`dcase-effdl export --frontend`: audio -> features), frontend.json (last)
    deploy.json          per variant and runtime: file size, latency, peak RSS, MACs (benchmarks/deploy.py)
    .lock                while a run writes the folder: its pid, host and start time

A variant is finished when its metrics.json exists (written last). Every write is atomic
(`files.atomic_write`); a missing or damaged file is one UserError naming it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import socket
import subprocess
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Callable, Iterator

import yaml

from dcase_effdl import __version__
from dcase_effdl.config import NOT_HASHED, FeatureConfig, Recipe, from_dict, read_yaml, to_dict
from dcase_effdl.errors import UserError
from dcase_effdl.machine import machine
from dcase_effdl.files import atomic_write

LOCK = ".lock"
# Lock fds this process holds. A forked child (a DataLoader worker) shares the flock through its copy
# of the fd and, if it outlives a killed run by the seconds its watchdog takes, would keep the folder
# "in use" for the resumed run: every fork child closes its copies at once.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)
OUTPUT_SUFFIX, META_SUFFIX = ".output.csv", ".meta.yaml"


def read_json(path: Path) -> dict:
    """A JSON object from `path`; a missing or damaged file is a one-line UserError."""
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def write_json(path: Path, obj: dict) -> None:
    atomic_write(path, json.dumps(obj, indent=2))


def config_hash(recipe: Recipe, feat: FeatureConfig, data_root: str) -> str:
    """Hash of everything the trained model depends on (not the variants: they can change)."""
    payload = to_dict(recipe)
    payload.pop("variants")
    payload.pop("submission")
    for key in NOT_HASHED:  # threads and worker counts: a run folder may be resumed with other values
        payload["train"].pop(key)
    payload["out_dir"] = None
    payload["dataset"]["root"] = str(Path(data_root).resolve())
    payload["feature_definition"] = to_dict(feat)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def current_environment() -> dict:
    """Versions, git commit, CPU, torch kernels and threads of this process (what environment.json records)."""
    import numpy as np

    return {
        "dcase_effdl": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "librosa": metadata.version("librosa"),  # from the installed metadata: importing librosa costs seconds
        "scikit_learn": metadata.version("scikit-learn"),
        **machine(),  # cpu, cpu_flags, cores, torch, torch_cpu_capability, torch_threads, env
    }


def _holder(text: bytes) -> str:
    """Who a lock file names: 'pid N on HOST (since TIME)'."""
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} (since {info['started']})"
    except (ValueError, KeyError, TypeError):
        return "another process (unreadable lock file)"


class RunDir:
    """A run folder (layout in the module docstring); readers check strictly, writers write atomically."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.features_path = self.path / "features.yaml"
        self.history_path = self.path / "train" / "history.json"

    # ------------------------------------------------------------ readers

    def recipe(self) -> Recipe:
        if not self.config_path.is_file():
            raise UserError(f"{self.path}: not a run folder (no config.yaml)")
        return from_dict(Recipe, read_yaml(self.config_path), str(self.config_path))

    def features(self) -> FeatureConfig:
        return from_dict(FeatureConfig, read_yaml(self.features_path), str(self.features_path))

    def normalization(self) -> dict:
        return read_json(self.path / "normalization.json")

    def environment(self) -> dict:
        return read_json(self.path / "environment.json")

    def history(self, optional: bool = False) -> dict | None:
        """train/history.json: {best_epoch, epochs: [{epoch, train_loss, val_loss, val_accuracy, ...}]}.

        `optional`: None when the file does not exist (a damaged file is still an error).
        """
        if optional and not self.history_path.is_file():
            return None
        data = read_json(self.history_path)
        epochs = data.get("epochs")
        if not isinstance(epochs, list) or not all(isinstance(e, dict) and "epoch" in e for e in epochs):
            raise UserError(f"{self.history_path}: expected a list of epoch records with 'epoch', 'train_loss', "
                            "'val_loss', 'val_accuracy'")
        return data

    def variant(self, name: str) -> VariantDir:
        return VariantDir(self.path / name)

    @property
    def deploy_path(self) -> Path:
        return self.path / "deploy.json"

    def deploy(self, optional: bool = False) -> dict | None:
        """deploy.json: {machine, rows: [{variant, runtime, ...}]}; `optional`: None when it does not exist."""
        if optional and not self.deploy_path.is_file():
            return None
        data = read_json(self.deploy_path)
        rows = data.get("rows")
        if not isinstance(rows, list) or not all(isinstance(r, dict) and {"variant", "runtime"} <= r.keys() for r in rows):
            raise UserError(f"{self.deploy_path}: expected 'rows', a list of records with 'variant' and 'runtime'")
        return data

    def write_deploy(self, data: dict) -> None:
        write_json(self.deploy_path, data)

    @property
    def frontend_path(self) -> Path:
        return self.path / "export" / "frontend.onnx"

    def frontend_info(self) -> dict:
        """export/frontend.json: {size_bytes, n_clips, max_db_diff, ...} of the exported front end."""
        if not self.frontend_path.is_file():
            raise UserError(f"{self.path}: no exported front end; run `dcase-effdl export {self.path} --frontend`")
        return read_json(self.frontend_path.with_suffix(".json"))

    def write_frontend(self, model: bytes, info: dict) -> Path:
        """export/frontend.onnx, then frontend.json (written last: without it the export is unfinished)."""
        self.frontend_path.with_suffix(".json").unlink(missing_ok=True)
        atomic_write(self.frontend_path, model)
        write_json(self.frontend_path.with_suffix(".json"), info)
        return self.frontend_path

    def variants(self) -> list[VariantDir]:
        """Finished variants in the recipe's order (without config.yaml: folders in name order)."""
        if not self.path.is_dir():
            raise UserError(f"{self.path}: run folder not found")
        if self.config_path.is_file():
            names = [v.name for v in self.recipe().variants]
        else:
            names = sorted(p.name for p in self.path.iterdir() if p.is_dir())
        found = [v for v in map(self.variant, names) if v.finished]
        if not found:
            raise UserError(f"{self.path}: no finished variant (no <variant>/metrics.json)")
        return found

    # ------------------------------------------------------------ writers

    def check(self, digest: str) -> None:
        """Refuse a folder of another configuration than `digest`, or a non-empty folder that is not a
        run folder (cheap: the pipeline asks before any data work, so a wrong --out costs nothing)."""
        marker = self.path / "config_hash.txt"
        if marker.is_file() and marker.read_text().strip() != digest:
            raise UserError(f"{self.path}: holds a run of a different configuration; choose another folder "
                            "with --out or delete it")
        if not marker.is_file() and self.path.is_dir() and any(p.name != LOCK for p in self.path.iterdir()):
            raise UserError(f"{self.path}: exists and is not a dcase-effdl run folder; choose another --out")

    def prepare(self, recipe: Recipe, feat: FeatureConfig, digest: str, data_root: str | Path) -> None:
        """Stamp the folder with `digest` and write config, features and environment.

        Refuses a folder of another configuration, or a non-empty folder that is not a run folder.
        config.yaml records `data_root`, the dataset actually used (`run --data`), as an absolute path,
        so that later stages (submit, evaluate) find it from any working directory.
        """
        self.check(digest)
        config = to_dict(recipe)
        if recipe.dataset.kind == "tau":  # the other kinds read no folder
            config["dataset"]["root"] = str(Path(data_root).resolve())
        atomic_write(self.config_path, yaml.safe_dump(config, sort_keys=False))
        atomic_write(self.features_path, yaml.safe_dump(to_dict(feat), sort_keys=False))
        write_json(self.path / "environment.json", current_environment())
        atomic_write(self.path / "config_hash.txt", digest + "\n")

    def write_normalization(self, stats: dict) -> None:
        write_json(self.path / "normalization.json", stats)

    @contextmanager
    def lock(self, log: Callable[[str], None] = print) -> Iterator[None]:
        """Hold the folder's lock while a run writes it; a second holder gets 'RUNDIR: in use by pid N'.

        The lock is an flock on `.lock`, which the kernel drops when its process dies (fork children
        close their copy of the fd: `_HELD`), so a lock left by a killed run (its file still naming
        the dead pid) is taken over with a note. The file holds the pid, host and start time for
        the message. Folders this call created are removed
        again when nothing but the lock was written into them.
        """
        created = [p for p in (self.path, *self.path.parents) if not p.exists()]  # the folder first
        path = self.path / LOCK
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    deadline = time.monotonic() + 1  # the holder writes its pid right after taking the lock
                    while not (text := os.pread(fd, 4096, 0)) and time.monotonic() < deadline:
                        time.sleep(0.05)
                    os.close(fd)
                    raise UserError(f"{self.path}: in use by {_holder(text)}; wait for it to finish or choose "
                                    "another --out") from None
                try:
                    current = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    current = False
                if current:  # else the holder released (unlinked) it between our open and flock: again
                    break
                os.close(fd)
        except OSError as exc:
            raise UserError(f"{path}: cannot take the run folder's lock ({exc.strerror})") from None
        _HELD.add(fd)
        try:
            left = os.pread(fd, 4096, 0)
            if left.strip():
                log(f"[run] {self.path}: taking over the lock left by {_holder(left)}, whose process has ended")
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            yield
        finally:
            path.unlink(missing_ok=True)  # before the close: a waiter then sees another inode and retries
            _HELD.discard(fd)
            os.close(fd)
            for folder in created:
                if any(folder.iterdir()):
                    break
                folder.rmdir()


class VariantDir:
    """One variant's folder: model file, size report, submission files and metrics (written last)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.name = self.path.name
        self.model_path = self.path / "model.safetensors"
        self.metrics_path = self.path / "metrics.json"

    @property
    def run(self) -> RunDir:
        return RunDir(self.path.parent)

    @property
    def finished(self) -> bool:
        return self.metrics_path.is_file()

    def metrics(self) -> dict:
        return read_json(self.metrics_path)

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    def export_path(self, fmt: str) -> Path:
        """The exported model file of format `fmt` (e.g. 'onnx' -> export/model.onnx)."""
        return self.export_dir / f"model.{fmt}"

    def export_info(self, fmt: str) -> dict:
        """export.json's record for `fmt`: {file, size_bytes, storage, agreement, ...} (a UserError when not exported)."""
        info_path = self.export_dir / "export.json"
        if not info_path.is_file():
            raise UserError(f"{self.path}: not exported (no export/export.json); run `dcase-effdl export {self.path.parent}`")
        info = read_json(info_path).get(fmt)
        if not isinstance(info, dict) or not self.export_path(fmt).is_file():
            raise UserError(f"{info_path}: no {fmt} export; run `dcase-effdl export {self.path.parent} --format {fmt}`")
        return info

    def write_export(self, fmt: str, model: bytes, info: dict) -> Path:
        """export/model.<fmt>, then its record in export.json (other formats' records are kept)."""
        info_path = self.export_dir / "export.json"
        records = read_json(info_path) if info_path.is_file() else {}
        records.pop(fmt, None)  # unfinished until the record is written again
        if info_path.is_file():
            write_json(info_path, records)
        path = self.export_path(fmt)
        atomic_write(path, model)
        write_json(info_path, {**records, fmt: info})
        return path

    def size(self) -> dict:
        return read_json(self.path / "size.json")

    @property
    def output(self) -> Path | None:
        """The variant's `<label>.output.csv` (None when it has none); several are an error."""
        return _one_output(self.path)

    @property
    def evaluation(self) -> EvaluationDir:
        """Its outputs on an unlabeled evaluation set (`dcase-effdl evaluate`)."""
        return EvaluationDir(self.path / "evaluation")

    @property
    def label(self) -> str | None:
        """The submission label the run gave this variant: the name of its output file."""
        output = self.output
        return output.name[: -len(OUTPUT_SUFFIX)] if output else None

    def write_results(self, label: str, metrics: dict, size: dict, filenames: list[str], probs, classes: list[str]) -> None:
        """size.json, `<label>.output.csv` and `.meta.yaml` (those of an older label go), then metrics.json."""
        from dcase_effdl.submission.files import write_meta_yaml, write_output_csv

        self.metrics_path.unlink(missing_ok=True)  # unfinished until the last file is written
        write_json(self.path / "size.json", size)
        write_output_csv(self.path / f"{label}{OUTPUT_SUFFIX}", filenames, probs, classes)
        write_meta_yaml(self.path / f"{label}{META_SUFFIX}", label, metrics, size)
        for old in [*self.path.glob("*" + OUTPUT_SUFFIX), *self.path.glob("*" + META_SUFFIX)]:
            if old.name not in (f"{label}{OUTPUT_SUFFIX}", f"{label}{META_SUFFIX}"):
                old.unlink()
        write_json(self.metrics_path, metrics)


def _one_output(folder: Path) -> Path | None:
    """The one `<label>.output.csv` in `folder` (None when there is none); several are an error."""
    found = sorted(folder.glob("*" + OUTPUT_SUFFIX))
    if len(found) > 1:
        raise UserError(f"{folder}: several outputs ({', '.join(p.name for p in found)}); keep the one "
                        "of the current label")
    return found[0] if found else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class EvaluationDir:
    """A variant's outputs on an unlabeled evaluation set: `<label>.output.csv` and `evaluation.json`.

    evaluation.json (written last; without it the folder is unfinished): `data` (the evaluation set's
    folder, absolute), `n_clips`, `label` and `model_sha256` (of the model file that made the outputs,
    so that a variant trained again is not submitted with its old outputs).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.info_path = self.path / "evaluation.json"

    @property
    def finished(self) -> bool:
        return self.info_path.is_file()

    @property
    def output(self) -> Path | None:
        return _one_output(self.path) if self.path.is_dir() else None

    def info(self) -> dict:
        info = read_json(self.info_path)
        for key in ("data", "n_clips", "label", "model_sha256"):
            if key not in info:
                raise UserError(f"{self.info_path}: missing key '{key}'")
        return info

    def write(self, label: str, filenames: list[str], probs, classes: list[str], data_root: str | Path,
              model_path: Path) -> Path:
        """`<label>.output.csv` (an older label's goes), then evaluation.json; returns the output's path."""
        from dcase_effdl.submission.files import write_output_csv

        self.info_path.unlink(missing_ok=True)
        output = write_output_csv(self.path / f"{label}{OUTPUT_SUFFIX}", filenames, probs, classes)
        for old in self.path.glob("*" + OUTPUT_SUFFIX):
            if old != output:
                old.unlink()
        write_json(self.info_path, {"data": str(Path(data_root).resolve()), "n_clips": len(filenames), "label": label,
                                    "model_sha256": file_sha256(model_path)})
        return output
