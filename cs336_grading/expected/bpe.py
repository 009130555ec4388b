"""Expected values of the tokenizer tests, computed at test time: an obviously correct BPE trainer and
tiktoken built from a vocabulary and its merges.

The grading side of the harness: the graded tests call it, student code never does (under `cs336 grade` it
runs only in the grader's process). It never imports `cs336_basics`. The trainer recounts every pair on every
merge (slow, but each step can be checked by eye).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import regex
import tiktoken

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


# ------------------------------------------------------------------------------------------ training
def naive_train_bpe(
    text: str, vocab_size: int, special_tokens: list[str]
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Textbook BPE training. Ids: 0-255 bytes, then one per merge, then the special tokens."""
    pieces = [text]
    if special_tokens:
        by_length = sorted(special_tokens, key=len, reverse=True)
        pieces = re.split("|".join(re.escape(t) for t in by_length), text)
    words: Counter[tuple[bytes, ...]] = Counter()
    for piece in pieces:
        for pretoken in regex.findall(GPT2_PATTERN, piece):
            words[tuple(bytes([b]) for b in pretoken.encode("utf-8"))] += 1

    merges: list[tuple[bytes, bytes]] = []
    while 256 + len(merges) + len(special_tokens) < vocab_size:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        # The most frequent pair; among equals, the lexicographically greatest pair of byte strings.
        best = max(pairs, key=lambda pair: (pairs[pair], pair))
        merges.append(best)
        merged_words: Counter[tuple[bytes, ...]] = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged_words[tuple(out)] += count
        words = merged_words

    vocab = {i: bytes([i]) for i in range(256)}
    for left, right in merges:
        vocab[len(vocab)] = left + right
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    return vocab, merges


# ------------------------------------------------------------------------------------------ encoding
def tiktoken_encoding(
    vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens: Iterable[str] = ()
) -> tuple[tiktoken.Encoding, dict[int, int]]:
    """A tiktoken encoding with the merges' order as ranks, and a map from its ids to `vocab`'s ids.

    tiktoken ranks every token: single bytes get ranks 0-255 (by byte value), the token made by merge `k`
    gets rank 256 + k, so merging by rank replays the merges in learned order.
    """
    id_of: dict[bytes, int] = {}
    for token_id in sorted(vocab):
        id_of.setdefault(vocab[token_id], token_id)
    ranks = {bytes([b]): b for b in range(256)}
    for left, right in merges:
        ranks.setdefault(left + right, len(ranks))
    specials: dict[str, int] = {}
    for token in dict.fromkeys(special_tokens):
        specials[token] = len(ranks) + len(specials)
    to_vocab = {rank: id_of[token] for token, rank in ranks.items()}
    for token, rank in specials.items():
        to_vocab[rank] = id_of[token.encode("utf-8")]
    encoding = tiktoken.Encoding(
        "oracle-bpe", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=specials, explicit_n_vocab=None
    )
    return encoding, to_vocab
