"""A second, independent implementation of BPE training and of the tokenizer, written like a student would,
with switches that each turn one realistic mistake on (see `suite_student_model.py` for the idea).

The trainer keeps pair counts and a pair -> words index and picks the best pair with max() over all pairs
each merge: the plain-Python solution most students write, which the speed test must accept. The tokenizer
streams by cutting its buffer between a letter and a space followed by a letter (a boundary the GPT-2
pattern never moves) and caches the ids of every pre-token.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import regex

from cs336_grading.expected.bpe import naive_train_bpe

PATTERN = regex.compile(r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def _split(text: str, specials: list[str], shortest_first: bool = False) -> list[str]:
    if not specials:
        return [text]
    ordered = sorted(specials, key=len, reverse=not shortest_first)
    return regex.split("(" + "|".join(map(regex.escape, ordered)) + ")", text)


def _pretokens(text: str, specials: list[str], mode: str, split_specials: bool) -> Counter:
    counts: Counter[tuple[bytes, ...]] = Counter()
    pieces = _split(text, specials) if split_specials else [text]
    for i, piece in enumerate(pieces):
        if split_specials and specials and i % 2:
            continue
        words = {"gpt2": PATTERN.findall, "none": lambda s: [s] if s else [], "split": str.split}[mode](piece)
        for word in words:
            counts[tuple(bytes([b]) for b in word.encode("utf-8"))] += 1
    return counts


def _best(pairs: Counter, tie: str, ids: dict[bytes, int]) -> tuple[bytes, bytes]:
    if tie == "smaller":
        return min(pairs, key=lambda p: (-pairs[p], p))
    if tie == "ids":
        return max(pairs, key=lambda p: (pairs[p], ids[p[0]], ids[p[1]]))
    return max(pairs, key=lambda p: (pairs[p], p))


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: list[str],
    *,
    tie: str = "greater",
    pretokenize: str = "gpt2",
    split_specials: bool = True,
    naive: bool = False,
    **_: Any,
) -> tuple:
    with open(input_path, encoding="utf-8") as f:
        text = f.read()
    if naive:
        return naive_train_bpe(text, vocab_size, special_tokens)
    words = [[list(w), n] for w, n in _pretokens(text, special_tokens, pretokenize, split_specials).items()]
    pairs: Counter[tuple[bytes, bytes]] = Counter()
    where: defaultdict[tuple[bytes, bytes], set[int]] = defaultdict(set)
    for i, (word, n) in enumerate(words):
        for pair in zip(word, word[1:]):
            pairs[pair] += n
            where[pair].add(i)
    ids = {bytes([b]): b for b in range(256)}
    merges: list[tuple[bytes, bytes]] = []
    while 256 + len(special_tokens) + len(merges) < vocab_size and pairs:
        best = _best(pairs, tie, ids)
        merges.append(best)
        ids[best[0] + best[1]] = len(ids)
        for i in where.pop(best):
            word, n = words[i]
            for pair in zip(word, word[1:]):
                pairs[pair] -= n
                if pairs[pair] <= 0:
                    del pairs[pair]
            merged, j = [], 0
            while j < len(word):
                if j + 1 < len(word) and word[j] == best[0] and word[j + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    j += 2
                else:
                    merged.append(word[j])
                    j += 1
            words[i][0] = merged
            for pair in zip(merged, merged[1:]):
                pairs[pair] += n
                where[pair].add(i)
    vocab = {i: bytes([i]) for i in range(256)}
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    for left, right in merges:
        vocab[len(vocab)] = left + right
    return vocab, merges


class Tokenizer:
    """Byte-level BPE by merge rank; `options` switch mistakes on (see `adapters`)."""

    _shared: dict[str, list[int]] = {}

    def __init__(
        self, vocab: dict[int, bytes], merges: list, special_tokens: list[str] | None = None, **options: Any
    ) -> None:
        self.vocab = dict(vocab)
        self.specials = list(special_tokens or [])
        for token in self.specials:
            if token.encode("utf-8") not in self.vocab.values():
                self.vocab[max(self.vocab) + 1] = token.encode("utf-8")
        self.ids = {token: i for i, token in self.vocab.items()}
        self.ranks = {tuple(pair): r for r, pair in enumerate(merges)}
        self.options = options
        # "class_cache": one cache for every instance (a class attribute), a mistake when two vocabularies meet.
        self.cache: dict[str, list[int]] = Tokenizer._shared if options.get("class_cache") else {}

    def _word(self, word: str) -> list[int]:
        if word not in self.cache:
            parts = [bytes([b]) for b in word.encode("utf-8")]
            while len(parts) > 1 and not self.options.get("no_merges"):
                ranked = [
                    (self.ranks.get((a, b), len(self.ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))
                ]
                rank, i = min(ranked)
                if rank == len(self.ranks):
                    break
                parts[i : i + 2] = [parts[i] + parts[i + 1]]
            self.cache[word] = [self.ids[p] for p in parts]
        return self.cache[word]

    def encode(self, text: str) -> list[int]:
        specials = [] if self.options.get("specials_as_text") else self.specials
        out: list[int] = []
        for i, piece in enumerate(_split(text, specials, self.options.get("shortest_first", False))):
            if specials and i % 2:
                out.append(self.ids[piece.encode("utf-8")])
            elif self.options.get("no_pretokenize"):
                out.extend(self._word(piece) if piece else [])
            else:
                for word in PATTERN.findall(piece):
                    out.extend(self._word(word))
        return out

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        strategy = self.options.get("stream", "buffered")
        if strategy == "read_all":
            yield from self.encode("".join(iterable))
            return
        buffer = ""
        for chunk in iterable:
            if strategy == "per_chunk":
                yield from self.encode(chunk)
                continue
            buffer += chunk
            if strategy == "flush_at_whitespace" and buffer[-1:].isspace():  # wrong: "\n\n" + "a" re-splits
                yield from self.encode(buffer)
                buffer = ""
                continue
            cut = self._safe_cut(buffer)
            if cut > 0:
                yield from self.encode(buffer[:cut])
                buffer = buffer[cut:]
        yield from self.encode(buffer)

    @staticmethod
    def _safe_cut(text: str) -> int:
        """The last position between a letter and ' x' (x a letter): pre-tokens never span it."""
        i = text.rfind(" ", 0, len(text) - 1)
        while i > 0:
            if text[i - 1].isascii() and text[i - 1].isalpha() and text[i + 1].isascii() and text[i + 1].isalpha():
                return i
            i = text.rfind(" ", 0, i)
        return 0

    def decode(self, ids: list[int]) -> str:
        errors = "strict" if self.options.get("strict_decode") else "replace"
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors=errors)


def adapters(tokenizer: dict[str, Any] | None = None, trainer: dict[str, Any] | None = None) -> dict[str, Any]:
    """The BPE adapters of this implementation, with the given tokenizer options and trainer switches."""
    return {
        "get_tokenizer": lambda vocab, merges, special_tokens=None: Tokenizer(
            vocab, merges, special_tokens, **(tokenizer or {})
        ),
        "run_train_bpe": lambda path, vocab_size, special_tokens, **kw: train_bpe(
            path, vocab_size, special_tokens, **(trainer or {})
        ),
    }
