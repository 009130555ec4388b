"""Grading tests for the BPE tokenizer (`get_tokenizer`): ids equal tiktoken's, round trips, streaming.

The expected ids come from tiktoken, built from the same vocabulary (merge order as ranks), the same
regex and the same special tokens. The vocabulary was trained by the oracle's naive trainer on a bundled
corpus (`tests/fixtures/bpe_small_merges.txt`); when `../shared/data/gpt2` exists, GPT-2's own vocabulary
is checked too.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cs336_grading.expected.bpe import load_gpt2_files, merges_from_text, tiktoken_encoding
from tests import scenarios
from tests.cases import ENDOFTEXT, SHARED_DATA
from tests.measure import peak_rss_growth

from .adapters import get_tokenizer

TEXTS = {
    "empty": "",
    "ascii": "Hello, world! This is a test of the tokenizer.",
    "accents": "Café, naïve résumé; Zürich façade. Ça va? Élan, ñandú, Ærø, smørrebrød.",
    "emoji": "I 😀 love 🚀 rockets 👍🏽 and flags 🇫🇷🇯🇵; ZWJ family 👨‍👩‍👧 ok",
    "cjk": "東京は日本の首都です。北京欢迎你！안녕하세요 세계. こんにちは、世界",
    "space-runs": "a  b   c    d\t\te \t f     ",
    "newlines": "line one\n\nline two\n\n\n\nline three\r\nwindows\r\n",
    "indentation": "def f(x):\n    if x:\n        return 1\n\treturn  2\n    \n",
    "code": "for (int i = 0; i < n; ++i) { a[i] += b[i] * 2; }  // loop\n#include <stdio.h>",
    "digits": "In 2024, 3.14159 and 1,000,000 and 0x1F and 12345678901234567890 and ٣٤٥ and Ⅻ.",
    "contractions": "I'm sure you're right: they've said we'll go, it's his, don't 'S 'LL 'll've",
    "special": f"Hello{ENDOFTEXT}world",
    "special-back-to-back": f"{ENDOFTEXT}{ENDOFTEXT}a{ENDOFTEXT} {ENDOFTEXT}\n{ENDOFTEXT}",
    "special-partial": "<|endoftext| <|endoftext <|endof|text|> |>",
    "only-whitespace": " \n \n\n   \t ",
    "long-words": "=" * 300 + " " + "ab" * 150 + " " + "x" * 257 + "😀" * 40 + " " * 200 + "9" * 99,
    "unicode-misc": "∑ π √2 — … “quoted” «guillemets» ½ ™ © ¿¡ \u00a0nbsp\u3000ideographic \u200b zero-width",
}


@pytest.fixture(scope="module")
def small_bpe(fixtures_dir: Path) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """The oracle-trained vocabulary: ids 0-255 bytes, then one per merge, then `<|endoftext|>`."""
    merges = merges_from_text((fixtures_dir / "bpe_small_merges.txt").read_text(encoding="utf-8"))
    vocab = {i: bytes([i]) for i in range(256)}
    for left, right in merges:
        vocab[len(vocab)] = left + right
    vocab[len(vocab)] = ENDOFTEXT.encode()
    return vocab, merges


@pytest.fixture(scope="module")
def small_tiktoken(small_bpe):
    encoding, to_vocab = tiktoken_encoding(*small_bpe, [ENDOFTEXT])
    return lambda text: [to_vocab[r] for r in encoding.encode(text, allowed_special="all")]


@pytest.mark.parametrize("text", list(TEXTS.values()), ids=list(TEXTS))
def test_tokenizer_matches_tiktoken(small_bpe, small_tiktoken, text: str) -> None:
    tokenizer = get_tokenizer(*small_bpe, [ENDOFTEXT])
    ids = tokenizer.encode(text)
    assert ids == small_tiktoken(text)
    assert tokenizer.decode(ids) == text


def test_tokenizer_matches_tiktoken_on_corpus(small_bpe, small_tiktoken, fixtures_dir: Path) -> None:
    text = (fixtures_dir / "bpe_corpus_medium.txt").read_bytes().decode("utf-8")
    tokenizer = get_tokenizer(*small_bpe, [ENDOFTEXT])
    ids = tokenizer.encode(text)
    assert ids == small_tiktoken(text)
    assert tokenizer.decode(ids) == text


def test_tokenizer_without_special_tokens_treats_them_as_text(small_bpe) -> None:
    vocab, merges = small_bpe
    encoding, to_vocab = tiktoken_encoding(vocab, merges)
    tokenizer = get_tokenizer(vocab, merges)
    text = TEXTS["special-back-to-back"]
    expected = [to_vocab[r] for r in encoding.encode(text, disallowed_special=())]
    assert tokenizer.encode(text) == expected
    assert len(vocab) - 1 not in expected  # the id of <|endoftext|> never appears


_ALPHABET = list("abcxyz ABC  \n\n\t019'sdlvert.,!?-_(){}<|>éüßøλжक東京😀🇫\u00a0\u3000\u200b")


@settings(max_examples=60, deadline=None)
@given(text=st.lists(st.sampled_from([*_ALPHABET, ENDOFTEXT]), max_size=120).map("".join))
def test_tokenizer_matches_tiktoken_random_text(small_bpe, small_tiktoken, text: str) -> None:
    assert get_tokenizer(*small_bpe, [ENDOFTEXT]).encode(text) == small_tiktoken(text)


@settings(max_examples=100, deadline=None)
@given(pieces=st.lists(st.one_of(st.text(max_size=30), st.just(ENDOFTEXT)), max_size=8))
def test_tokenizer_roundtrip_arbitrary_unicode(small_bpe, pieces: list[str]) -> None:
    text = "".join(pieces)
    tokenizer = get_tokenizer(*small_bpe, [ENDOFTEXT])
    ids = tokenizer.encode(text)
    assert all(isinstance(i, int) and i in small_bpe[0] for i in ids)
    assert tokenizer.decode(ids) == text


def test_tokenizer_overlapping_special_tokens_take_the_longest(small_bpe) -> None:
    vocab, merges = small_bpe
    double = ENDOFTEXT * 2
    tokenizer = get_tokenizer(vocab, merges, [ENDOFTEXT, double])
    ids = tokenizer.encode(f"a{double}b{ENDOFTEXT}c{ENDOFTEXT * 3}")
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces == ["a", double, "b", ENDOFTEXT, "c", double, ENDOFTEXT]


def test_tokenizer_adds_missing_special_tokens(small_bpe) -> None:
    vocab, merges = small_bpe
    tokenizer = get_tokenizer(vocab, merges, ["<|pad|>", ENDOFTEXT])
    ids = tokenizer.encode("x<|pad|><|pad|>y")
    assert len(ids) == 4 and ids[1] == ids[2]
    assert ids[1] not in vocab  # a new id, after the given ones
    assert tokenizer.decode(ids[1:2]) == "<|pad|>"
    assert tokenizer.decode(ids) == "x<|pad|><|pad|>y"


def test_tokenizer_decode_malformed_bytes_become_replacement_characters(small_bpe) -> None:
    tokenizer = get_tokenizer(*small_bpe, [ENDOFTEXT])
    assert tokenizer.decode([0xFF]) == "\ufffd"
    assert tokenizer.decode([ord("a"), 0xC3, ord("b")]) == "a\ufffdb"  # 0xC3 starts a 2-byte character
    assert tokenizer.decode([0xC3, 0xA9]) == "é"  # bytes split over two ids join before decoding


# ---------------------------------------------------------------------------------------- streaming
def _cuts(text: str, rng: random.Random, mean_chunk: int) -> list[str]:
    """Cut `text` at random places, favouring the tricky ones: inside whitespace runs and special tokens."""
    tricky = [i for i in range(1, len(text)) if text[i - 1].isspace() or text[i - 1] in "<|>ed"]
    cuts = set(rng.sample(range(1, max(len(text), 2)), k=min(len(text) // mean_chunk, max(len(text) - 1, 0))))
    cuts |= set(rng.sample(tricky, k=min(len(tricky), len(cuts) + 1)))
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=80, deadline=None)
@given(
    pieces=st.lists(st.sampled_from([*_ALPHABET, ENDOFTEXT, "  ", "\n\n", "hello", " world"]), max_size=60),
    data=st.data(),
)
def test_tokenizer_encode_iterable_any_chunking(small_bpe, pieces: list[str], data) -> None:
    text = "".join(pieces)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=20)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    tokenizer = get_tokenizer(*small_bpe, [ENDOFTEXT])
    assert list(tokenizer.encode_iterable(iter(chunks))) == tokenizer.encode(text)


@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed{s}")
def test_tokenizer_encode_iterable_long_input(small_bpe, fixtures_dir: Path, seed: int) -> None:
    # Long enough that a buffering implementation must flush many times.
    text = (fixtures_dir / "bpe_corpus_medium.txt").read_bytes().decode("utf-8")
    text = text.replace(" ", "   ", 200).replace("\n", "\n \n", 200)
    chunks = _cuts(text, random.Random(seed), mean_chunk=[7, 300, 5000][seed])
    assert "".join(chunks) == text
    tokenizer = get_tokenizer(*small_bpe, [ENDOFTEXT])
    assert list(tokenizer.encode_iterable(chunks)) == tokenizer.encode(text)


def test_tokenizer_encode_iterable_file_object(small_bpe, small_tiktoken, fixtures_dir: Path) -> None:
    path = fixtures_dir / "bpe_corpus_small.txt"
    tokenizer = get_tokenizer(*small_bpe, [ENDOFTEXT])
    ids = scenarios.run("encode_iterable_of_file", tokenizer, path)
    assert ids == small_tiktoken(path.read_bytes().decode("utf-8"))


@pytest.mark.slow
def test_tokenizer_encode_iterable_memory_is_bounded(small_bpe, fixtures_dir: Path, tmp_path: Path) -> None:
    # A 2.6 MB file, consumed lazily. The peak resident memory of the process running the tokenizer is read
    # from the operating system while the generator runs; reading the whole file first costs its size.
    corpus = (fixtures_dir / "bpe_corpus_medium.txt").read_bytes().decode("utf-8")
    path = tmp_path / "big.txt"
    path.write_text(corpus * 20, encoding="utf-8")
    limit = 2 << 20  # the file is 2.6 MB: holding it whole goes over
    tokenizer = get_tokenizer(*small_bpe, [ENDOFTEXT])
    tokenizer.encode(corpus)  # warm any cache outside the measurement: only streaming memory counts
    count, peak = peak_rss_growth(lambda: scenarios.run("count_encode_iterable", tokenizer, path))
    assert count > 500_000
    assert peak < limit, f"encode_iterable grew resident memory by {peak / 2**20:.1f} MiB; the limit is 2 MiB"

    # The limit matters: reading everything first goes far over it.
    _, peak_read_all = peak_rss_growth(lambda: scenarios.run("count_encode_whole_file", tokenizer, path))
    assert peak_read_all > 2 * limit


# ---------------------------------------------------------------------------------------- GPT-2
_GPT2_DIR = SHARED_DATA / "gpt2"


@pytest.fixture(scope="module")
def gpt2_bpe():
    if not (_GPT2_DIR / "gpt2_vocab.json").exists():
        pytest.skip(f"GPT-2 vocabulary not found in {_GPT2_DIR}")
    return load_gpt2_files(_GPT2_DIR / "gpt2_vocab.json", _GPT2_DIR / "gpt2_merges.txt")


def test_tokenizer_gpt2_vocabulary_matches_tiktoken(gpt2_bpe) -> None:
    vocab, merges = gpt2_bpe
    encoding, to_vocab = tiktoken_encoding(vocab, merges, [ENDOFTEXT])
    tokenizer = get_tokenizer(vocab, merges, [ENDOFTEXT])
    texts = list(TEXTS.values())
    valid = SHARED_DATA / "pydocs" / "valid.txt"
    if valid.exists():
        texts.append(valid.read_text(encoding="utf-8")[:100_000])
    for text in texts:
        expected = [to_vocab[r] for r in encoding.encode(text, allowed_special="all")]
        assert tokenizer.encode(text) == expected
        assert tokenizer.decode(expected) == text
    assert tokenizer.encode("Hello world") == [15496, 995]  # GPT-2's published ids
