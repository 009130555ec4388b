"""Code similarity across a batch: `cs336 similarity DIR_OR_ZIPS... --out-dir OUT`.

    cs336 similarity submissions/ --out-dir grades/ --reference-set earlier_years/ public/
    cs336 grade submissions/ --out-dir grades/          # runs it after the batch (--no-similarity: not)

compares every pair of submissions' `cs336_basics/` and `tests/adapters.py` and writes (see
`similarity_report.py`) `similarity.csv` (the pairs, ranked), `similarity/pair-NNNN.html` (the matching
regions of each flagged pair side by side), `similarity.png` (the score distribution) and, when the
folder holds a batch's `summary.csv`, the columns `similarity`, `similar_to` and `similarity_flag` there.

How (winnowing, Schleimer, Wilkerson & Aiken 2003, the algorithm of MOSS and copydetect):
1. Tokenise each file with Python's own `tokenize`; drop comments, docstrings and blank lines; every
   identifier becomes `N`, every number `1`, every string `S`. Renamed identifiers, changed comments and
   whitespace therefore change nothing.
2. Hash every run of `k` tokens; keep the minimum hash of every window of `w` runs. A copied run of at least
   `k + w - 1` tokens is always caught; a run shorter than `k` tokens never is. Fingerprints are a set per
   submission, so reordered functions (or functions moved to another file) match as well.
3. Fingerprints of the handout (the kit's stub `adapters.py` and empty package) are boilerplate and never
   count; nor do fingerprints that more than `max_share` of the batch holds (code everybody writes alike).
4. An inverted index (fingerprint -> submissions) counts the shared fingerprints of every pair at once: the
   work grows with the pairs that share something, not with all n(n-1)/2 pairs. NOTE: measured with
   `python -m bench.bench_similarity` (disguised variants sharing code with a third of the batch, 2 cores
   shared with other jobs): 100 submissions 22 s, 300 (44,850 pairs) 61 s, tokenising most of it; close
   to linear in n here, since a fingerprint's pairs are capped by `max_share`.
5. A pair's score is the larger of "the share of A's fingerprints found in B" and the converse, so a
   small submission copied into a larger one scores high too.

NOTE: why not copydetect (installable here) or Dolos: copydetect compares every pair of *files* with numpy
(300 submissions of ~15 files are 10 million file pairs), and neither knows this assignment's layout or a
hostile submission; the algorithm itself is 40 lines. No new dependency: the plot uses matplotlib.

Submissions are hostile here too: no symlink is followed, a zip is never extracted (its `.py` members are
read in memory, bounded), and files, file counts and totals are capped.
"""

from __future__ import annotations

import io
import keyword
import logging
import os
import re
import stat
import tokenize
import zipfile
import zlib
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cs336_grading import untrusted
from cs336_grading.staff import batch

log = logging.getLogger(__name__)

NOISE_TOKENS = 20  # k: shorter common runs are noise (one typical statement is ~10 tokens)
GUARANTEE_TOKENS = 30  # k + w - 1: any copied run this long is always found
DEFAULT_THRESHOLD = 0.5
MIN_MATCHES = 15  # fewer shared fingerprints than this never flag a pair, whatever the share
MAX_FILE_BYTES = 1 << 20
MAX_TOTAL_BYTES = 16 << 20
MAX_FILES = 500
_FSTRING_START = getattr(tokenize, "FSTRING_START", -1)  # Python >= 3.12 splits f-strings into tokens
_FSTRING_END = getattr(tokenize, "FSTRING_END", -1)
_SKIPPED = frozenset({tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER})
_LAYOUT = {tokenize.NEWLINE: ";", tokenize.INDENT: ">", tokenize.DEDENT: "<"}
_FALLBACK_TOKEN = re.compile(r"[A-Za-z_]\w*|\d[\w.]*|\S")


@dataclass(frozen=True)
class Code:
    """One submission's Python files (`cs336_basics/...` and `tests/adapters.py`) and what was skipped."""

    name: str
    files: dict[str, str]
    reference: bool = False
    skipped: tuple[str, ...] = ()


