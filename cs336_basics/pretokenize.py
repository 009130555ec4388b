"""Pre-tokenisation: the GPT-2 regex, special-token splitting and safe chunk boundaries.

BPE never merges across pre-token boundaries, so both the trainer and the tokenizer first cut text into
pre-tokens with GPT-2's regular expression, after splitting out the special tokens (which are never cut
and never merged). This module holds those shared pieces, plus the one subtle fact that lets us work on
large files in parallel pieces: where a text may be cut without changing its pre-tokens.

Example:
    >>> list(pretokenize("Hello, world!  It's 2024."))
    ['Hello', ',', ' world', '!', ' ', ' It', "'s", ' 2024', '.']
    >>> split_on_special_tokens("a<|endoftext|>b", ["<|endoftext|>"])
    ['a', '<|endoftext|>', 'b']
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import re
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, BinaryIO

import regex

#: GPT-2's pre-tokenisation pattern (INTERFACE.md): contractions, optional space + letters, optional
#: space + digits, optional space + other symbols, whitespace not followed by a non-space, whitespace.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_REGEX = regex.compile(GPT2_PATTERN)


def _ascii_class(pattern: str) -> str:
    """The ASCII characters that `pattern` (a `regex` character class) matches, as a stdlib `re` class body."""
    return "".join(re.escape(chr(c)) for c in range(128) if regex.fullmatch(pattern, chr(c)))


_L, _N, _S = _ascii_class(r"\p{L}"), _ascii_class(r"\p{N}"), _ascii_class(r"\s")
# The same pattern for text that is pure ASCII, in the stdlib engine with the classes spelled out (derived
# from `regex` itself, so they agree by construction): about twice as fast as `GPT2_REGEX` on ASCII.
_GPT2_ASCII_REGEX = re.compile(
    rf"""'(?:[sdmt]|ll|ve|re)| ?[{_L}]+| ?[{_N}]+| ?[^{_S}{_L}{_N}]+|[{_S}]+(?![^{_S}])|[{_S}]+"""
)
# Mixed text is pre-tokenised in blocks of about this many characters, each with the faster engine it allows.
_BLOCK_CHARS = 1024
# Long texts are pre-tokenised (and counted or encoded) in pieces of about this many characters.
_COUNT_BLOCK_CHARS = 1 << 20

# A cut between a non-space and a space is safe: no pre-token contains both (the only pattern that starts
# with a space is ` ?X+`, which starts *at* the space), and the one lookahead, `(?!\S)`, never looks past a
# non-space. `(?r)` searches backwards, so the latest cut is found first.
_LAST_SAFE_CUT = regex.compile(r"(?r)\S\s")
# The same rule on raw bytes, restricted to ASCII so that a match is always a whole UTF-8 character.
_SAFE_CUT_BYTES = regex.compile(rb"[!-~][ \t\n\r]")
_NEXT_SAFE_CUT = regex.compile(r"\S\s")


def pretokenize(text: str) -> Iterator[str]:
    """Yield the GPT-2 pre-tokens of `text` (which must not contain special tokens).

    >>> list(pretokenize("  x = 1\\n"))
    [' ', ' x', ' =', ' 1', '\\n']
    """
    for match in GPT2_REGEX.finditer(text):
        yield match.group()


def pretokens(text: str) -> list[str]:
    """The GPT-2 pre-tokens of `text` as a list: `list(pretokenize(text))`, faster.

    ASCII stretches go to a stdlib-`re` twin of the pattern; the text is cut only at safe places.

    >>> pretokens("naïve  code(x) 42")
    ['naïve', ' ', ' code', '(', 'x', ')', ' 42']
    """
    if text.isascii():
        return _GPT2_ASCII_REGEX.findall(text)
    out: list[str] = []
    for block in blocks(text, _BLOCK_CHARS):
        out += (_GPT2_ASCII_REGEX if block.isascii() else GPT2_REGEX).findall(block)
    return out


