"""Pre-tokenisation: the GPT-2 regex, special-token splitting and the places where a text may be cut.

BPE never merges across pre-token boundaries, so both the trainer and the tokenizer first cut text into
pre-tokens with GPT-2's regular expression, after splitting out the special tokens (which are never cut
and never merged). This module holds those shared pieces, plus the one subtle fact that lets us work on
large texts in pieces: where a text may be cut without changing its pre-tokens (`chunking.py` applies it
to files on disk, for parallel processes).

Example:
    >>> list(pretokenize("Hello, world!  It's 2024."))
    ['Hello', ',', ' world', '!', ' ', ' It', "'s", ' 2024', '.']
    >>> special_tokens_regex(["<|endoftext|>"]).split("a<|endoftext|>b")
    ['a', '<|endoftext|>', 'b']
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator

import regex

#: GPT-2's pre-tokenisation pattern (docs/INTERFACE.md): contractions, optional space + letters, optional
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
