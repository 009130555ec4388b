"""Grading tests for BPE training (`run_train_bpe`): merge for merge equal to an obviously correct trainer.

The merges' order is checked exactly. The vocabulary is checked as a mapping onto ids `0 .. V-1` holding
the right byte strings, so any id layout (special tokens first or last) passes. A failing comparison names
the catalogued mistake the merges match (`tests/hints.py`). The speed test is a ratio measured in the
test itself (see `test_train_bpe_merges_are_incremental`), never seconds alone.
"""

from __future__ import annotations

import itertools
import random
import string
import time
from collections import Counter
from pathlib import Path

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cs336_grading.expected.bpe import GPT2_PATTERN, naive_train_bpe
from tests.cases import ENDOFTEXT
from tests.hints import hinted

from .adapters import run_train_bpe

_file_counter = itertools.count()


def assert_same_training(
    actual: tuple[dict[int, bytes], list[tuple[bytes, bytes]]],
    expected: tuple[dict[int, bytes], list[tuple[bytes, bytes]]],
) -> None:
    vocab, merges = actual
    expected_vocab, expected_merges = expected
    merges = [tuple(m) for m in merges]
    for i, (got, want) in enumerate(zip(merges, expected_merges)):
        assert got == want, f"merge {i} differs: got {got!r}, expected {want!r} (earlier merges agree)"
    assert len(merges) == len(expected_merges), f"{len(merges)} merges, expected {len(expected_merges)}"
    assert sorted(vocab) == list(range(len(vocab))), "vocabulary ids must be exactly 0 .. V-1"
    assert sorted(vocab.values()) == sorted(expected_vocab.values())


def assert_trains_like_naive(path: Path, text: str, vocab_size: int, specials: list[str]) -> None:
    """Train with the student's trainer and compare with the naive trainer, naming a matching mistake."""
    actual, expected = run_train_bpe(path, vocab_size, specials), naive_train_bpe(text, vocab_size, specials)
    merges = [tuple(m) for m in actual[1]]
    with hinted("train_bpe", merges, expected[1], text=text, vocab_size=vocab_size, special_tokens=specials):
        assert_same_training(actual, expected)


def write_corpus(directory: Path, text: str) -> Path:
    path = directory / f"corpus_{next(_file_counter)}.txt"
    path.write_bytes(text.encode("utf-8"))
    return path


def test_train_bpe_hand_worked(tmp_path: Path) -> None:
    # Pre-tokens: "low" once, " low" twice. Pair counts: (l,o) 3, (o,w) 3, ( ,l) 2. The tie between
    # (l,o) and (o,w) goes to the greater pair (o,w); then (l,ow) 3; then ( ,low) 2.
    path = write_corpus(tmp_path, "low low low")
    vocab, merges = run_train_bpe(path, 256 + 3, [])
    merges = [tuple(m) for m in merges]
    expected = [(b"o", b"w"), (b"l", b"ow"), (b" ", b"low")]
    with hinted("train_bpe", merges, expected, text="low low low", vocab_size=256 + 3, special_tokens=[]):
        assert merges == expected
    assert sorted(vocab.values()) == sorted([bytes([b]) for b in range(256)] + [b"ow", b"low", b" low"])


def test_train_bpe_tie_break_compares_bytes_not_ids(tmp_path: Path) -> None:
    # Pre-tokens "abc", " abc", " zy" x2, " ab". First (a,b) with 3. Then four pairs tie at 2:
    # ( ,ab) ( ,z) (ab,c) (z,y). As byte strings (b"z", b"y") is the greatest; comparing ids instead
    # would pick (ab,c), since "ab" has id >= 256 > ord("z").
    path = write_corpus(tmp_path, "abc abc zy zy ab")
    assert naive_train_bpe("abc abc zy zy ab", 256 + 4, [])[1][:2] == [(b"a", b"b"), (b"z", b"y")]
    assert_trains_like_naive(path, "abc abc zy zy ab", 256 + 4, [])


@pytest.mark.parametrize(
    ("fixture", "num_merges"),
    [("bpe_corpus_small.txt", 300), ("bpe_corpus_medium.txt", 243)],
    ids=["small-300", "medium-243"],
)
def test_train_bpe_matches_naive_trainer(fixtures_dir: Path, fixture: str, num_merges: int) -> None:
    path = fixtures_dir / fixture
    assert_trains_like_naive(path, path.read_bytes().decode("utf-8"), 256 + 1 + num_merges, [ENDOFTEXT])


def test_train_bpe_special_tokens_are_never_merged(fixtures_dir: Path) -> None:
    path = fixtures_dir / "bpe_corpus_small.txt"
    vocab, merges = run_train_bpe(path, 256 + 1 + 200, [ENDOFTEXT])
    assert list(vocab.values()).count(ENDOFTEXT.encode()) == 1
    # The corpus holds "<|" only inside special tokens: no learned token may contain it.
    assert not any(b"<|" in left + right or b"|>" in left + right for left, right in merges)


