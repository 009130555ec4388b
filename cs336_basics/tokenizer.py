"""Byte-level BPE encoding and decoding, and the human-readable files a trained tokenizer is saved in.

Encoding a text: split out the special tokens (longest match first), cut the rest into GPT-2 pre-tokens,
and turn each pre-token into ids by BPE: start from its UTF-8 bytes and repeatedly merge the adjacent pair
that was learned earliest. Applying the lowest-ranked pair first gives exactly the result of replaying the
merges in the order they were learned, and a pre-token always gives the same ids, so they are cached.

`Tokenizer.from_files` reads a vocabulary and merges saved in the tools' format (`cs336_lab/tokenizer_files.py`:
`vocab.json` with GPT-2's byte-to-unicode notation, `merges.txt` one merge a line) or in GPT-2's own files.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from itertools import chain
from pathlib import Path

from .pretokenize import blocks, last_safe_cut, pretokens, special_tokens_regex

__all__ = ["Tokenizer"]

# encode_iterable encodes its input in pieces of about this many characters.
_ITERABLE_BUFFER_CHARS = 1 << 14
# The pre-token cache is cleared when it grows past this many entries (bounded memory on huge inputs).
_CACHE_MAX_ENTRIES = 1 << 20
_ID_MASK = (1 << 32) - 1
# Pre-tokens longer than this many bytes take the O(n log n) path of BPE.
_LONG_WORD = 64
_NO_MERGE = 1 << 80  # greater than every packed (rank, id)


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: the printable character that stands for each byte -> the byte."""
    direct = [*range(33, 127), *range(161, 173), *range(174, 256)]  # printable ASCII and Latin-1 stand for themselves
    shifted = [b for b in range(256) if b not in direct]  # the rest become U+0100, U+0101, ... in byte order
    return {chr(b): b for b in direct} | {chr(256 + i): b for i, b in enumerate(shifted)}


class _BPECache(dict):
    """Pre-token -> ids; a missing pre-token is encoded by `compute` and remembered."""

    def __init__(self, compute: Callable[[str], list[int]]) -> None:
        super().__init__()
        self.compute = compute

    def __missing__(self, word: str) -> list[int]:
        ids = self[word] = self.compute(word)
        return ids


