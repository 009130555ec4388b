"""Download the real corpora (TinyStories, an OpenWebText sample) with resume, size checks and gunzip.

``cs336 download tinystories`` writes ``data/tinystories/TinyStoriesV2-GPT4-{train,valid}.txt``;
``cs336 download owt`` writes ``data/owt/owt_{train,valid}.txt``. Each file is fetched into ``NAME.part``
(an interrupted download resumes from there with an HTTP ``Range`` request), its size is checked against the
server's ``Content-Length`` (``fetch`` also takes a known size or sha256), ``.gz`` files are decompressed, and
the final name appears only at the end, by an atomic rename: a file with the final name is always complete.
Only the standard library is used (``urllib``); the base URL can be changed, e.g. for a mirror or a test server.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cs336_common.atomic import atomic_open, commit, prepare_directory

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://huggingface.co/datasets"
CHUNK_SIZE = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """A file of a dataset: its path under the base URL."""

    path: str

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def final_name(self) -> str:
        """The name on disk after decompression: ``owt_train.txt.gz`` -> ``owt_train.txt``."""
        return self.filename.removesuffix(".gz")


DATASETS: dict[str, dict[str, RemoteFile]] = {
    "tinystories": {
        "train": RemoteFile("roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt"),
        "valid": RemoteFile("roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt"),
    },
    "owt": {
        "train": RemoteFile("stanford-cs336/owt-sample/resolve/main/owt_train.txt.gz"),
        "valid": RemoteFile("stanford-cs336/owt-sample/resolve/main/owt_valid.txt.gz"),
    },
}


class DownloadError(OSError):
    """The transfer failed or its result is wrong (size, checksum, corrupt gzip); any ``.part`` file is kept."""


def _content_range_total(header: str | None) -> int | None:
    """``"bytes 100-199/1000"`` or ``"bytes */1000"`` -> 1000.

    >>> _content_range_total("bytes 100-199/1000"), _content_range_total(None)
    (1000, None)
    """
    match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", (header or "").strip())
    return int(match.group(1)) if match else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    *,
    expected_size: int | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest`` byte for byte, resuming ``dest.part`` if a previous attempt left one.

    Returns ``dest``. Raises ``DownloadError`` (an ``OSError``) when the server fails, the transfer ends early
    (the ``.part`` stays for the next attempt), or the size/sha256 differ from what is expected.
    """
    dest = Path(dest)
    if dest.exists() and (expected_size is None or dest.stat().st_size == expected_size):
        logger.info("%s already exists, skipping", dest)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:
        logger.warning("%s is larger than the expected %d bytes; starting over", part, expected_size)
        part.unlink()
        offset = 0
    response, total = _request(url, part, offset, timeout)
    if response is not None:
        with response:
            total = _receive(response, url, part, offset, expected_size)
    _check_and_commit(part, dest, expected_size if expected_size is not None else total, sha256)
    return dest


