"""A student's submission, normalised: from a directory or a `.zip` (the usual layouts) to `cs336_basics/`
and `adapters.py`, copied so that nothing the grader runs reads the student's original files.

    student = unpack_submission("alice.zip", tmp / "submission")   # Submission(package=..., adapters=...)

Unpacking parses hostile input as root, so it follows no link and trusts no size it has not counted:
- a directory is walked with `lstat`; what is graded (the `cs336_basics/` tree and `adapters.py`) must be
  regular files and directories only: a symbolic link, FIFO, socket or device there refuses the submission
  (elsewhere, e.g. a checkout's `venv/bin/python`, it is never opened and never followed);
- a zip's members are checked before one byte is extracted: no absolute name, no `..`, no link, FIFO or
  device mode bits, no encryption, and the caps below on files, bytes, depth and compression ratio; the
  bytes actually inflated are counted again while extracting;
- every file is opened with `O_NOFOLLOW | O_NONBLOCK`, checked to be a regular file, and read up to its cap.
Every refusal is a `SubmissionError` whose message is one line naming the reason (the grader turns it into
a zero grade and a `results.json` that says why).
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cs336_grading import untrusted

IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".hypothesis", "__MACOSX", ".DS_Store")
# Caps on what unpacking reads. A real submission is well under 1 MB of code: these leave room for
# notebooks and small data files, and stop a bomb before it is extracted.
MAX_FILES = 10_000  # files and directories graded (the package tree), or zip members extracted
MAX_TOTAL_BYTES = 256 << 20  # their total size, uncompressed
MAX_FILE_BYTES = 64 << 20  # one file
MAX_DEPTH = 16  # directory levels below the submission's root
MAX_RATIO = 100  # inflated / compressed bytes, per zip member and for the whole zip, once past...
RATIO_FLOOR_BYTES = 1 << 20  # ... this many inflated bytes (a tiny file of blanks compresses 500x, harmlessly)
MAX_SCANNED = 200_000  # directory entries looked at while finding the parts of a directory submission
_SKIPPED_DIRS = ("site-packages", "node_modules")
_CHUNK = 1 << 20


class SubmissionError(ValueError):
    """The submission is not a gradable layout (e.g. it has no `adapters.py`), or was refused (one line why)."""


@dataclass(frozen=True)
class Submission:
    """A normalised copy of a student's code: `package/` (`cs336_basics`) and `adapters.py`."""

    package: Path
    adapters: Path


def unpack_submission(source: str | os.PathLike[str], dest: Path) -> Submission:
    """Copy a submission (directory or `.zip`) into `dest/` as `cs336_basics/` + `adapters.py`.

    Tolerates a top folder (`hw1/cs336_basics/...`), an `adapters.py` outside `tests/` and missing
    `__init__.py` files; a submission without a `cs336_basics/` gets an empty package. Only those two
    things are copied (a directory may be a whole checkout, virtual environment included). Raises
    FileNotFoundError when `source` does not exist, SubmissionError when it is refused (see the module).
    """
    source = Path(source)
    try:
        info = os.stat(source)  # NOTE: the path the grader was given may be a link; nothing inside it may
    except FileNotFoundError:
        raise FileNotFoundError(f"submission {source} does not exist") from None
    except OSError as e:
        raise SubmissionError(f"unreadable submission {source.name}: {e.strerror}") from None
    raw = None
    if stat.S_ISDIR(info.st_mode):
        root = source
    elif stat.S_ISREG(info.st_mode) and (source.suffix.lower() == ".zip" or looks_like_zip(source)):
        raw = dest / "raw"
        _safe_extract(source, raw)
        root = raw
    else:
        kind = untrusted.KINDS.get(stat.S_IFMT(info.st_mode), "a file")
        raise SubmissionError(f"expected a directory or a .zip file as submission, got {kind}: {source.name}")
    packages, adapters = _find_submission_parts(root)
    if not adapters:
        raise SubmissionError(f"the submission {source.name} has no tests/adapters.py")
    package = dest / "cs336_basics"
    budget = _Budget()
    if packages:
        try:
            _copy_tree(packages[0], package, budget, depth=len(packages[0].relative_to(root).parts))
        except OSError as e:  # a file that vanished or changed while copied: still one line, still a grade
            raise SubmissionError(f"unreadable submission {source.name}: {e}") from None
    else:
        package.mkdir(parents=True)
    # Without __init__.py the directory is a namespace package, and the installed reference would win.
    for directory in [package, *(p for p in package.rglob("*") if p.is_dir())]:
        if directory == package or any(directory.glob("*.py")):
            (directory / "__init__.py").touch(exist_ok=True)
    _copy_file(adapters[0], dest / "adapters.py", adapters[0].relative_to(root).as_posix(), budget)
    if raw is not None:
        shutil.rmtree(raw)
    return Submission(package=package, adapters=dest / "adapters.py")


