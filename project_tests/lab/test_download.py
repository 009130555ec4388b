"""The downloader against a local HTTP server on 127.0.0.1: resume, size checks, gunzip, atomic results."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import random
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from cs336_lab.download import DATASETS, DownloadError, download_dataset, fetch

TS_TRAIN = DATASETS["tinystories"]["train"].path
TS_VALID = DATASETS["tinystories"]["valid"].path
OWT_TRAIN = DATASETS["owt"]["train"].path
OWT_VALID = DATASETS["owt"]["valid"].path


def _text(seed: int, size: int) -> bytes:
    rng = random.Random(seed)
    words = ["once", "upon", "a", "time", "cat", "dog", "ran", "<|endoftext|>\n", "the", "sun"]
    out = " ".join(rng.choice(words) for _ in range(size // 3)).encode()
    return out[:size]


@dataclass
class Server:
    """Serves `files` under `url`; `mode` "range" (honours Range), "norange" (always 200) or "truncate"
    (announces the full length, sends half, closes). `requests` records (path, Range header)."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    mode: str = "range"
    requests: list[tuple[str, str | None]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def do_GET(self):
            path = self.path.lstrip("/")
            state.requests.append((path, self.headers.get("Range")))
            body = state.files.get(path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if match and state.mode != "norange":
                start = int(match.group(1))
                if start >= len(body):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            chunk = body[start:]
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            if state.mode == "truncate":
                chunk = chunk[: len(chunk) // 2]
                self.close_connection = True
            self.wfile.write(chunk)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_download_tinystories(server, tmp_path):
    server.files = {TS_TRAIN: _text(0, 300_000), TS_VALID: _text(1, 5_000)}
    paths = download_dataset("tinystories", tmp_path, base_url=server.url + "/", timeout=10)
    assert [p.name for p in paths] == ["TinyStoriesV2-GPT4-train.txt", "TinyStoriesV2-GPT4-valid.txt"]
    assert paths[0].read_bytes() == server.files[TS_TRAIN]
    assert paths[1].read_bytes() == server.files[TS_VALID]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no .part left
    # a second call finds the files and asks the server nothing
    n = len(server.requests)
    download_dataset("tinystories", tmp_path, base_url=server.url, timeout=10)
    assert len(server.requests) == n


def test_resume_from_partial_file(server, tmp_path):
    body = _text(2, 100_000)
    server.files = {"f.txt": body}
    (tmp_path / "f.txt.part").write_bytes(body[:40_000])
    fetch(f"{server.url}/f.txt", tmp_path / "f.txt", timeout=10)
    assert server.requests == [("f.txt", "bytes=40000-")]
    assert (tmp_path / "f.txt").read_bytes() == body
    assert not (tmp_path / "f.txt.part").exists()


def test_complete_part_file_is_finished_without_data(server, tmp_path):
    body = _text(3, 1_000)
    server.files = {"f.txt": body}
    (tmp_path / "f.txt.part").write_bytes(body)
    fetch(f"{server.url}/f.txt", tmp_path / "f.txt", timeout=10)  # the server answers 416
    assert (tmp_path / "f.txt").read_bytes() == body


def test_part_file_longer_than_remote_is_an_error(server, tmp_path):
    server.files = {"f.txt": _text(3, 1_000)}
    (tmp_path / "f.txt.part").write_bytes(b"x" * 2_000)
    with pytest.raises(DownloadError, match="delete it to start over"):
        fetch(f"{server.url}/f.txt", tmp_path / "f.txt", timeout=10)
    assert not (tmp_path / "f.txt").exists()


def test_server_without_range_support_restarts(server, tmp_path):
    body = _text(4, 50_000)
    server.files, server.mode = {"f.txt": body}, "norange"
    (tmp_path / "f.txt.part").write_bytes(b"garbage that must not survive")
    fetch(f"{server.url}/f.txt", tmp_path / "f.txt", timeout=10)
    assert (tmp_path / "f.txt").read_bytes() == body


def test_interrupted_transfer_keeps_part_and_resumes(server, tmp_path):
    body = _text(5, 200_000)
    server.files, server.mode = {"f.txt": body}, "truncate"
    with pytest.raises(DownloadError, match="run again to resume"):
        fetch(f"{server.url}/f.txt", tmp_path / "f.txt", timeout=10)
    assert not (tmp_path / "f.txt").exists()  # never a half-written final file
    part = (tmp_path / "f.txt.part").read_bytes()
    assert 0 < len(part) < len(body) and body.startswith(part)
    server.mode = "range"
    fetch(f"{server.url}/f.txt", tmp_path / "f.txt", timeout=10)
    assert (tmp_path / "f.txt").read_bytes() == body
    assert server.requests[-1] == ("f.txt", f"bytes={len(part)}-")


def test_size_mismatch_is_an_error(server, tmp_path):
    server.files = {"f.txt": _text(6, 10_000)}
    with pytest.raises(DownloadError, match="expected 12345 bytes, server reports 10000"):
        fetch(f"{server.url}/f.txt", tmp_path / "f.txt", expected_size=12_345, timeout=10)
    assert not (tmp_path / "f.txt").exists()


def test_checksum(server, tmp_path):
    body = _text(7, 10_000)
    server.files = {"f.txt": body}
    with pytest.raises(DownloadError, match="sha256"):
        fetch(f"{server.url}/f.txt", tmp_path / "f.txt", sha256="0" * 64, timeout=10)
    assert list(tmp_path.iterdir()) == []
    fetch(f"{server.url}/f.txt", tmp_path / "f.txt", sha256=hashlib.sha256(body).hexdigest(), timeout=10)
    assert (tmp_path / "f.txt").read_bytes() == body


def test_http_error_names_status_and_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"missing.txt failed: HTTP 404"):
        fetch(f"{server.url}/missing.txt", tmp_path / "missing.txt", timeout=10)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("keep", [False, True], ids=["drop-gz", "keep-gz"])
def test_owt_is_gunzipped(server, tmp_path, keep):
    train, valid = _text(8, 120_000), _text(9, 3_000)
    server.files = {OWT_TRAIN: gzip.compress(train), OWT_VALID: gzip.compress(valid)}
    paths = download_dataset("owt", tmp_path, base_url=server.url, keep_compressed=keep, timeout=10)
    assert [p.name for p in paths] == ["owt_train.txt", "owt_valid.txt"]
    assert paths[0].read_bytes() == train and paths[1].read_bytes() == valid
    expected = {"owt_train.txt", "owt_valid.txt"} | ({"owt_train.txt.gz", "owt_valid.txt.gz"} if keep else set())
    assert {p.name for p in tmp_path.iterdir()} == expected


def test_corrupt_gzip_leaves_no_text_file(server, tmp_path):
    server.files = {OWT_VALID: b"\x1f\x8b this is not really gzip"}
    with pytest.raises(DownloadError, match="not a valid gzip"):
        download_dataset("owt", tmp_path, splits=["valid"], base_url=server.url, timeout=10)
    assert not (tmp_path / "owt_valid.txt").exists()
    assert not (tmp_path / "owt_valid.txt.tmp").exists()


@pytest.mark.parametrize(
    "kwargs, words",
    [({"name": "wiki"}, ["wiki", "tinystories"]), ({"name": "owt", "splits": ["test"]}, ["test", "train"])],
    ids=["dataset", "split"],
)
def test_bad_names(tmp_path, kwargs, words):
    name = kwargs.pop("name")
    with pytest.raises(ValueError) as info:
        download_dataset(name, tmp_path, **kwargs)
    assert all(w in str(info.value) for w in words)


def test_cli_download(server, tmp_path, capsys):
    from cs336_lab.cli import main

    server.files = {OWT_VALID: gzip.compress(b"hello <|endoftext|> world")}
    out = tmp_path / "owt"
    assert main(["-q", "download", "owt", "--split", "valid", "--out", str(out), "--base-url", server.url]) == 0
    assert (out / "owt_valid.txt").read_bytes() == b"hello <|endoftext|> world"
    # a network failure exits 1 with one line, no traceback
    assert main(["download", "owt", "--out", str(tmp_path / "x"), "--base-url", server.url]) == 1
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "Traceback" not in err
