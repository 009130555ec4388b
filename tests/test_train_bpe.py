"""Grading tests for BPE training (`run_train_bpe`): merge for merge equal to an obviously correct trainer.

The merges' order is checked exactly. The vocabulary is checked as a mapping onto ids `0 .. V-1` holding
the right byte strings, so any id layout (special tokens first or last) passes.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cs336_grading.expected.bpe import naive_train_bpe
from tests.cases import ENDOFTEXT

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


def write_corpus(directory: Path, text: str) -> Path:
    path = directory / f"corpus_{next(_file_counter)}.txt"
    path.write_bytes(text.encode("utf-8"))
    return path


def test_train_bpe_hand_worked(tmp_path: Path) -> None:
    # Pre-tokens: "low" once, " low" twice. Pair counts: (l,o) 3, (o,w) 3, ( ,l) 2. The tie between
    # (l,o) and (o,w) goes to the greater pair (o,w); then (l,ow) 3; then ( ,low) 2.
    path = write_corpus(tmp_path, "low low low")
    vocab, merges = run_train_bpe(path, 256 + 3, [])
    assert [tuple(m) for m in merges] == [(b"o", b"w"), (b"l", b"ow"), (b" ", b"low")]
    assert sorted(vocab.values()) == sorted([bytes([b]) for b in range(256)] + [b"ow", b"low", b" low"])


def test_train_bpe_tie_break_compares_bytes_not_ids(tmp_path: Path) -> None:
    # Pre-tokens "abc", " abc", " zy" x2, " ab". First (a,b) with 3. Then four pairs tie at 2:
    # ( ,ab) ( ,z) (ab,c) (z,y). As byte strings (b"z", b"y") is the greatest; comparing ids instead
    # would pick (ab,c), since "ab" has id >= 256 > ord("z").
    path = write_corpus(tmp_path, "abc abc zy zy ab")
    expected = naive_train_bpe(path.read_bytes().decode("utf-8"), 256 + 4, [])
    assert expected[1][:2] == [(b"a", b"b"), (b"z", b"y")]
    assert_same_training(run_train_bpe(path, 256 + 4, []), expected)


@pytest.mark.parametrize(
    ("fixture", "num_merges"),
    [("bpe_corpus_small.txt", 300), ("bpe_corpus_medium.txt", 243)],
    ids=["small-300", "medium-243"],
)
def test_train_bpe_matches_naive_trainer(fixtures_dir: Path, fixture: str, num_merges: int) -> None:
    path = fixtures_dir / fixture
    expected = naive_train_bpe(path.read_bytes().decode("utf-8"), 256 + 1 + num_merges, [ENDOFTEXT])
    assert_same_training(run_train_bpe(path, 256 + 1 + num_merges, [ENDOFTEXT]), expected)


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
    expected = naive_train_bpe(text, 256 + len(specials) + 8, specials)
    assert_same_training(run_train_bpe(path, 256 + len(specials) + 8, specials), expected)


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