def blocks(text: str, size: int) -> Iterator[str]:
    """Cut `text` into consecutive pieces of at least `size` characters (the last may be shorter), each
    ending at a safe cut, so that pre-tokenising the pieces one by one gives the pre-tokens of `text`.

    >>> list(blocks("aa bb cc dd", 3))
    ['aa bb', ' cc', ' dd']
    """
    start, n = 0, len(text)
    while start < n:
        cut = n
        if start + size < n:
            match = _NEXT_SAFE_CUT.search(text, start + size - 1)
            if match is not None:
                cut = match.start() + 1
        yield text[start:cut]
        start = cut


def special_tokens_regex(special_tokens: Iterable[str]) -> regex.Pattern[str] | None:
    """A regex with one capturing group that matches any special token, the longest first.

    Longest first makes overlapping tokens resolve to the longest match: with `<|a|>` and `<|a|><|a|>`,
    the text `<|a|><|a|>` is one token. Returns None when there are no special tokens.
    """
    tokens = sorted(set(special_tokens), key=lambda t: (-len(t), t))
    if not tokens:
        return None
    if any(not isinstance(t, str) or not t for t in tokens):
        raise ValueError(f"special tokens must be non-empty strings, got {tokens!r}")
    return regex.compile("(" + "|".join(regex.escape(t) for t in tokens) + ")")


def split_on_special_tokens(text: str, special_tokens: Iterable[str]) -> list[str]:
    """Split `text` into pieces; special tokens become pieces of their own, at odd indices.

    >>> split_on_special_tokens("a<s>b<s><s>", ["<s>"])
    ['a', '<s>', 'b', '<s>', '', '<s>', '']
    """
    pattern = special_tokens_regex(special_tokens)
    return [text] if pattern is None else pattern.split(text)


def count_pretokens(text: str, special_tokens: Iterable[str] = ()) -> Counter[str]:
    """Count the pre-tokens of `text`, special tokens excluded (they never take part in merges).

    >>> count_pretokens("ab ab<|endoftext|>ab", ["<|endoftext|>"])
    Counter({'ab': 2, ' ab': 1})
    """
    counts: Counter[str] = Counter()
    pattern = special_tokens_regex(special_tokens)
    pieces = [text] if pattern is None else pattern.split(text)[::2]
    for piece in pieces:
        for block in blocks(piece, _COUNT_BLOCK_CHARS):  # bounded memory for the list of pre-tokens
            counts.update(pretokens(block))
    return counts


def last_safe_cut(text: str, start: int = 0, end: int | None = None) -> int:
    """The largest `p` in `(start, end]` with `text[p-1]` a non-space and `text[p]` a space, or -1.

    Pre-tokenising `text[:p]` and `text[p:]` separately gives the same pre-tokens as the whole text.

    >>> last_safe_cut("ab cd  ef")
    5
    >>> last_safe_cut("   ")
    -1
    """
    match = _LAST_SAFE_CUT.search(text, start, len(text) if end is None else end)
    return -1 if match is None else match.start() + 1