def test_train_bpe_overlapping_special_tokens(tmp_path: Path) -> None:
    specials = ["<|eot|>", "<|eot|><|eot|>", "[X]"]
    text = "ab<|eot|>ab ab<|eot|><|eot|>abc [X]<|eot|> ab [X][X]ab ba ab<|eot|><|eot|><|eot|>"
    path = write_corpus(tmp_path, text)
    assert_trains_like_naive(path, text, 256 + len(specials) + 8, specials)


_FRAGMENTS = ["a", "b", "ab", "ba", " ", "  ", "\n", "\n\n", "\t", "é", "😀", "7", "42", "'s", "'ll", ".", ",", "!?"]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    pieces=st.lists(st.sampled_from([*_FRAGMENTS, ENDOFTEXT]), min_size=1, max_size=80),
    num_merges=st.integers(min_value=0, max_value=25),
)
def test_train_bpe_random_corpora(tmp_path: Path, pieces: list[str], num_merges: int) -> None:
    text = "".join(pieces)
    path = write_corpus(tmp_path, text)
    expected = naive_train_bpe(text, 256 + 1 + num_merges, [ENDOFTEXT])
    # Training may stop early when no pair is left; then both trainers must stop at the same place.
    if len(expected[1]) < num_merges:
        num_merges = len(expected[1])
        expected = naive_train_bpe(text, 256 + 1 + num_merges, [ENDOFTEXT])
    assert_same_training(run_train_bpe(path, 256 + 1 + num_merges, [ENDOFTEXT]), expected)


# ---------------------------------------------------------------------------------------------- speed


def _zipf_corpus(seed: int = 0, num_types: int = 20_000, num_words: int = 100_000) -> str:
    """~0.8 MB of random lower-case words with Zipf frequencies: many word types, most pairs rare."""
    rng = random.Random(seed)
    types = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(4, 10))) for _ in range(num_types)]
    words = rng.choices(types, [1 / (i + 1) for i in range(num_types)], k=num_words)
    lines = [" ".join(words[i : i + 12]) for i in range(0, num_words, 12)]
    return "\n".join(line + (ENDOFTEXT if i % 50 == 49 else "") for i, line in enumerate(lines)) + "\n"


def _naive_step_seconds(text: str) -> float:
    """The core of one naive merge, timed here and now: recount every pair of every word type (best of 3)."""
    words = Counter(tuple(w.encode("utf-8")) for w in regex.findall(GPT2_PATTERN, text.replace(ENDOFTEXT, "\n")))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        pairs: Counter[tuple[int, int]] = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        best = min(best, time.perf_counter() - start)
    return best


def _seconds(path: Path, num_merges: int) -> tuple[float, list]:
    start = time.perf_counter()
    _, merges = run_train_bpe(path, 256 + 1 + num_merges, [ENDOFTEXT])
    return time.perf_counter() - start, merges


@pytest.mark.slow
def test_train_bpe_merges_are_incremental(tmp_path: Path) -> None:
    """100 more merges must cost less than 50 naive recounts of every pair, timed in this test.

    The stated speed requirement (the upstream suite asks for < 1.5 s on its corpus): merges update the
    pair counts incrementally instead of recounting every pair of every word after each merge. Measured
    on a loaded 2-core machine: the naive trainer spends ~215 recounts on the 100 merges (4x over the
    bound), a plain-Python trainer with a pair-to-words index and max() over all pairs ~12 (4x under),
    ours ~8. Both sides are timed in the same test, so a loaded machine slows both;
    extra merges minus few merges cancels fixed costs (reading the file, pre-tokenising, process start).
    """
    text = _zipf_corpus()
    path = write_corpus(tmp_path, text)
    few, more = 20, 120
    small = min(_seconds(path, few)[0] for _ in range(2))
    large, merges = _seconds(path, more)
    assert len(merges) == more, f"asked for {more} merges, got {len(merges)}"
    assert [tuple(m) for m in merges[:few]] == naive_train_bpe(text, 256 + 1 + few, [ENDOFTEXT])[1]
    bound = 50 * max(_naive_step_seconds(text), 1e-3)
    if large - small >= bound:  # one retry: a single slow run on a busy machine is not the trainer's fault
        large = min(large, _seconds(path, more)[0])
        bound = max(bound, 50 * _naive_step_seconds(text))
    assert large - small < bound, (
        f"{more - few} extra merges took {large - small:.2f} s, more than 50 naive recounts of every pair "
        f"({bound:.2f} s on this machine now): update pair counts incrementally instead of recounting"
    )