class Tokenizer:
    """A byte-level BPE tokenizer: `encode`, `decode`, `encode_iterable`.

    Args:
        vocab: token id -> token bytes.
        merges: the merges in the order they were learned; each pair and its concatenation must be in `vocab`.
        special_tokens: strings never split by encoding; those missing from `vocab` get new ids after the
            largest id. Without special tokens, text such as `<|endoftext|>` is ordinary text.

    >>> vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab"}
    >>> tok = Tokenizer(vocab, [(b"a", b"b")], ["<|endoftext|>"])
    >>> tok.encode("abc<|endoftext|>")
    [256, 99, 257]
    >>> tok.decode([256, 99, 257])
    'abc<|endoftext|>'
    """

    def __init__(
        self,
        vocab: dict[int, bytes],
        merges: list[tuple[bytes, bytes]],
        special_tokens: list[str] | None = None,
    ) -> None:
        self.vocab: dict[int, bytes] = dict(vocab)
        self.merges: list[tuple[bytes, bytes]] = list(merges)
        self.special_tokens: list[str] = list(dict.fromkeys(special_tokens or ()))
        self._ids: dict[bytes, int] = {}
        for token_id in sorted(self.vocab):  # with repeated bytes, the smallest id wins
            self._ids.setdefault(self.vocab[token_id], token_id)

        self._special_ids: dict[str, int] = {}
        for token in self.special_tokens:
            raw = token.encode("utf-8")
            if raw not in self._ids:
                new_id = max(self.vocab, default=-1) + 1
                self.vocab[new_id] = raw
                self._ids[raw] = new_id
            self._special_ids[token] = self._ids[raw]
        self._special_regex = special_tokens_regex(self.special_tokens)
        self._longest_special = max((len(t) for t in self.special_tokens), default=0)

        missing = [bytes([b]) for b in range(256) if bytes([b]) not in self._ids]
        if missing:
            raise ValueError(f"a byte-level vocabulary must contain all 256 single bytes; missing {missing[:8]!r}")
        self._byte_ids: list[int] = [self._ids[bytes([b])] for b in range(256)]
        # (left id, right id) -> rank << 32 | merged id: one int that orders by rank (the lower, the
        # earlier the merge was learned) and carries the id the pair becomes.
        self._merge_ranks: dict[tuple[int, int], int] = {}
        for rank, (left, right) in enumerate(self.merges):
            try:
                pair = (self._ids[left], self._ids[right])
                merged = self._ids[left + right]
            except KeyError:
                raise ValueError(
                    f"merge {rank} {(left, right)!r}: the pair and its result must be in the vocabulary"
                ) from None
            self._merge_ranks.setdefault(pair, rank << 32 | merged)
        self._cache: _BPECache = _BPECache(self._bpe)

    def __getstate__(self) -> dict:
        # The cache can be large and is cheap to rebuild: leave it out when sent to worker processes.
        return {key: value for key, value in self.__dict__.items() if key != "_cache"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._cache = _BPECache(self._bpe)

    # ---------------------------------------------------------------- construction from files
    @classmethod
    def from_files(
        cls,
        vocab_filepath: str | os.PathLike,
        merges_filepath: str | os.PathLike,
        special_tokens: list[str] | None = None,
    ) -> Tokenizer:
        """Load a vocabulary and merges saved by `cs336 train-bpe` (or in GPT-2's own format).

        Special tokens default to those the vocabulary file lists.
        """
        data = json.loads(Path(vocab_filepath).read_text(encoding="utf-8"))
        table = _byte_of_char()
        as_bytes = lambda text: bytes([table[c] for c in text])  # noqa: E731
        if data.get("format") == "cs336-bpe":  # {"vocab": {id: token}, "special_tokens": [...]}
            vocab = {int(i): as_bytes(token) for i, token in data["vocab"].items()}
            special_tokens = data.get("special_tokens", []) if special_tokens is None else special_tokens
        else:  # GPT-2: {token: id}
            vocab = {i: as_bytes(token) for token, i in data.items()}
        lines = Path(merges_filepath).read_text(encoding="utf-8").splitlines()
        merges = [tuple(map(as_bytes, line.split(" "))) for line in lines if line and not line.startswith("#version")]
        return cls(vocab, merges, special_tokens)  # type: ignore[arg-type]

    @property
    def vocab_size(self) -> int:
        """The number of ids (special tokens included)."""
        return len(self.vocab)

    def token_to_id(self, token: str | bytes) -> int:
        """The id of a token given as bytes or as text (e.g. a special token); KeyError if absent."""
        raw = token.encode("utf-8") if isinstance(token, str) else token
        return self._ids[raw]

    # ---------------------------------------------------------------- encoding
    def encode(self, text: str) -> list[int]:
        """The token ids of `text`."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids: list[int] = []
        if self._special_regex is None:
            self._encode_ordinary(text, ids)
            return ids
        for i, piece in enumerate(self._special_regex.split(text)):
            if i % 2:
                ids.append(self._special_ids[piece])
            elif piece:
                self._encode_ordinary(piece, ids)
        return ids

    def _encode_ordinary(self, text: str, ids: list[int]) -> None:
        """Append the ids of `text`, which holds no special tokens, to `ids`."""
        if len(self._cache) > _CACHE_MAX_ENTRIES:
            self._cache.clear()
        # The hot loop runs in C: a cache hit is a dict lookup, a miss calls `_bpe` via `__missing__`.
        # Long texts go in blocks, so that the list of pre-tokens stays small.
        for block in blocks(text, 1 << 20) if len(text) > 1 << 20 else (text,):
            ids.extend(chain.from_iterable(map(self._cache.__getitem__, pretokens(block))))

    def _bpe(self, word: str) -> list[int]:
        """The ids of one pre-token: merge the earliest-learned adjacent pair until none is left.

        `ranks[i]` is the packed rank of the pair `(ids[i], ids[i+1])`; a merge changes only its two
        neighbours. Among equal ranks `index` finds the leftmost pair, which is the same as merging every
        occurrence left to right: a pair made by a merge was learned after it, so it cannot jump the queue.
        """
        ids = list(map(self._byte_ids.__getitem__, word.encode("utf-8")))
        if len(ids) > _LONG_WORD:
            return self._bpe_long(ids)
        lookup = self._merge_ranks.get
        ranks = [lookup(pair, _NO_MERGE) for pair in zip(ids, ids[1:])]
        while ranks:
            best = min(ranks)
            if best == _NO_MERGE:
                break
            i = ranks.index(best)
            merged = best & _ID_MASK
            ids[i] = merged
            del ids[i + 1], ranks[i]
            if i > 0:
                ranks[i - 1] = lookup((ids[i - 1], merged), _NO_MERGE)
            if i < len(ranks):
                ranks[i] = lookup((merged, ids[i + 1]), _NO_MERGE)
        return ids

    def _bpe_long(self, ids: list[int]) -> list[int]:
        """`_bpe` in O(n log n) for long pre-tokens (a run of 100k "=" would take minutes in O(n^2)).

        The same choice at every step, the lowest (rank, position), from a heap of candidate pairs over a
        linked list of positions; an entry whose pair has changed since it was pushed is skipped.
        """
        lookup = self._merge_ranks.get
        n = len(ids)
        tokens = list(ids)
        following = list(range(1, n + 1))  # the next live position (n: none)
        preceding = list(range(-1, n - 1))  # the previous live position (-1: none)
        heap = [(rank, i) for i, pair in enumerate(zip(ids, ids[1:])) if (rank := lookup(pair)) is not None]
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = following[i]
            if j >= n or tokens[i] < 0 or lookup((tokens[i], tokens[j])) != rank:
                continue  # stale: position i was merged away, or its pair changed
            merged = rank & _ID_MASK
            tokens[i], tokens[j] = merged, -1
            following[i] = k = following[j]
            if k < n:
                preceding[k] = i
                if (new := lookup((merged, tokens[k]))) is not None:
                    heapq.heappush(heap, (new, i))
            if (p := preceding[i]) >= 0 and (new := lookup((tokens[p], merged))) is not None:
                heapq.heappush(heap, (new, p))
        return [t for t in tokens if t >= 0]

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        """Lazily yield the ids of the concatenation of `iterable` (e.g. an open text file).

        The ids equal `encode("".join(iterable))` however the input is cut into pieces. Text is held back
        only until a place where cutting cannot change the result: a non-space followed by a space, or the
        end of a special token. Memory stays bounded by the input's longest stretch without such a place
        (plus the pre-token cache), not by its length.
        """
        pending: list[str] = []
        pending_chars = 0
        threshold = _ITERABLE_BUFFER_CHARS
        for chunk in iterable:
            pending.append(chunk)
            pending_chars += len(chunk)
            if pending_chars < threshold:
                continue
            buffer = "".join(pending)
            cut = self._last_safe_cut(buffer)
            if cut > 0:
                yield from self.encode(buffer[:cut])
                buffer = buffer[cut:]
            # No safe cut yet (a long run without spaces): look again only once the buffer has doubled, so
            # that joining stays linear in the input.
            threshold = _ITERABLE_BUFFER_CHARS if cut > 0 else 2 * len(buffer)
            pending, pending_chars = [buffer], len(buffer)
        yield from self.encode("".join(pending))

    def _last_safe_cut(self, text: str) -> int:
        """A position `p` such that the ids of `text[:p]` do not depend on what follows `text` (0 if none)."""
        if self._special_regex is None:
            return max(last_safe_cut(text), 0)
        # A special token that starts before `limit` is decided by the text we have; one after may yet grow.
        limit = len(text) - self._longest_special + 1
        region = 0
        for match in self._special_regex.finditer(text, 0, len(text)):
            if match.start() >= limit:
                break
            region = match.end()
        cut = last_safe_cut(text, region, min(limit + 1, len(text))) if region < limit else -1
        return max(cut, region)

    # ---------------------------------------------------------------- decoding
    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; byte sequences that are not valid UTF-8 become U+FFFD."""
        ids = list(ids)
        try:
            raw = b"".join(map(self.vocab.__getitem__, ids))
        except (KeyError, TypeError):
            bad = next(i for i in ids if not isinstance(i, int) or i not in self.vocab)
            raise ValueError(
                f"cannot decode token id {bad!r}: expected an int id in the vocabulary of {len(self.vocab)} tokens"
            ) from None
        return raw.decode("utf-8", errors="replace")
