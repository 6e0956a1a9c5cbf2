"""Downloader against a local HTTP server: full download, interruption + resume, bad checksum."""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dcase_effdl.data import download
from dcase_effdl.data.download import DatasetSpec, RemoteFile
from dcase_effdl.errors import UserError

FOLDER = "TAU-test-dataset"


class _Server:
    """Serves `files` (name -> bytes) with Range support; `cut` (name -> [n_bytes, ...]) makes the
    k-th request for a name send only that many bytes of its body and then drop the connection;
    `extra` (name -> n_bytes) makes it announce no length and send that many more bytes after the
    body, counting in `sent` (name -> bytes) how many the client took before it hung up."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.cut: dict[str, list[int]] = {}
        self.extra: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.honour_range = True
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                name = self.path.lstrip("/").split("?")[0]
                rng = self.headers.get("Range")
                server.requests.append((name, rng))
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = 0
                if rng and server.honour_range:
                    start = int(re.fullmatch(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if name in server.extra:  # no length: the body ends when the connection closes
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.close_connection = True
                    stream = body + bytes(server.extra[name])
                    server.sent[name] = 0
                    try:
                        for i in range(0, len(stream), 1 << 16):
                            self.wfile.write(stream[i:i + (1 << 16)])
                            server.sent[name] += len(stream[i:i + (1 << 16)])
                    except OSError:  # the client hung up
                        pass
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                plan = server.cut.get(name)
                if plan:
                    n = plan.pop(0)
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _dataset_zips(seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    audio1 = {f"{FOLDER}/audio/clip-{i}.wav": rng.randbytes(40_000) for i in range(5)}
    audio2 = {f"{FOLDER}/audio/clip-{i}.wav": rng.randbytes(40_000) for i in range(5, 8)}
    meta = {f"{FOLDER}/meta.csv": b"filename\tscene_label\n", f"{FOLDER}/evaluation_setup/fold1_test.csv": b"filename\n"}
    return {
        "test.meta.zip": _zip(meta),
        "test.audio.1.zip": _zip(audio1),
        "test.audio.2.zip": _zip(audio2),
    }


def _spec(zips: dict[str, bytes], url: str = "http://invalid.example/") -> DatasetSpec:
    files = [
        RemoteFile(name, len(data), hashlib.md5(data).hexdigest(), "meta" if ".meta." in name else "audio")
        for name, data in zips.items()
    ]
    return DatasetSpec(name="test-set", title="test", url=url, folder=FOLDER, files=files)


FAST = dict(retry_wait_s=0.0, timeout_s=5.0, progress=False, check=False, log=lambda *_: None)


def test_catalog_lists_the_four_dcase2020_sets_with_real_sizes():
    catalog = download.load_catalog()
    assert set(catalog) == {
        "tau2020-3class-development", "tau2020-3class-evaluation",
        "tau2020-mobile-development", "tau2020-mobile-evaluation",
    }
    dev = catalog["tau2020-3class-development"]
    assert dev.zenodo_record == 3670185 and catalog["tau2020-3class-evaluation"].zenodo_record == 3685835
    audio = [f for f in dev.files if f.content == "audio"]
    assert len(audio) == 21  # the 21 audio zips of Zenodo record 3670185
    assert audio[0].name == "TAU-urban-acoustic-scenes-2020-3class-development.audio.1.zip"
    assert audio[0].size_bytes == 1657560336 and audio[0].md5 == "dab8b3564c1927eb8fc5906f61917ef9"
    assert len([f for f in catalog["tau2020-3class-evaluation"].files if f.content == "audio"]) == 13
    for spec in catalog.values():
        assert all(re.fullmatch(r"[0-9a-f]{32}", f.md5) for f in spec.files)
        assert len({f.name for f in spec.files}) == len(spec.files)
        assert spec.url.startswith("https://zenodo.org/records/")
    assert 35e9 < dev.size_bytes < 36e9


def test_download_verifies_and_extracts(tmp_path):
    zips = _dataset_zips()
    with _Server(zips) as server:
        root = download.download_dataset(_spec(zips), tmp_path, mirror=server.url, **FAST)
    assert root == tmp_path / FOLDER
    assert sorted(p.name for p in (root / "audio").iterdir()) == [f"clip-{i}.wav" for i in range(8)]
    assert (root / "meta.csv").read_bytes() == b"filename\tscene_label\n"
    assert all(rng is None for _, rng in server.requests)
    for name in zips:
        assert (tmp_path / "downloads" / f"{name}.extracted").exists()
    # A second run finds every zip extracted and asks the server for nothing.
    n_before = len(server.requests)
    download.download_dataset(_spec(zips), tmp_path, mirror="http://127.0.0.1:9/", **FAST)
    assert len(server.requests) == n_before


def test_interrupted_transfer_resumes_with_a_range_request(tmp_path):
    zips = _dataset_zips()
    name = "test.audio.1.zip"
    with _Server(zips) as server:
        server.cut[name] = [70_000, 50_000]  # two broken connections, then the rest
        download.download_dataset(_spec(zips), tmp_path, mirror=server.url, retries=3, **FAST)
    ranges = [rng for n, rng in server.requests if n == name]
    assert ranges == [None, "bytes=70000-", "bytes=120000-"]
    assert (tmp_path / FOLDER / "audio" / "clip-4.wav").read_bytes() == zipfile.ZipFile(
        io.BytesIO(zips[name])
    ).read(f"{FOLDER}/audio/clip-4.wav")


def test_interruption_without_retries_keeps_part_file_and_next_run_resumes(tmp_path):
    zips = _dataset_zips()
    name = "test.audio.2.zip"
    spec = _spec(zips)
    with _Server(zips) as server:
        server.cut[name] = [30_000]
        with pytest.raises(UserError, match=r"test.audio.2.zip: download interrupted after 30000 of \d+ bytes.*again to resume"):
            download.download_dataset(spec, tmp_path, mirror=server.url, retries=0, **FAST)
        part = tmp_path / "downloads" / f"{name}.part"
        assert part.stat().st_size == 30_000
        assert not (tmp_path / FOLDER / "audio" / "clip-5.wav").exists()
        download.download_dataset(spec, tmp_path, mirror=server.url, retries=0, **FAST)
    assert [rng for n, rng in server.requests if n == name] == [None, "bytes=30000-"]
    assert not part.exists()
    assert (tmp_path / FOLDER / "audio" / "clip-7.wav").stat().st_size == 40_000


def test_resume_of_an_existing_partial_file(tmp_path):
    zips = _dataset_zips()
    name = "test.audio.1.zip"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / f"{name}.part").write_bytes(zips[name][:12345])
    with _Server(zips) as server:
        download.download_dataset(_spec(zips), tmp_path, mirror=server.url, content=["audio"], **FAST)
    assert [rng for n, rng in server.requests if n == name] == ["bytes=12345-"]
    assert (tmp_path / FOLDER / "audio" / "clip-0.wav").exists()
    assert not (tmp_path / FOLDER / "meta.csv").exists()  # content=audio only


def test_server_ignoring_range_restarts_from_zero(tmp_path):
    zips = _dataset_zips()
    name = "test.audio.1.zip"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / f"{name}.part").write_bytes(b"x" * 1000)  # garbage that a 200 answer must overwrite
    with _Server(zips) as server:
        server.honour_range = False
        download.download_dataset(_spec(zips), tmp_path, mirror=server.url, content=["audio"], **FAST)
    assert (tmp_path / FOLDER / "audio" / "clip-0.wav").exists()


def test_wrong_checksum_names_the_file_and_extracts_nothing(tmp_path):
    zips = _dataset_zips()
    spec = _spec(zips)
    bad = spec.files[1]
    bad.md5 = "0" * 32
    with _Server(zips) as server:
        with pytest.raises(UserError, match=rf"{re.escape(bad.name)}: MD5 checksum [0-9a-f]{{32}} does not match the expected 0{{32}}"):
            download.download_dataset(spec, tmp_path, mirror=server.url, **FAST)
    assert not (tmp_path / "downloads" / bad.name).exists()
    assert not (tmp_path / "downloads" / f"{bad.name}.extracted").exists()
    assert not (tmp_path / FOLDER / "audio").exists()  # the first audio zip was the bad one


def test_size_mismatch_reported_before_downloading(tmp_path):
    zips = _dataset_zips()
    spec = _spec(zips)
    spec.files[0].size_bytes += 1
    with _Server(zips) as server:
        with pytest.raises(UserError, match=r"server reports \d+ bytes, the file list expects \d+"):
            download.download_dataset(spec, tmp_path, mirror=server.url, **FAST)


class _SizeWatch:
    """Records the largest size every file opened through it reaches (download.py's `open`)."""

    def __init__(self):
        self.largest: dict[str, int] = {}

    def open(self, path, mode="r", *args, **kwargs):
        fh = open(path, mode, *args, **kwargs)
        if "b" in mode and ("w" in mode or "a" in mode):
            write = fh.write

            def tracked(data):
                n = write(data)
                self.largest[Path(path).name] = max(self.largest.get(Path(path).name, 0), fh.tell())
                return n

            fh.write = tracked
        return fh


def test_server_sending_more_than_the_file_is_stopped_at_its_size(tmp_path, monkeypatch):
    """The issue's case: 50 MB streamed, no length announced, for a file of 1,226 bytes."""
    meta = b"filename\tscene_label\n" + b"audio/a.wav\tindoor\n" * 53 + b"audio/" + b"b" * 32 + b".wav\tindoor\n"
    zips = {"small.meta.zip": _zip({f"{FOLDER}/meta.csv": meta})}
    size = len(zips["small.meta.zip"])
    assert size == 1226
    spec = _spec(zips)
    watch = _SizeWatch()
    monkeypatch.setattr(download, "open", watch.open, raising=False)  # the module's open, not everyone's
    part = tmp_path / "downloads" / "small.meta.zip.part"
    with _Server(zips) as server:
        server.extra["small.meta.zip"] = 50_000_000
        with pytest.raises(UserError) as info:
            download.download_dataset(spec, tmp_path, mirror=server.url, **FAST)
        assert str(info.value) == (
            f"{server.url}small.meta.zip: server sent more than the {size} bytes the file list expects "
            f"({download.CHUNK_BYTES} received); stopped and deleted the partial file, run again to download it anew")
        assert watch.largest.get("small.meta.zip.part", 0) <= size  # never a byte past the expected size
        assert not part.exists()
        assert server.sent["small.meta.zip"] < 50_000_000 // 4  # it hung up, it did not take the 50 MB
        # The same on a resumed download: the Range answer carries more than the rest of the file.
        part.write_bytes(zips["small.meta.zip"][:500])
        with pytest.raises(UserError, match=rf"more than the {size} bytes the file list expects \({500 + download.CHUNK_BYTES} received\)"):
            download.download_dataset(spec, tmp_path, mirror=server.url, **FAST)
        assert watch.largest.get("small.meta.zip.part", 0) <= size and not part.exists()
        # A server that behaves again: a correct resume from a partial file still works.
        del server.extra["small.meta.zip"]
        part.write_bytes(zips["small.meta.zip"][:700])
        download.download_dataset(spec, tmp_path, mirror=server.url, **FAST)
    assert server.requests[-1] == ("small.meta.zip", "bytes=700-")
    assert watch.largest["small.meta.zip.part"] == size  # the watch sees the writes it bounds above
    assert (tmp_path / FOLDER / "meta.csv").read_bytes() == meta


def test_mirror_from_environment_and_zip_slip_refused(tmp_path, monkeypatch):
    evil = {"evil.meta.zip": _zip({"../outside.txt": b"no"})}
    spec = _spec(evil)
    with _Server(evil) as server:
        monkeypatch.setenv(download.MIRROR_ENV, server.url)
        assert download.resolve_base_url(spec, None) == server.url
        with pytest.raises(UserError, match="would be written outside"):
            download.download_dataset(spec, tmp_path / "to", **FAST)
    assert not (tmp_path / "outside.txt").exists()


def test_catalog_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "list.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match=r"list.json: malformed JSON"):
        download.load_catalog(bad)
    bad.write_text(json.dumps({"datasets": {"x": {"url": "u", "folder": "f", "files": [{"name": "a.zip"}]}}}))
    with pytest.raises(UserError, match=r"list.json: dataset 'x': malformed entry"):
        download.load_catalog(bad)


def _tau_zips(drop: str | None = None) -> dict[str, bytes]:
    """A 3-clip dataset in the TAU 2020 3Class layout, as meta + audio zips (optionally missing a clip)."""
    names = ["airport-lisbon-1000-40000-a", "park-paris-12-400-a", "tram-vienna-7-100-a"]
    labels = ["indoor", "outdoor", "transportation"]
    meta = "filename\tscene_label\tidentifier\tsource_label\n" + "".join(
        f"audio/{n}.wav\t{lab}\t{'-'.join(n.split('-')[1:3])}\ta\n" for n, lab in zip(names, labels)
    )
    fold = "filename\tscene_label\n" + "".join(f"audio/{n}.wav\t{lab}\n" for n, lab in zip(names, labels))
    test = "filename\n" + "".join(f"audio/{n}.wav\n" for n in names)
    setup = f"{FOLDER}/evaluation_setup"
    audio = {f"{FOLDER}/audio/{n}.wav": random.Random(n).randbytes(2000) for n in names if n != drop}
    return {
        "tau.meta.zip": _zip({f"{FOLDER}/meta.csv": meta.encode(), f"{setup}/fold1_train.csv": fold.encode(),
                              f"{setup}/fold1_evaluate.csv": fold.encode(), f"{setup}/fold1_test.csv": test.encode()}),
        "tau.audio.1.zip": _zip(audio),
    }


def _write_catalog(path: Path, zips: dict[str, bytes]) -> Path:
    spec = _spec(zips)
    entry = {"title": "t", "url": "http://invalid.example/", "folder": FOLDER, "files": [
        {"name": f.name, "size_bytes": f.size_bytes, "md5": f.md5, "content": f.content} for f in spec.files]}
    path.write_text(json.dumps({"datasets": {"tiny": entry}}))
    return path


def test_cli_download_ends_with_the_layout_check(tmp_path, capsys):
    from dcase_effdl.cli import main

    zips = _tau_zips()
    catalog = _write_catalog(tmp_path / "list.json", zips)
    with _Server(zips) as server:
        rc = main(["download", "tiny", "--to", str(tmp_path / "data"), "--mirror", server.url, "--catalog", str(catalog)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "layout check: 3 clips, all audio files present" in out
    assert f"dataset root: {tmp_path / 'data' / FOLDER}" in out


def test_cli_download_reports_missing_audio_after_extraction(tmp_path, capsys):
    from dcase_effdl.cli import main

    zips = _tau_zips(drop="park-paris-12-400-a")
    catalog = _write_catalog(tmp_path / "list.json", zips)
    with _Server(zips) as server:
        rc = main(["download", "tiny", "--to", str(tmp_path / "data"), "--mirror", server.url, "--catalog", str(catalog)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: 1 of 3 audio files missing") and "audio/park-paris-12-400-a.wav" in err
    assert len(err.strip().splitlines()) == 1


def test_evaluation_set_download_checks_the_test_fold_only(tmp_path, capsys):
    names = [f"audio/{i}.wav" for i in range(3)]
    zips = {
        "ev.meta.zip": _zip({f"{FOLDER}/evaluation_setup/fold1_test.csv": ("filename\n" + "".join(n + "\n" for n in names)).encode()}),
        "ev.audio.1.zip": _zip({f"{FOLDER}/{n}": b"RIFF" for n in names}),
    }
    spec = _spec(zips)
    spec.labels = False
    with _Server(zips) as server:
        root = download.download_dataset(spec, tmp_path, mirror=server.url, **{**FAST, "check": True, "log": print})
    assert "layout check: 3 clips, all audio files present" in capsys.readouterr().out
    (root / "audio" / "1.wav").unlink()
    with pytest.raises(UserError, match=r"1 of 3 audio files missing .*audio/1.wav"):
        download._layout_check(root, False, print)
