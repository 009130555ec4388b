"""The fast engine of `cs336 tokenize`: tiktoken with our vocabulary and merges, where it gives our ids.

The assignment's tokenizer stays from scratch (it is what students write); the tool that turns gigabytes of
text into ids uses tiktoken's Rust BPE when it provably gives the same ids:

    engine = choose_engine("auto", tokenizer, vocab, merges, special_tokens, sample)   # an Encoding, or None
    ids = engine.encode_to_numpy(text, allowed_special="all")

tiktoken merges the adjacent pair whose result has the lowest rank; our BPE applies merges in the order they
were learned. With rank = token id the two agree when the vocabulary is rank-ordered: each merge's result has
a larger id than the previous merge's, every token but the bytes and the special tokens is made by a merge,
and tiktoken, building a token from lower-ranked ones, splits it into the very pair whose merge made it.
`rank_order_problem` checks that (and the rest: duplicates, missing bytes, special tokens that overlap);
`choose_engine` then proves it on a sample (the file's first megabyte and a built-in probe of Unicode,
whitespace runs and special tokens) and, on any problem, falls back to our encoder with one log line saying
why (`--engine tiktoken` refuses with that line instead).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["ENGINES", "GPT2_PATTERN", "EngineUnavailable", "rank_order_problem", "build_encoding", "choose_engine"]

ENGINES = ("auto", "tiktoken", "ours")
#: The package's pre-tokenisation pattern, character for character (`cs336_basics/pretokenize.py`;
#: `project_tests/lab/test_tiktoken_engine.py` checks that they stay equal). NOTE: not tiktoken's own GPT-2
#: pattern, which treats trailing whitespace differently (`\s+$`).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Text every proof encodes besides the file's sample: what a regex engine or a special-token split may
# treat differently (Unicode letters and digits, control and odd spaces, whitespace runs, contractions).
_PROBE = (
    "Hello, world!  It's 2024.\n\n\n  x = 1\t\t\n   \r\n"
    "caf\u00e9 na\u00efve \u00c6sir \u4f60\u597d\u4e16\u754c \U0001f600\U0001f680 \u0661\u0662\u0663 \u00bd\u2075 "
    "\u00a0nbsp\u2003em\u2009thin \u3000ideo \x1c\x1d\x1e\x1f\x85\x0b\x0c end  "
    "we'll they've I'M don't O'Neil's 'tis   \n"
)
_SAMPLE_CHARS = 1 << 20


class EngineUnavailable(ValueError):
    """tiktoken cannot stand in for our encoder; the message says why (one line)."""


def rank_order_problem(
    vocab: Mapping[int, bytes], merges: Sequence[tuple[bytes, bytes]], specials: Sequence[str]
) -> str | None:
    """Why tiktoken with rank = id could give other ids than our BPE, or None when it cannot."""
    ids: dict[bytes, int] = {}
    for i, token in vocab.items():
        if token in ids:
            return f"duplicate token {token!r} (ids {ids[token]} and {i})"
        ids[token] = i
    special = [s.encode("utf-8") for s in dict.fromkeys(specials)]
    for s in special:
        if s not in ids:
            return f"special token {s.decode()!r} is not in the vocabulary"
        if any(s != other and s in other for other in special):
            return f"special tokens overlap ({s.decode()!r} is inside another one): tiktoken may split them otherwise"
    missing = next((b for b in range(256) if bytes([b]) not in ids or bytes([b]) in special), None)
    if missing is not None:
        return f"byte 0x{missing:02x} is not a token of its own"
    made: dict[bytes, int] = {}
    last = -1
    for i, (left, right) in enumerate(merges):
        token = left + right
        if left not in ids or right not in ids:
            return f"merge {i} ({left!r}, {right!r}) uses a token that is not in the vocabulary"
        if token not in ids or token in special:
            return f"merge {i} ({left!r}, {right!r}) makes {token!r}, which is not in the vocabulary"
        if token in made or len(token) == 1:
            return f"merge {i} makes {token!r} again (already a token before it)"
        if ids[token] <= last:
            return (
                f"token ids are not in merge order (merge {i} makes id {ids[token]}, after id {last}): not rank-ordered"
            )
        made[token], last = i, ids[token]
    extra = next((t for t in ids if len(t) > 1 and t not in made and t not in special), None)
    if extra is not None:
        return f"token {extra!r} (id {ids[extra]}) is neither a byte, a special token nor made by a merge"
    return _split_problem(merges, ids)


def _split_problem(merges: Sequence[tuple[bytes, bytes]], ids: Mapping[bytes, int]) -> str | None:
    """Whether tiktoken, merging a token's bytes by rank with the lower-ranked tokens only, ends at the pair
    whose merge made it (the condition under which rank order and merge order build the same tokens)."""
    for i, (left, right) in enumerate(merges):
        if len(left) == len(right) == 1:
            continue  # two bytes: no other way to build it
        parts = _rank_merge(left + right, ids)
        if parts != [left, right]:
            return f"merge {i} ({left!r}, {right!r}): tiktoken would build {left + right!r} from {parts!r}"
    return None


def _rank_merge(token: bytes, ids: Mapping[bytes, int]) -> list[bytes]:
    """tiktoken's byte-pair merge of `token` with the tokens ranked below it: lowest rank first, leftmost on ties."""
    limit, lookup = ids[token], ids.get
    parts = [token[j : j + 1] for j in range(len(token))]
    ranks = [lookup(a + b, limit) for a, b in zip(parts, parts[1:])]
    while ranks:
        best = min(ranks)
        if best >= limit:
            break
        j = ranks.index(best)
        parts[j : j + 2] = [parts[j] + parts[j + 1]]
        del ranks[j]
        if j > 0:
            ranks[j - 1] = lookup(parts[j - 1] + parts[j], limit)
        if j < len(ranks):
            ranks[j] = lookup(parts[j] + parts[j + 1], limit)
    return parts


