"""Download, verify and extract the official DCASE datasets: `dcase-effdl download NAME --to DIR`.

The file lists (names, sizes in bytes, MD5 checksums) are package data: `dcase_effdl/data/downloads.json`.
Each zip is fetched into `DIR/downloads/NAME.part`, resumed with an HTTP Range request after an
interruption (in this run or a later one), renamed to `NAME` only when complete, checked against its
MD5, and extracted into `DIR`. A `NAME.extracted` stamp marks a finished zip so a rerun skips it.
The base URL can point at a mirror: `--mirror URL` or the `DCASE_EFFDL_MIRROR` environment variable.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tqdm import tqdm

from dcase_effdl.errors import UserError

MIRROR_ENV = "DCASE_EFFDL_MIRROR"
CHUNK_BYTES = 1 << 20
CONTENT_TYPES = ("documentation", "meta", "audio")


@dataclass
class RemoteFile:
    name: str
    size_bytes: int
    md5: str
    content: str  # documentation | meta | audio


@dataclass
class DatasetSpec:
    name: str  # catalogue key, e.g. tau2020-3class-development
    title: str
    url: str  # base URL; a file's URL is url + file name
    folder: str  # the zips extract into this folder: the dataset root
    files: list[RemoteFile]
    labels: bool = True
    zenodo_record: int | None = None
    task: str = ""
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


def _spec_from_dict(name: str, data: dict, source: str) -> DatasetSpec:
    try:
        files = [
            RemoteFile(str(f["name"]), int(f["size_bytes"]), str(f["md5"]).lower(), str(f["content"]))
            for f in data["files"]
        ]
        spec = DatasetSpec(
            name=name,
            title=str(data.get("title", name)),
            url=str(data["url"]),
            folder=str(data["folder"]),
            files=files,
            labels=bool(data.get("labels", True)),
            zenodo_record=data.get("zenodo_record"),
            task=str(data.get("task", "")),
            note=str(data.get("note", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{source}: dataset '{name}': malformed entry ({exc!r})") from None
    for f in spec.files:
        if f.content not in CONTENT_TYPES:
            raise UserError(f"{source}: dataset '{name}': {f.name}: unknown content '{f.content}'")
        if "/" in f.name or "\\" in f.name or f.name.startswith("."):
            raise UserError(f"{source}: dataset '{name}': file name '{f.name}' must be a plain name")
        if f.md5 is None or len(f.md5) != 32:
            raise UserError(f"{source}: dataset '{name}': {f.name}: md5 must be 32 hex digits")
    return spec


def load_catalog(path: str | Path | None = None) -> dict[str, DatasetSpec]:
    """The downloadable datasets by name: the package's list, or a JSON file in the same format."""
    if path is None:
        text = resources.files("dcase_effdl.data").joinpath("downloads.json").read_text(encoding="utf-8")
        source = "dcase_effdl/data/downloads.json"
    else:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        text, source = path.read_text(encoding="utf-8"), str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{source}: malformed JSON (line {exc.lineno}): {exc.msg}") from None
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise UserError(f"{source}: expected a mapping with a 'datasets' mapping")
    return {name: _spec_from_dict(name, entry, source) for name, entry in data["datasets"].items()}


def format_catalog(catalog: dict[str, DatasetSpec]) -> str:
    lines = []
    for name, spec in catalog.items():
        gb = spec.size_bytes / 1e9
        record = f", Zenodo {spec.zenodo_record}" if spec.zenodo_record else ""
        lines.append(f"{name:30s} {len(spec.files):3d} files {gb:6.1f} GB  {spec.title}{record}")
    return "\n".join(lines)


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- one file, resumable


class _Interrupted(Exception):
    """The connection broke before the whole file arrived; the .part file keeps what came."""