class _NoProgress:
    """Stands in for a tqdm bar when none is wanted (creating a tqdm, even disabled, starts a thread)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def progress_bar(show: bool, **kwargs: Any) -> Any:
    """A tqdm progress bar with `kwargs` when `show`, else an object with the same `update`/`close`."""
    if not show:
        return _NoProgress()
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


def worker_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context for the chunk workers of training and file encoding.

    "fork" when it is safe: it starts fast, sends nothing, and workers inherit the parent's state (a warm
    pre-token cache too). NOTE: forking a process that runs other Python threads (a progress bar's monitor,
    a data loader) can deadlock the child on a lock one of them held, so then we "spawn" fresh interpreters
    instead. Torch merely being imported is fine: its OpenMP pool is not a Python thread, and the workers
    run pure Python and `regex`, never a torch op (which is what could hang in a forked child).
    """
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def find_chunk_boundaries(
    file: BinaryIO,
    desired_num_chunks: int,
    special_tokens: Sequence[str] = (),
    *,
    window: int = 1 << 16,
) -> list[int]:
    """Byte offsets `[0, ..., file_size]` that cut `file` into chunks safe to pre-tokenise separately.

    Each interior boundary is the first special token at or after an evenly spaced guess; when no special
    token follows within reach (or there are none), it is the first non-space/space pair instead (never
    inside a special token). Boundaries fall on ASCII characters, so every chunk is whole UTF-8. Fewer
    chunks than asked are returned when boundaries coincide (e.g. a file with no safe place to cut).
    """
    if desired_num_chunks < 1:
        raise ValueError(f"desired_num_chunks must be >= 1, got {desired_num_chunks}")
    file.seek(0, os.SEEK_END)
    file_size = file.tell()
    specials = [t.encode("utf-8") for t in special_tokens]
    longest = max((len(t) for t in specials), default=0)
    boundaries = [0]
    for i in range(1, desired_num_chunks):
        guess = max(file_size * i // desired_num_chunks, boundaries[-1])
        boundaries.append(_next_boundary(file, guess, file_size, specials, longest, window))
    boundaries.append(file_size)
    return sorted(set(boundaries))


def read_chunk_text(path: str | os.PathLike[str], start: int, end: int) -> str:
    """The bytes `[start, end)` of a file decoded as UTF-8 (one chunk from `find_chunk_boundaries`).

    Bad UTF-8 raises `ValueError` naming the offending bytes and their offset in the whole file, which is what
    a user needs to find them (the offset inside the chunk would mean nothing to them).
    """
    with open(path, "rb") as f:
        f.seek(start)
        data = f.read(end - start)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{os.fspath(path)!r} is not valid UTF-8: bytes {data[e.start : e.end]!r} at offset {start + e.start} "
            f"({e.reason}); expected a UTF-8 text file"
        ) from None


def _next_boundary(
    file: BinaryIO, position: int, file_size: int, specials: list[bytes], longest: int, window: int
) -> int:
    """The first safe cut at or after `position` (see `find_chunk_boundaries`), or `file_size`."""
    # Read a little before `position` so that a special token straddling it is seen whole.
    overlap = max(longest - 1, 1)
    special_regex = regex.compile(b"|".join(regex.escape(t) for t in specials)) if specials else None
    start = max(position - overlap, 0)
    fallback = -1
    while start < file_size:
        file.seek(start)
        data = file.read(window + overlap)
        if special_regex is not None:
            for match in special_regex.finditer(data, max(position - start, 0)):
                # NOTE: with overlapping special tokens ("<s>" and "x<s>"), an occurrence may lie inside
                # another one; cutting there would break the longer token.
                if not _inside_special(file, start + match.start(), specials, longest):
                    return start + match.start()
        if fallback < 0:
            for match in _SAFE_CUT_BYTES.finditer(data, max(position - start - 1, 0)):
                if not _inside_special(file, start + match.start() + 1, specials, longest):
                    fallback = start + match.start() + 1
                    break
        # A special token found within one window beats a whitespace cut: the chunks stay aligned to
        # documents. Past that, settle for the whitespace cut.
        if fallback >= 0 and start + len(data) - position >= window:
            return fallback
        if len(data) < window + overlap:
            break
        start += window
    return fallback if fallback >= 0 else file_size


def _inside_special(file: BinaryIO, cut: int, specials: list[bytes], longest: int) -> bool:
    """Whether an occurrence of a special token in `file` covers both bytes `cut - 1` and `cut`."""
    if not specials:
        return False
    lo = max(cut - longest + 1, 0)
    file.seek(lo)
    data = file.read(2 * longest)
    cut -= lo
    for token in specials:
        hit = data.find(token)
        while 0 <= hit < cut:
            if hit + len(token) > cut:
                return True
            hit = data.find(token, hit + 1)
    return False
