"""Training a byte-level BPE tokenizer: parallel pre-token counting, then incremental merges.

The algorithm (Sennrich et al. 2016, byte-level as in GPT-2):

1. Split the corpus on the special tokens, cut every piece into GPT-2 pre-tokens, count the pre-tokens.
   Large files are cut at safe boundaries (`chunking.find_chunk_boundaries`) and counted in parallel.
2. Start from one token per byte. Repeatedly merge the most frequent adjacent pair of tokens, counted over
   all pre-tokens weighted by their frequency; ties go to the lexicographically greater pair of byte
   strings, e.g. `(b"s", b"t")` beats `(b"e", b"s")`. Pairs never span two pre-tokens.

Instead of recounting every pair after each merge, we keep the pair counts, an index from each pair to
the words containing it, and a max-heap of pairs. A merge only touches the words that contain its pair;
their pairs are uncounted, the words rewritten, and their new pairs counted back. Heap entries go stale
when a count drops; a stale entry is noticed when it reaches the top and is pushed again with its current
count (counts only ever grow for pairs with the newly created token, and those are pushed afresh).

Token ids of the result: 0-255 are the single bytes (id = byte value), then the special tokens in the
order given, then the merged tokens in the order learned. `len(vocab) == vocab_size` unless the corpus
runs out of pairs first (then training stops early, e.g. an empty corpus gives no merges).
"""

from __future__ import annotations

import heapq
import os
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .chunking import default_workers, find_chunk_boundaries, progress_bar, read_chunk_text, worker_context
from .pretokenize import count_pretokens

__all__ = ["train_bpe", "count_file_pretokens", "learn_merges"]

# Each worker reads at most this many bytes at a time, so memory stays bounded on large files.
_TARGET_CHUNK_BYTES = 16 << 20
# Below this size, starting processes costs more than it saves.
_PARALLEL_MIN_BYTES = 2 << 20


def train_bpe(
    input_path: str | os.PathLike,
    vocab_size: int,
    special_tokens: list[str],
    *,
    num_workers: int | None = None,
    show_progress: bool = False,
) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """Train a byte-level BPE tokenizer on the UTF-8 text file `input_path`.

    Args:
        vocab_size: the final vocabulary size, counting the 256 bytes and the special tokens.
        special_tokens: strings kept whole, given ids 256, 257, ...; they never take part in merges.
        num_workers: processes for pre-tokenisation (default: the CPUs available; 1 = in this process).
        show_progress: draw progress bars (counting and merging).

    Returns:
        (vocab, merges): id -> token bytes, and the merges in the order they were learned.

    Raises:
        FileNotFoundError: `input_path` does not exist. ValueError: `vocab_size` below 256 + the number of
        special tokens, or a corpus that is not valid UTF-8 (the message gives the byte offset).
    """
    path = Path(input_path)
    if not path.is_file():
        raise FileNotFoundError(f"BPE training corpus {str(path)!r} does not exist or is not a file")
    special_tokens = list(dict.fromkeys(special_tokens))  # drop repeats, keep the order
    if not isinstance(vocab_size, int) or vocab_size < 256 + len(special_tokens):
        raise ValueError(
            f"vocab_size must be an int >= 256 + {len(special_tokens)} special tokens = "
            f"{256 + len(special_tokens)}, got {vocab_size!r}"
        )
    word_counts = count_file_pretokens(path, special_tokens, num_workers=num_workers, show_progress=show_progress)
    num_merges = vocab_size - 256 - len(special_tokens)
    merges = learn_merges({w.encode("utf-8"): c for w, c in word_counts.items()}, num_merges, show_progress)

    vocab: dict[int, bytes] = {i: bytes([i]) for i in range(256)}
    for token in special_tokens:
        vocab[len(vocab)] = token.encode("utf-8")
    for left, right in merges:
        vocab[len(vocab)] = left + right
    return vocab, merges