def _fetch_once(url: str, part: Path, size_bytes: int, timeout_s: float, bar: tqdm | None) -> None:
    """Append the rest of `url` to `part` (Range request when `part` has bytes already)."""
    have = part.stat().st_size if part.exists() else 0
    if have > size_bytes:  # not ours or from another version of the file: start again
        part.unlink()
        have = 0
    if have == size_bytes:
        return
    request = urllib.request.Request(url, headers={"User-Agent": "dcase-effdl"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part file may be complete already
            return
        raise UserError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Interrupted(f"cannot connect ({reason})") from None
    with response:
        if have and response.status == 200:  # the server ignored the Range header: start over
            have = 0
            if bar is not None:
                bar.reset(total=size_bytes)
        elif response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            start = content_range.split(" ")[-1].split("-")[0] if content_range else ""
            if start != str(have):
                raise UserError(f"{url}: server answered range '{content_range}', asked for bytes={have}-")
        # The full file size the server announces: after the '/' of Content-Range for 206, else Content-Length.
        if response.status == 206:
            announced = response.headers.get("Content-Range", "").rpartition("/")[2]
        else:
            announced = response.headers.get("Content-Length", "")
        announced = int(announced) if announced.isdigit() else None
        if announced is not None and announced != size_bytes:
            raise UserError(f"{url}: server reports {announced} bytes, the file list expects {size_bytes}")
        received = None  # set when the server sends more than the file can have
        with open(part, "ab" if have else "wb") as out:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (http.client.IncompleteRead, OSError) as exc:
                    raise _Interrupted(f"connection lost ({type(exc).__name__})") from None
                if not chunk:
                    break
                # A server that announces no length may send anything: stop before writing a byte past
                # the expected size (one such server streamed 50 MB for a 1,226-byte file, all written).
                if have + len(chunk) > size_bytes:
                    received = have + len(chunk)
                    break
                out.write(chunk)
                have += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        if received is not None:
            part.unlink()
            raise UserError(f"{url}: server sent more than the {size_bytes} bytes the file list expects "
                            f"({received} received); stopped and deleted the partial file, run again to download it anew")
    if part.stat().st_size < size_bytes:
        raise _Interrupted(f"connection closed after {part.stat().st_size} of {size_bytes} bytes")


def fetch_file(
    url: str,
    target: Path,
    size_bytes: int,
    md5: str,
    *,
    retries: int = 5,
    timeout_s: float = 60.0,
    retry_wait_s: float = 2.0,
    progress: bool = True,
) -> Path:
    """Download `url` to `target` (via `target.part`, resuming), then check size and MD5.

    A wrong checksum deletes the downloaded file and raises a UserError naming it.
    """
    target = Path(target)
    part = target.with_name(target.name + ".part")
    if not target.exists():
        have = part.stat().st_size if part.exists() else 0
        bar = tqdm(
            total=size_bytes, initial=min(have, size_bytes), unit="B", unit_scale=True, unit_divisor=1024,
            desc=target.name, disable=not progress or not sys.stderr.isatty(), leave=False,
        )
        with bar:
            for attempt in range(retries + 1):
                try:
                    _fetch_once(url, part, size_bytes, timeout_s, bar)
                    break
                except _Interrupted as exc:
                    if attempt == retries:
                        got = part.stat().st_size if part.exists() else 0
                        raise UserError(
                            f"{target.name}: download interrupted after {got} of {size_bytes} bytes "
                            f"({exc}); run the same command again to resume"
                        ) from None
                    time.sleep(retry_wait_s * (attempt + 1))
        os.replace(part, target)
    size = target.stat().st_size
    if size != size_bytes:
        target.unlink()
        raise UserError(f"{target}: {size} bytes, expected {size_bytes}; deleted, run again to download it anew")
    got = file_md5(target)
    if got != md5.lower():
        target.unlink()
        raise UserError(f"{target}: MD5 checksum {got} does not match the expected {md5}; deleted, nothing extracted")
    return target


# ---------------------------------------------------------------- extraction


def extract_zip(zip_path: Path, to: Path, progress: bool = True) -> int:
    """Extract `zip_path` into `to`; refuses members that would land outside `to`. Returns the member count."""
    to = Path(to).resolve()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            for member in members:
                dest = (to / member.filename).resolve()
                if dest != to and to not in dest.parents:
                    raise UserError(f"{zip_path}: member '{member.filename}' would be written outside {to}")
            for member in tqdm(
                members, desc=f"extract {zip_path.name}", unit="file", leave=False,
                disable=not progress or not sys.stderr.isatty(),
            ):
                archive.extract(member, to)
    except zipfile.BadZipFile as exc:
        raise UserError(f"{zip_path}: not a valid zip file ({exc})") from None
    return len(members)


# ---------------------------------------------------------------- a whole dataset


def resolve_base_url(spec: DatasetSpec, mirror: str | None) -> str:
    """The URL prefix the files are fetched from: `mirror`, $DCASE_EFFDL_MIRROR, or the official one."""
    base = mirror or os.environ.get(MIRROR_ENV) or spec.url
    return base if base.endswith("/") else base + "/"


def _stamp(zip_path: Path) -> Path:
    return zip_path.with_name(zip_path.name + ".extracted")


def _check_space(folder: Path, needed_bytes: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise UserError(
            f"{folder}: {free / 1e9:.1f} GB free, the download and extraction need about "
            f"{needed_bytes / 1e9:.1f} GB (use --no-space-check to try anyway)"
        )


def download_dataset(
    spec: DatasetSpec,
    to: str | Path,
    *,
    mirror: str | None = None,
    content: tuple[str, ...] | list[str] | None = None,
    delete_zips: bool = False,
    retries: int = 5,
    timeout_s: float = 60.0,
    retry_wait_s: float = 2.0,
    space_check: bool = True,
    check: bool = True,
    progress: bool = True,
    log=print,
) -> Path:
    """Download, verify and extract `spec` into `to`; returns the dataset root `to/spec.folder`.

    `content` limits the packages (documentation, meta, audio); the layout check runs only when
    meta and audio were both requested and `check` is true.
    """
    to = Path(to)
    wanted = tuple(content) if content else CONTENT_TYPES
    unknown = sorted(set(wanted) - set(CONTENT_TYPES))
    if unknown:
        raise UserError(f"--content: unknown content {unknown}; choose from {', '.join(CONTENT_TYPES)}")
    files = [f for f in spec.files if f.content in wanted]
    downloads = to / "downloads"
    base = resolve_base_url(spec, mirror)

    todo = [f for f in files if not _stamp(downloads / f.name).exists()]
    if space_check and todo:
        needed = 0
        for f in todo:
            target = downloads / f.name
            part = target.with_name(target.name + ".part")
            have = target.stat().st_size if target.exists() else (part.stat().st_size if part.exists() else 0)
            needed += (f.size_bytes - have) + f.size_bytes  # rest of the zip + its extracted content
        _check_space(to, needed)
    downloads.mkdir(parents=True, exist_ok=True)

    log(f"{spec.name}: {len(files)} files, {sum(f.size_bytes for f in files) / 1e9:.2f} GB from {base}")
    for i, f in enumerate(files, 1):
        target = downloads / f.name
        if _stamp(target).exists():
            log(f"[{i}/{len(files)}] {f.name}: already extracted")
            continue
        fetch_file(
            base + f.name, target, f.size_bytes, f.md5,
            retries=retries, timeout_s=timeout_s, retry_wait_s=retry_wait_s, progress=progress,
        )
        n_members = extract_zip(target, to, progress=progress)
        _stamp(target).write_text(f"{f.md5}\n", encoding="utf-8")
        if delete_zips:
            target.unlink()
        log(f"[{i}/{len(files)}] {f.name}: MD5 ok, {n_members} files extracted")

    root = to / spec.folder
    if not root.is_dir():
        raise UserError(f"{root}: expected the zips to create this folder; check the file list of '{spec.name}'")
    if check and {"meta", "audio"} <= set(wanted):
        _layout_check(root, spec.labels, log)
    log(f"dataset root: {root}")
    return root


def _layout_check(root: Path, labels: bool, log) -> None:
    """The same check `run` does before training: metadata readable and every listed audio file present.

    Evaluation sets (`labels` false) ship only evaluation_setup/fold1_test.csv, maybe no meta.csv.
    """
    from dcase_effdl.data import dataset  # late import: the downloader has no other use for it

    folds = dataset.FOLDS if labels else ("test",)
    ds = dataset.load_dataset(root, folds=folds)
    dataset.check_layout(ds, folds=None if labels else folds)
    log(f"layout check: {len(ds.clips)} clips, all audio files present")
