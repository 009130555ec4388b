"""Catalogued mistakes of BPE training and of the tokenizer's encode (see `tests/hints.py`).

Training mistakes take `text`, `vocab_size`, `special_tokens` and return the merges; encode mistakes take
`vocab`, `merges`, `special_tokens` and `text` and return the ids. Each is wrong in one named way.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import regex

from tests.hints import mistake

PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _chunks(text: str, special_tokens: list[str] | None, *, shortest_first: bool = False) -> list[tuple[str, bool]]:
    """`text` cut into (piece, is_special), special tokens matched longest first (or shortest, wrongly)."""
    if not special_tokens:
        return [(text, False)]
    ordered = sorted(special_tokens, key=len, reverse=not shortest_first)
    parts = regex.split("(" + "|".join(regex.escape(s) for s in ordered) + ")", text)
    return [(p, i % 2 == 1) for i, p in enumerate(parts) if p]


def _words(text: str, special_tokens: list[str], *, split_specials: bool = True, pretokenize: str = "gpt2") -> Counter:
    counts: Counter[tuple[bytes, ...]] = Counter()
    for piece, special in _chunks(text, special_tokens if split_specials else None):
        if special:
            continue
        words = {"gpt2": lambda s: regex.findall(PATTERN, s), "none": lambda s: [s], "split": str.split}[pretokenize]
        for word in words(piece):
            counts[tuple(bytes([b]) for b in word.encode("utf-8"))] += 1
    return counts


def _count_pairs(words: Counter) -> Counter:
    counts: Counter[tuple[bytes, bytes]] = Counter()
    for pair, n in ((pair, n) for word, n in words.items() for pair in zip(word, word[1:])):
        counts[pair] += n
    return counts


def _train(text: str, vocab_size: int, special_tokens: list[str], *, tie: str = "greater", **word_options: Any) -> list:
    words = _words(text, special_tokens, **word_options)
    ids = {bytes([b]): b for b in range(256)}
    merges: list[tuple[bytes, bytes]] = []
    while 256 + len(special_tokens) + len(merges) < vocab_size and (pairs := _count_pairs(words)):
        if tie == "smaller":
            best = min(pairs, key=lambda p: (-pairs[p], p))
        elif tie == "ids":
            best = max(pairs, key=lambda p: (pairs[p], ids[p[0]], ids[p[1]]))
        else:
            best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        ids[best[0] + best[1]] = len(ids)
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, n in words.items():
            merged[tuple(_remerge(word, best))] += n
        words = merged
    return merges


def _remerge(word: tuple[bytes, ...], best: tuple[bytes, bytes]) -> list[bytes]:
    out: list[bytes] = []
    skip = False
    for left, right in zip(word, (*word[1:], None)):
        if skip:
            skip = False
        elif (left, right) == best:
            out.append(left + best[1])
            skip = True
        else:
            out.append(left)
    return out


@mistake("train_bpe", "ties between equally frequent pairs broken toward the smaller pair (it must be the greater)")
def train_ties_smaller(text: str, vocab_size: int, special_tokens: list[str], **_: Any) -> list:
    return _train(text, vocab_size, special_tokens, tie="smaller")


@mistake("train_bpe", "ties broken by comparing token ids instead of the tokens' byte strings")
def train_ties_by_ids(text: str, vocab_size: int, special_tokens: list[str], **_: Any) -> list:
    return _train(text, vocab_size, special_tokens, tie="ids")


@mistake("train_bpe", "special tokens not split out before pre-tokenisation (merges across special tokens)")
def train_specials_not_split(text: str, vocab_size: int, special_tokens: list[str], **_: Any) -> list:
    return _train(text, vocab_size, special_tokens, split_specials=False)


@mistake("train_bpe", "no pre-tokenisation: pairs counted across pre-token boundaries (the GPT-2 regex is missing)")
def train_no_pretokenization(text: str, vocab_size: int, special_tokens: list[str], **_: Any) -> list:
    return _train(text, vocab_size, special_tokens, pretokenize="none")


@mistake("train_bpe", "pre-tokenisation by str.split() (whitespace dropped) instead of the GPT-2 regex")
def train_whitespace_split(text: str, vocab_size: int, special_tokens: list[str], **_: Any) -> list:
    return _train(text, vocab_size, special_tokens, pretokenize="split")


# ---------------------------------------------------------------------------------------------- encode


def _encode(
    vocab: dict[int, bytes],
    merges: list[tuple[bytes, bytes]],
    special_tokens: list[str] | None,
    text: str,
    *,
    merge: bool = True,
    shortest_first: bool = False,
    pretokenize: bool = True,
    specials: bool = True,
) -> list[int]:
    id_of = {token: i for i, token in sorted(vocab.items(), reverse=True)}
    rank = {pair: r for r, pair in reversed(list(enumerate(merges)))}
    out: list[int] = []
    for piece, special in _chunks(text, special_tokens if specials else None, shortest_first=shortest_first):
        if special:
            out.append(id_of[piece.encode("utf-8")])
            continue
        if not pretokenize and len(piece) > 300:
            raise ValueError("BPE over a whole text is quadratic: this hint only runs on short texts")
        for word in regex.findall(PATTERN, piece) if pretokenize else [piece]:
            tokens = [bytes([b]) for b in word.encode("utf-8")]
            while merge and len(tokens) > 1:
                best = min(range(len(tokens) - 1), key=lambda i: rank.get((tokens[i], tokens[i + 1]), len(rank)))
                if (tokens[best], tokens[best + 1]) not in rank:
                    break
                tokens[best : best + 2] = [tokens[best] + tokens[best + 1]]
            out.extend(id_of[t] for t in tokens)
    return out


@mistake("encode", "a tokenizer that never applies the merges (one id per byte)")
def encode_no_merges(vocab: dict, merges: list, special_tokens: list[str] | None, text: str, **_: Any) -> list[int]:
    return _encode(vocab, merges, special_tokens, text, merge=False)


@mistake("encode", "special tokens matched shortest first (of overlapping special tokens the longest must win)")
def encode_specials_shortest_first(
    vocab: dict, merges: list, special_tokens: list[str] | None, text: str, **_: Any
) -> list[int]:
    return _encode(vocab, merges, special_tokens, text, shortest_first=True)


@mistake("encode", "no pre-tokenisation before applying the merges (merges across pre-token boundaries)")
def encode_no_pretokenization(
    vocab: dict, merges: list, special_tokens: list[str] | None, text: str, **_: Any
) -> list[int]:
    return _encode(vocab, merges, special_tokens, text, pretokenize=False)


@mistake("encode", "special tokens encoded as ordinary text (they must map to their own single id)")
def encode_specials_as_text(
    vocab: dict, merges: list, special_tokens: list[str] | None, text: str, **_: Any
) -> list[int]:
    return _encode(vocab, merges, special_tokens, text, specials=False)