def _request(url: str, part: Path, offset: int, timeout: float) -> tuple[Any, int | None]:
    """Open ``url`` from byte ``offset``: (response, None), or (None, total) when the part is already whole."""
    request = urllib.request.Request(url, headers={"User-Agent": "cs336-basics"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout), None
    except urllib.error.HTTPError as err:
        total = _content_range_total(err.headers.get("Content-Range")) if err.headers else None
        if err.code == 416 and total is not None and total == offset:  # the part was already complete
            return None, total
        if err.code == 416:  # the partial file does not fit the remote file (it changed?)
            raise DownloadError(f"GET {url}: {part} does not match the remote file; delete it to start over") from None
        raise DownloadError(f"GET {url} failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, TimeoutError) as err:
        raise DownloadError(f"GET {url} failed: {getattr(err, 'reason', err)}") from None


def _receive(response: Any, url: str, part: Path, offset: int, expected_size: int | None) -> int | None:
    """Append (206) or write afresh (200) the response body to ``part``; return the remote size if known."""
    status = response.status
    if status == 206:
        total = _content_range_total(response.headers.get("Content-Range"))
        start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if start is None or int(start.group(1)) != offset:
            raise DownloadError(f"GET {url}: asked for bytes from {offset}, got {start and start.group(0)!r}")
        mode = "ab"
        logger.info("resuming %s at %.1f MB", part.name, offset / 1e6)
    elif status == 200:
        length = response.headers.get("Content-Length")
        total, mode, offset = (int(length) if length is not None else None), "wb", 0  # no resume: start over
    else:
        raise DownloadError(f"GET {url}: unexpected HTTP status {status}")
    if expected_size is not None and total is not None and total != expected_size:
        raise DownloadError(f"{url}: expected {expected_size} bytes, server reports {total}")
    _stream(response, part, mode, offset, total)
    return total


def _check_and_commit(part: Path, dest: Path, want: int | None, sha256: str | None) -> None:
    """Check the finished ``part`` against the expected size and sha256, then rename it to ``dest``."""
    size = part.stat().st_size
    if want is not None and size != want:
        raise DownloadError(
            f"{dest.name}: expected {want} bytes, got {size} (partial file kept at {part}; run again to resume)"
        )
    if sha256 is not None and (actual := _sha256(part)) != sha256.lower():
        part.unlink()
        raise DownloadError(f"{dest.name}: expected sha256 {sha256}, got {actual} (deleted the download)")
    commit(part, dest, sync_file=True)  # the .part was appended to over several runs, never fsynced
    logger.info("downloaded %s (%.1f MB)", dest, size / 1e6)


def _stream(response, part: Path, mode: str, offset: int, total: int | None) -> None:
    """Append the response body to ``part``, logging progress every few seconds."""
    done, last_log = offset, time.monotonic()
    try:
        with open(part, mode) as f:
            while chunk := response.read(CHUNK_SIZE):
                f.write(chunk)
                done += len(chunk)
                if time.monotonic() - last_log > 5:
                    last_log = time.monotonic()
                    pct = f" ({100 * done / total:.0f}%)" if total else ""
                    logger.info("%s: %.1f MB%s", part.name, done / 1e6, pct)
    except (OSError, EOFError) as err:  # http.client.IncompleteRead, reset connection, timeout ...
        raise DownloadError(
            f"{part.name}: transfer interrupted after {done} bytes ({err!r}); run again to resume"
        ) from None


def gunzip(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Decompress ``src`` into ``dest`` atomically (``dest`` appears only once complete)."""
    src, dest = Path(src), Path(dest)
    try:
        with gzip.open(src, "rb") as fin, atomic_open(dest, "wb") as fout:
            shutil.copyfileobj(fin, fout, CHUNK_SIZE)
    except (OSError, EOFError, zlib.error) as err:
        raise DownloadError(f"{src} is not a valid gzip file ({err})") from None
    return dest


def download_dataset(
    name: str,
    out_dir: str | os.PathLike[str],
    *,
    splits: Sequence[str] = ("train", "valid"),
    base_url: str = DEFAULT_BASE_URL,
    keep_compressed: bool = False,
    timeout: float = 60.0,
) -> list[Path]:
    """Download (and decompress) the given splits of ``name`` into ``out_dir``; returns the final text files."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    files = DATASETS[name]
    unknown = [s for s in splits if s not in files]
    if unknown:
        raise ValueError(f"unknown split(s) {', '.join(unknown)} for {name}; expected some of {', '.join(files)}")
    out = prepare_directory(out_dir, "--out")
    results = []
    for split in splits:
        remote = files[split]
        final = out / remote.final_name
        if final.exists():
            logger.info("%s already exists, skipping", final)
            results.append(final)
            continue
        url = base_url.rstrip("/") + "/" + remote.path
        logger.info("downloading %s", url)
        raw = fetch(url, out / remote.filename, timeout=timeout)
        if raw != final:
            logger.info("decompressing %s", raw.name)
            gunzip(raw, final)
            if not keep_compressed:
                raw.unlink()
        results.append(final)
    return results


def _run(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None else Path("data") / args.dataset
    for path in download_dataset(
        args.dataset, out, splits=args.split, base_url=args.base_url, keep_compressed=args.keep_compressed
    ):
        logger.info("ready: %s", path)
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """``cs336 download tinystories|owt [--out DIR] [--split train valid] [--base-url URL]``."""
    p = subparsers.add_parser(
        "download",
        help="download TinyStories or the OpenWebText sample (resumable)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("dataset", choices=sorted(DATASETS), help="which corpus")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: data/DATASET)")
    p.add_argument(
        "--split",
        nargs="+",
        default=["train", "valid"],
        choices=["train", "valid"],
        help="which files (default: train valid)",
    )
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help="mirror of the dataset hub (default: %(default)s)")
    p.add_argument("--keep-compressed", action="store_true", help="keep the .gz after decompressing")
    p.set_defaults(func=_run)