def build_encoding(vocab: Mapping[int, bytes], merges: Sequence[tuple[bytes, bytes]], specials: Sequence[str]) -> Any:
    """A `tiktoken.Encoding` with rank = our id; `EngineUnavailable` naming why it would not give our ids."""
    try:
        import tiktoken
    except ImportError:
        raise EngineUnavailable("tiktoken is not installed (pip install tiktoken)") from None
    if not hasattr(tiktoken.Encoding, "encode_to_numpy"):
        raise EngineUnavailable(f"tiktoken {tiktoken.__version__} is too old (encode_to_numpy needs >= 0.8)")
    problem = rank_order_problem(vocab, merges, specials)
    if problem is not None:
        raise EngineUnavailable(problem)
    special = {s.encode("utf-8") for s in specials}
    ranks = {token: i for i, token in vocab.items() if token not in special}
    special_ids = {s: i for i, token in vocab.items() for s in specials if token == s.encode("utf-8")}
    return tiktoken.Encoding("cs336", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special_ids)


def prove_equal(encoding: Any, tokenizer: Any, sample: str) -> None:
    """`EngineUnavailable` naming the first differing id when tiktoken's ids of `sample` (and of the probe,
    with each special token between its pieces) differ from the tokenizer's."""
    texts = [sample, _PROBE + "".join(f"{s}{_PROBE}" for s in tokenizer_specials(tokenizer))]
    for what, text in zip(("the sample", "the probe text"), texts):
        ours = list(tokenizer.encode(text))
        theirs = encoding.encode(text, allowed_special="all")
        if ours != theirs:
            raise EngineUnavailable(f"ids differ on {what}: {_first_difference(ours, theirs, tokenizer)}")


def _first_difference(ours: list[int], theirs: list[int], tokenizer: Any) -> str:
    """Where two id sequences first differ: the token index, both ids and about which character of the text."""
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    pick = [str(ids[at]) if at < len(ids) else "the end" for ids in (ours, theirs)]
    try:
        near = f", near character {len(tokenizer.decode(ours[:at]))}"
    except Exception:  # noqa: BLE001 - the position in characters is a courtesy
        near = ""
    return f"first at token {at}{near} (ours {pick[0]}, tiktoken {pick[1]}; {len(ours)} vs {len(theirs)} tokens)"


def tokenizer_specials(tokenizer: Any) -> list[str]:
    """The tokenizer's special tokens (an empty list when it has none)."""
    return list(getattr(tokenizer, "special_tokens", None) or [])


def choose_engine(
    choice: str,
    tokenizer: Any,
    vocab: Mapping[int, bytes],
    merges: Sequence[tuple[bytes, bytes]],
    specials: Sequence[str],
    sample: str,
) -> Any | None:
    """The tiktoken `Encoding` to encode with, or None for our encoder (`choice`: one of `ENGINES`).

    "auto" falls back to ours with one log line saying why; "tiktoken" raises `EngineUnavailable` instead.
    """
    if choice not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {choice!r}")
    if choice == "ours":
        return None
    try:
        encoding = build_encoding(vocab, merges, specials)
        prove_equal(encoding, tokenizer, sample[:_SAMPLE_CHARS])
    except EngineUnavailable as why:
        if choice == "tiktoken":
            raise EngineUnavailable(f"--engine tiktoken does not apply: {why}") from None
        logger.info("tokenize engine: ours (the from-scratch encoder), as tiktoken would not do: %s", why)
        return None
    logger.info("tokenize engine: tiktoken (ids equal to ours on a %d-character sample)", len(sample[:_SAMPLE_CHARS]))
    return encoding