def count_file_pretokens(
    path: str | os.PathLike,
    special_tokens: list[str],
    *,
    num_workers: int | None = None,
    show_progress: bool = False,
) -> Counter[str]:
    """Count the pre-tokens of a UTF-8 file, reading it chunk by chunk, in parallel when it is large."""
    if num_workers is None:
        num_workers = default_workers()
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    size = os.path.getsize(path)
    num_chunks = max(num_workers, -(-size // _TARGET_CHUNK_BYTES))
    with open(path, "rb") as f:
        bounds = find_chunk_boundaries(f, num_chunks, special_tokens)
    jobs = [(str(path), start, end, special_tokens) for start, end in zip(bounds[:-1], bounds[1:])]
    total: Counter[str] = Counter()
    bar = progress_bar(show_progress, total=size, unit="B", unit_scale=True, desc="pre-tokenising")
    with bar:
        if num_workers == 1 or size < _PARALLEL_MIN_BYTES or len(jobs) == 1:
            results = map(_count_chunk, jobs)
            for (_, start, end, _), counts in zip(jobs, results):
                total.update(counts)
                bar.update(end - start)
        else:
            with ProcessPoolExecutor(min(num_workers, len(jobs)), mp_context=worker_context()) as pool:
                for (_, start, end, _), counts in zip(jobs, pool.map(_count_chunk, jobs)):
                    total.update(counts)
                    bar.update(end - start)
    return total


def _count_chunk(job: tuple[str, int, int, list[str]]) -> Counter[str]:
    """Pre-token counts of the bytes `[start, end)` of a file (runs in a worker process)."""
    path, start, end, special_tokens = job
    text = read_chunk_text(path, start, end)
    # NOTE: a file written on Windows has "\r\n" line ends; we keep them as they are (they are just bytes).
    return count_pretokens(text, special_tokens)


def _descending_key(token: bytes) -> tuple[int, ...]:
    """A key that sorts byte strings in reverse lexicographic order: `a > b` iff `key(a) < key(b)`.

    Each byte b becomes 255 - b and a final 256 stands for "the string ends here", above every byte, so a
    proper prefix (lexicographically smaller) gets the greater key. Tuples of ints compare in C: a heap of
    them breaks count ties without calling back into Python.

    >>> sorted([b"ab", b"a", b"b", b"abc"], key=_descending_key)
    [b'b', b'abc', b'ab', b'a']
    """
    return (*(255 - b for b in token), 256)


def learn_merges(
    word_counts: dict[bytes, int], num_merges: int, show_progress: bool = False
) -> list[tuple[bytes, bytes]]:
    """Learn up to `num_merges` BPE merges from pre-token counts (fewer if the pairs run out).

    >>> learn_merges({b"low": 5, b"lower": 2, b"newest": 6, b"widest": 3}, 3)
    [(b's', b't'), (b'e', b'st'), (b'o', b'w')]
    """
    token_bytes: list[bytes] = [bytes([i]) for i in range(256)]  # internal ids: byte value, then 256 + merge
    tie_keys = [_descending_key(token) for token in token_bytes]  # ties go to the greater pair of byte strings
    words: list[list[int]] = [list(word) for word in word_counts]
    freqs: list[int] = list(word_counts.values())

    pair_counts: dict[tuple[int, int], int] = defaultdict(int)
    pair_words: dict[tuple[int, int], set[int]] = defaultdict(set)  # may also hold words that lost the pair
    for index, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            pair_words[pair].add(index)

    def entry(pair: tuple[int, int], count: int) -> tuple[int, tuple[int, ...], tuple[int, ...], tuple[int, int]]:
        return (-count, tie_keys[pair[0]], tie_keys[pair[1]], pair)

    heap = [entry(pair, count) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[bytes, bytes]] = []
    bar = progress_bar(show_progress, total=num_merges, unit="merge", desc="merging")
    while len(merges) < num_merges and heap:
        neg_count, _, _, pair = heapq.heappop(heap)
        count = pair_counts.get(pair, 0)
        if count != -neg_count:  # stale: the count dropped since this entry was pushed
            if count > 0:
                heapq.heappush(heap, entry(pair, count))
            continue
        left, right = pair
        new_id = len(token_bytes)
        token_bytes.append(token_bytes[left] + token_bytes[right])
        tie_keys.append(_descending_key(token_bytes[-1]))
        merges.append((token_bytes[left], token_bytes[right]))
        bar.update()

        for new in _apply_merge(pair, new_id, words, freqs, pair_counts, pair_words):
            heapq.heappush(heap, entry(new, pair_counts[new]))
    bar.close()
    return merges


def _apply_merge(
    pair: tuple[int, int],
    new_id: int,
    words: list[list[int]],
    freqs: list[int],
    pair_counts: dict[tuple[int, int], int],
    pair_words: dict[tuple[int, int], set[int]],
) -> set[tuple[int, int]]:
    """Merge `pair` into `new_id` in every word that holds it, updating the counts and the index in place.

    Returns the pairs with the new token: their counts only grew, so they need fresh heap entries.
    """
    left, right = pair
    grown: set[tuple[int, int]] = set()
    for index in pair_words.pop(pair):
        word = words[index]
        merged = _merge_word(word, left, right, new_id)
        if len(merged) == len(word):
            continue  # the index was stale: this word lost the pair to an earlier merge
        freq = freqs[index]
        for old in zip(word, word[1:]):
            pair_counts[old] -= freq
        for new in zip(merged, merged[1:]):
            pair_counts[new] += freq
            if new_id in new:
                pair_words[new].add(index)
                grown.add(new)
        words[index] = merged
    del pair_counts[pair]
    return grown


def _merge_word(word: list[int], left: int, right: int, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `(left, right)` in `word`, left to right, by `new_id`.

    >>> _merge_word([1, 1, 1, 2], 1, 1, 9)
    [9, 1, 2]
    """
    out: list[int] = []
    i, n = 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == left and word[i + 1] == right:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out