def _find_submission_parts(root: Path, max_depth: int = 4) -> tuple[list[Path], list[Path]]:
    """(`cs336_basics` directories, `adapters.py` files) under `root`, the most plausible first.

    Walks with `lstat` (a link to a directory is never entered) and looks at most MAX_SCANNED entries.
    """
    packages: list[Path] = []
    adapters: list[Path] = []
    pending, scanned = [(root, 0)], 0
    while pending:
        here, depth = pending.pop()
        try:
            entries = _entries(here)
        except OSError as e:
            raise SubmissionError(f"unreadable directory {here.relative_to(root).as_posix()}: {e.strerror}") from None
        scanned += len(entries)
        if scanned > MAX_SCANNED:
            raise SubmissionError(f"refused: more than {MAX_SCANNED} files and folders to look through")
        for entry in entries:
            path = Path(entry.path)
            if entry.name == "cs336_basics":
                packages.append(path)  # its own adapters.py (if any) is not ours; a link is refused when copied
            elif entry.is_dir(follow_symlinks=False):
                if depth < max_depth and not entry.name.startswith((".", "__")) and entry.name not in _SKIPPED_DIRS:
                    pending.append((path, depth + 1))
            elif entry.name == "adapters.py":
                adapters.append(path)  # a link or a FIFO is refused when copied, with its name

    def rank(p: Path) -> tuple[bool, int, str]:
        return (p.parent.name != "tests", len(p.relative_to(root).parts), str(p))

    return sorted(packages, key=lambda p: (len(p.relative_to(root).parts), str(p))), sorted(adapters, key=rank)


class _Budget:
    """What has been copied so far, against MAX_FILES and MAX_TOTAL_BYTES."""

    def __init__(self) -> None:
        self.files = self.bytes = 0

    def take(self, files: int, size: int, name: str) -> None:
        self.files += files
        self.bytes += size
        if self.files > MAX_FILES:
            raise SubmissionError(f"refused: more than {MAX_FILES} files and folders (at {name})")
        if self.bytes > MAX_TOTAL_BYTES:
            raise SubmissionError(f"refused: more than {MAX_TOTAL_BYTES >> 20} MiB of files (at {name})")


def _copy_tree(source: Path, dest: Path, budget: _Budget, depth: int) -> None:
    """Copy the regular files and directories under `source`; anything else refuses the submission."""
    name = f"{source.name}/"
    kind = untrusted.kind_of(source)
    if kind != "a directory":
        raise SubmissionError(f"refused: {name} is {kind or 'a file'}")
    if depth > MAX_DEPTH:
        raise SubmissionError(f"refused: folders nested deeper than {MAX_DEPTH} levels (at {name})")
    dest.mkdir(parents=True)
    try:
        entries = _entries(source)
    except OSError as e:
        raise SubmissionError(f"unreadable folder {name}: {e.strerror}") from None
    ignored = IGNORED(str(source), [e.name for e in entries])
    for entry in entries:
        if entry.name in ignored:
            continue
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            budget.take(1, 0, entry.name)
            _copy_tree(Path(entry.path), dest / entry.name, budget, depth + 1)
        else:
            _copy_file(Path(entry.path), dest / entry.name, f"{source.name}/{entry.name}", budget)