@dataclass
class Fingerprints:
    """A submission's fingerprints: hash -> the (file, first line, last line) regions that produced it."""

    name: str
    reference: bool
    regions: dict[int, list[tuple[str, int, int]]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------- tokens


def normalised_tokens(source: str) -> list[tuple[str, int]]:
    """(normalised token, line) of a Python source; a file that does not tokenise falls back to a regex.

    >>> [t for t, _ in normalised_tokens('def f(x):\\n    "Doc."\\n    return x + 1  # one\\n')]
    ['def', 'N', '(', 'N', ')', ':', ';', '>', 'return', 'N', '+', '1', ';', '<']
    """
    try:
        return _python_tokens(source)
    except (tokenize.TokenError, SyntaxError):
        out = []
        for number, line in enumerate(source.splitlines(), 1):
            out += [(_normalise_word(t), number) for t in _FALLBACK_TOKEN.findall(line.split("#", 1)[0])]
        return out


def _normalise_word(text: str) -> str:
    if text.isidentifier():
        return text if keyword.iskeyword(text) else "N"
    return "1" if text[0].isdigit() else text


def _python_tokens(source: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    statement_start, in_fstring = True, 0
    for kind, text, (line, _), _, _ in tokenize.generate_tokens(io.StringIO(source).readline):
        if kind in _SKIPPED:
            continue
        if kind == _FSTRING_START:
            in_fstring += 1
        elif kind == _FSTRING_END:
            in_fstring -= 1
            out.append(("S", line))
        elif in_fstring:
            continue
        elif kind == tokenize.STRING:
            if statement_start:  # a docstring or a bare string statement: as free as a comment
                continue
            out.append(("S", line))
        elif kind in _LAYOUT:
            if kind != tokenize.NEWLINE or (out and not statement_start):
                out.append((_LAYOUT[kind], line))
        else:
            out.append((_normalise_word(text), line))
        statement_start = kind in _LAYOUT or (statement_start and kind == tokenize.STRING)
    return out


# ---------------------------------------------------------------------------------- fingerprints


def winnow(hashes: Sequence[int], window: int) -> list[int]:
    """Indices of the winnowed hashes: each window's minimum (its rightmost on ties), each index once.

    >>> winnow([77, 74, 42, 17, 98, 50, 17, 98, 8, 88, 67, 39, 77, 74, 42, 17, 98], 4)
    [3, 6, 8, 11, 15]
    """
    if 0 < len(hashes) < window:
        window = len(hashes)
    selected: list[int] = []
    candidates: deque[int] = deque()  # indices whose hashes increase from the left
    for i, h in enumerate(hashes):
        while candidates and hashes[candidates[-1]] >= h:
            candidates.pop()
        candidates.append(i)
        if candidates[0] <= i - window:
            candidates.popleft()
        if i >= window - 1 and (not selected or selected[-1] != candidates[0]):
            selected.append(candidates[0])
    return selected


def kgram_hashes(tokens: Sequence[tuple[str, int]], k: int = NOISE_TOKENS) -> list[int]:
    """The hash of every run of `k` tokens; the same in every process (ints and tuples hash unsalted)."""
    ids = [zlib.crc32(t.encode()) for t, _ in tokens]
    return [hash(tuple(ids[i : i + k])) for i in range(len(ids) - k + 1)]


def fingerprint_code(code: Code, k: int = NOISE_TOKENS, guarantee: int = GUARANTEE_TOKENS) -> Fingerprints:
    """The winnowed fingerprints of every file of `code`, with the lines each one covers."""
    if not 1 <= k <= guarantee:
        raise ValueError(f"expected 1 <= noise tokens <= guarantee tokens, got {k} and {guarantee}")
    prints = Fingerprints(code.name, code.reference)
    for path, text in sorted(code.files.items()):
        tokens = normalised_tokens(text)
        hashes = kgram_hashes(tokens, k)
        for i in winnow(hashes, guarantee - k + 1):
            prints.regions.setdefault(hashes[i], []).append((path, tokens[i][1], tokens[i + k - 1][1]))
    return prints


def boilerplate_hashes(sources: Sequence[str], k: int = NOISE_TOKENS) -> set[int]:
    """Every k-gram hash (not only the winnowed ones) of the handout's starter code."""
    out: set[int] = set()
    for text in sources:
        out.update(kgram_hashes(normalised_tokens(text), k))
    return out


def handout_sources() -> list[str]:
    """The Python the starter kit hands out (see `handout.py`): the stub adapters and the package's init."""
    from cs336_grading.grader.grade import default_harness
    from cs336_grading.staff.handout import HANDOUT_FILES, PACKAGE_INIT, stub_adapters

    sources = [stub_adapters((default_harness() / "adapters.py").read_text(encoding="utf-8")), PACKAGE_INIT]
    sources += [p.read_text(encoding="utf-8") for p in sorted(HANDOUT_FILES.glob("*.py")) if p.name != "__init__.py"]
    return sources


# ------------------------------------------------------------------------------- reading submissions


def load_code(entry: batch.Entry, *, reference: bool = False) -> Code:
    """The `.py` files of `cs336_basics/` and `adapters.py` of a submission found by `batch.discover`.

    Located as `submission.unpack_submission` locates them (a top folder, `adapters.py` outside `tests/`),
    but read in memory: symlinks and special files are skipped, never followed, and so are files over
    MAX_FILE_BYTES, files past MAX_FILES and bytes past MAX_TOTAL_BYTES (each named in `skipped`).
    """
    files, skipped = (_zip_files if entry.source.is_file() else _dir_files)(entry.source)
    package, adapters = _locate(sorted(files))
    chosen = {p: files[p] for p in files if package is not None and p.startswith(package + "/")}
    kept = {"cs336_basics/" + p[len(package) + 1 :]: text for p, text in chosen.items()} if package else {}
    if adapters is not None:
        kept["tests/adapters.py"] = files[adapters]
    return Code(entry.student, kept, reference, tuple(skipped))


def _locate(paths: Sequence[str]) -> tuple[str | None, str | None]:
    """(the `cs336_basics` folder, the `adapters.py`) among the relative paths, the most plausible ones."""
    packages = sorted(
        {
            "/".join(p.split("/")[: i + 1])
            for p in paths
            for i, part in enumerate(p.split("/")[:-1])
            if part == "cs336_basics"
        },
        key=lambda d: (d.count("/"), d),
    )
    package = packages[0] if packages else None
    candidates = [
        p for p in paths if p.rsplit("/", 1)[-1] == "adapters.py" and not any(p.startswith(d + "/") for d in packages)
    ]
    candidates.sort(key=lambda p: (p.split("/")[-2:-1] != ["tests"], p.count("/"), p))
    return package, (candidates[0] if candidates else None)


class _Budget:
    """Counts files and bytes read from one submission; says why a file is skipped."""

    def __init__(self) -> None:
        self.files, self.bytes, self.skipped = 0, 0, []

    def refuse(self, name: str, size: int) -> bool:
        why = (
            "over the file size cap"
            if size > MAX_FILE_BYTES
            else "past the file count cap"
            if self.files >= MAX_FILES
            else "past the total size cap"
            if self.bytes + size > MAX_TOTAL_BYTES
            else ""
        )
        if why:
            self.skipped.append(f"{name} ({why})")
            return True
        self.files, self.bytes = self.files + 1, self.bytes + size
        return False


def _dir_files(root: Path) -> tuple[dict[str, str], list[str]]:
    budget, files = _Budget(), {}
    for current, dirs, names in os.walk(root):  # NOTE: os.walk never descends into a symlinked folder
        here = Path(current)
        depth = len(here.relative_to(root).parts)
        dirs[:] = sorted(
            d
            for d in dirs
            if depth < 6 and not d.startswith(".") and d not in batch._SKIP_DIRS and d != "site-packages"
        )
        for name in sorted(n for n in names if n.endswith(".py")):
            rel = (here / name).relative_to(root).as_posix()
            try:
                fd = untrusted.open_regular(here / name)
            except OSError as e:  # a symlink, a FIFO, a device (UntrustedFileError), or unreadable
                budget.skipped.append(f"{rel} ({e.strerror or e})")
                continue
            with os.fdopen(fd, "rb") as f:
                if not budget.refuse(rel, os.fstat(f.fileno()).st_size):
                    files[rel] = f.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")
    return files, budget.skipped


def _zip_files(archive: Path) -> tuple[dict[str, str], list[str]]:
    budget, files = _Budget(), {}
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = info.filename.replace("\\", "/")
                parts = name.split("/")
                if info.is_dir() or not name.endswith(".py") or "__MACOSX" in parts:
                    continue
                if stat.S_ISLNK(info.external_attr >> 16) or name.startswith("/") or ".." in parts:
                    budget.skipped.append(f"{name} (a symlink or a path outside the archive)")
                elif not budget.refuse(name, info.file_size):
                    with zf.open(info) as f:  # NOTE: the header's size may lie: the read is bounded anyway
                        files[name] = f.read(MAX_FILE_BYTES).decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, OSError, EOFError) as e:
        budget.skipped.append(f"{archive.name} (unreadable archive: {type(e).__name__}: {e})")
    return files, budget.skipped


# ------------------------------------------------------------------------------------- comparing


@dataclass(frozen=True)
class Pair:
    """Two submissions (`b` may be from the reference set) and the fingerprints they share."""

    a: str
    b: str
    matched: int
    score_a: float  # the share of a's fingerprints found in b
    score_b: float
    b_is_reference: bool = False

    @property
    def score(self) -> float:
        return max(self.score_a, self.score_b)


@dataclass
class Comparison:
    """Every pair that shares a fingerprint, the effective fingerprints of each submission, the pair count."""

    pairs: list[Pair]
    kept: dict[str, set[int]]
    prints: dict[str, Fingerprints]
    total_pairs: int
    common: int  # fingerprints ignored because too much of the batch holds them


def compare_fingerprints(
    prints: Sequence[Fingerprints], boilerplate: set[int], *, max_share: float = 0.2
) -> Comparison:
    """Count the shared fingerprints of every pair through an inverted index (fingerprint -> submissions).

    Boilerplate never counts; nor does a fingerprint held by more than max(10, max_share x students)
    student submissions. References are compared with students, never with each other.
    """
    if not 0.0 < max_share <= 1.0:
        raise ValueError(f"expected 0 < max_share <= 1, got {max_share}")
    students = sum(not p.reference for p in prints)
    postings: dict[int, list[int]] = {}
    for i, p in enumerate(prints):
        for h in p.regions.keys() - boilerplate:
            postings.setdefault(h, []).append(i)
    limit = max(10.0, max_share * students)
    common = {h for h, ids in postings.items() if sum(not prints[i].reference for i in ids) > limit}
    kept = {p.name: set(p.regions) - boilerplate - common for p in prints}
    counts = _pair_counts([ids for h, ids in postings.items() if len(ids) > 1 and h not in common], len(prints))
    pairs = []
    for code in np.flatnonzero(counts):
        i, j = divmod(int(code), len(prints))
        a, b = (prints[j], prints[i]) if prints[i].reference else (prints[i], prints[j])
        if a.reference:
            continue
        n = int(counts[code])
        pairs.append(Pair(a.name, b.name, n, n / len(kept[a.name]), n / len(kept[b.name]), b.reference))
    pairs.sort(key=lambda p: (-p.score, -p.matched, p.a, p.b))
    total = students * (students - 1) // 2 + students * (len(prints) - students)
    return Comparison(pairs, kept, {p.name: p for p in prints}, total, len(common))


def _pair_counts(postings: list[list[int]], n: int, chunk: int = 1 << 22) -> np.ndarray:
    """counts[i * n + j] (i < j): how many postings hold both i and j, counted in vectorised blocks."""
    counts = np.zeros(n * n, dtype=np.int64)
    by_length: dict[int, list[list[int]]] = {}
    for ids in postings:
        by_length.setdefault(len(ids), []).append(ids)  # ids are increasing: built in submission order
    for length, group in by_length.items():
        rows, cols = np.triu_indices(length, 1)
        step = max(1, chunk // len(rows))
        for start in range(0, len(group), step):
            block = np.asarray(group[start : start + step], dtype=np.int64)  # (m, length)
            codes = block[:, rows] * n + block[:, cols]  # (m, length * (length - 1) / 2)
            counts += np.bincount(codes.ravel(), minlength=n * n)
    return counts


def shared_regions(result: Comparison, a: str, b: str) -> list[tuple[tuple[str, int, int], tuple[str, int, int]]]:
    """The (region in a, region in b) of every fingerprint the pair shares, in a's file and line order."""
    shared = result.kept[a] & result.kept[b]
    out = [(ra, rb) for h in shared for ra in result.prints[a].regions[h][:1] for rb in result.prints[b].regions[h][:1]]
    return sorted(out)