def _copy_file(source: Path, dest: Path, name: str, budget: _Budget) -> None:
    """Copy one regular file, opened without following a link or blocking on a FIFO, read up to its cap."""
    try:
        fd = untrusted.open_regular(source)
    except untrusted.UntrustedFileError:
        raise SubmissionError(f"refused: {name} is {untrusted.kind_of(source) or 'not a regular file'}") from None
    except OSError as e:
        raise SubmissionError(f"unreadable file {name}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        if size > MAX_FILE_BYTES:
            raise SubmissionError(f"refused: {name} is larger than {MAX_FILE_BYTES >> 20} MiB")
        budget.take(1, size, name)
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise SubmissionError(f"refused: {name} is larger than {MAX_FILE_BYTES >> 20} MiB")
    dest.write_bytes(data)


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    with os.scandir(directory) as it:
        return sorted(it, key=lambda e: e.name)


def _check_members(archive: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse a zip by its directory alone: names, kinds, encryption, counts, sizes, depth and ratios."""
    total = 0
    for member in members:
        name = member.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or (len(parts[0]) == 2 and parts[0][1] == ":") or ".." in parts:
            raise SubmissionError(f"refused: zip member {name!r} would be extracted outside the workspace")
        kind = stat.S_IFMT(member.external_attr >> 16)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise SubmissionError(f"refused: zip member {name!r} is {untrusted.KINDS.get(kind, 'not a regular file')}")
        if member.flag_bits & 0x1:
            raise SubmissionError(f"refused: zip member {name!r} is encrypted")
        if len([p for p in parts if p not in ("", ".")]) > MAX_DEPTH + 1:
            raise SubmissionError(f"refused: zip member {name!r} is nested deeper than {MAX_DEPTH} levels")
        if member.file_size > MAX_FILE_BYTES:
            raise SubmissionError(f"refused: zip member {name!r} is larger than {MAX_FILE_BYTES >> 20} MiB")
        if member.file_size > RATIO_FLOOR_BYTES and member.file_size > MAX_RATIO * max(1, member.compress_size):
            ratio = member.file_size / max(1, member.compress_size)
            raise SubmissionError(f"refused: zip member {name!r} inflates {ratio:.0f}x (at most {MAX_RATIO}x)")
        total += member.file_size
    if len(members) > MAX_FILES:
        raise SubmissionError(f"refused: the zip holds more than {MAX_FILES} files and folders")
    if total > MAX_TOTAL_BYTES:
        raise SubmissionError(f"refused: the zip inflates to more than {MAX_TOTAL_BYTES >> 20} MiB")
    if total > RATIO_FLOOR_BYTES and total > MAX_RATIO * max(1, archive.stat().st_size):
        ratio = total / max(1, archive.stat().st_size)
        raise SubmissionError(f"refused: the zip inflates {ratio:.0f}x (at most {MAX_RATIO}x)")


def looks_like_zip(path: Path) -> bool:
    """Whether the file `path` is a zip, or starts like one (a truncated zip is still the student's zip).

    NOTE: `zipfile.is_zipfile` looks for the end-of-archive record only, which a cut-short upload lacks.
    """
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04" or zipfile.is_zipfile(f)
    except OSError:
        return False


def _unreadable_zip(archive: Path) -> str | None:
    """Why `archive` cannot be a zip, from its bytes alone (None when it has the end record of one)."""
    if zipfile.is_zipfile(archive):
        return None
    if looks_like_zip(archive):
        return "truncated or damaged: it starts like a zip but has no end-of-archive record (an interrupted upload?)"
    with open(archive, "rb") as f:
        head = f.read(16)
    return f"not a zip archive: {archive.stat().st_size} bytes starting {head!r}" if head else "an empty file"


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract the zip's regular files and folders into a fresh `dest`, every check done first."""
    dest.mkdir(parents=True)
    if problem := _unreadable_zip(archive):
        raise SubmissionError(f"unreadable zip {archive.name}: {problem}")
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not IGNORED("", m.filename.split("/"))]
            _check_members(archive, members)
            for member in members:
                _extract_member(zf, member, dest)
    except SubmissionError:
        raise
    except Exception as e:  # noqa: BLE001 - a broken zip (zlib.error, BadZipFile, a bad CRC...) is the student's
        raise SubmissionError(f"unreadable zip {archive.name}: {type(e).__name__}: {e}".splitlines()[0]) from None


def _extract_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, dest: Path) -> None:
    """One member, written to a file created here (never an existing name), its inflated bytes counted."""
    parts = [p for p in member.filename.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return
    target = dest.joinpath(*parts)
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        raise SubmissionError(f"refused: zip member {member.filename!r} appears twice") from None
    written = 0
    with os.fdopen(fd, "wb") as out, zf.open(member) as src:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written > member.file_size:
                raise SubmissionError(f"refused: zip member {member.filename!r} inflates past its declared size")
            out.write(chunk)
