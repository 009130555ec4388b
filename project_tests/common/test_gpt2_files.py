"""GPT-2's files: the byte table against GPT-2's published code, round trips, and errors that name file and line."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cs336_common.gpt2_files
from cs336_common.gpt2_files import (
    bytes_to_unicode,
    check_byte_level_bpe,
    merges_to_text,
    parse_merges,
    parse_vocab,
    read_merges,
    read_vocab,
    text_to_token,
    token_to_text,
    unicode_to_bytes,
    vocab_to_json,
)


def published_gpt2_table() -> dict[int, str]:
    """GPT-2's `encoder.py` `bytes_to_unicode`, as OpenAI published it (2019), written out naively."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def test_the_table_is_gpt2s_for_all_256_bytes() -> None:
    table = bytes_to_unicode()
    assert table == published_gpt2_table() and sorted(table) == list(range(256))
    # spot values any GPT-2 vocab.json shows: space, newline, DEL, soft hyphen, NUL
    assert [table[b] for b in (32, 10, 127, 173, 0)] == ["Ġ", "Ċ", "ġ", "Ń", "Ā"]
    assert all(c.isprintable() and not c.isspace() for c in table.values()) and len(set(table.values())) == 256
    assert unicode_to_bytes() == {c: b for b, c in table.items()}


def test_docstring_examples() -> None:
    result = doctest.testmod(cs336_common.gpt2_files)
    assert result.attempted > 0 and result.failed == 0


tokens = st.binary(min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    vocab_tokens=st.lists(tokens, max_size=20, unique=True),
    merges=st.lists(st.tuples(tokens, tokens), max_size=20),
    specials=st.lists(st.text(min_size=1, max_size=8), max_size=3),
)
def test_vocab_and_merges_round_trip(
    vocab_tokens: list[bytes], merges: list[tuple[bytes, bytes]], specials: list[str]
) -> None:
    vocab = {3 * i + 1: token for i, token in enumerate(vocab_tokens)}  # ids need not be dense
    assert parse_vocab(vocab_to_json(vocab, specials)) == (vocab, specials)
    assert parse_merges(merges_to_text(merges)) == merges
    assert parse_merges(merges_to_text(merges, header=False)) == merges
    assert all(text_to_token(token_to_text(t)) == t for t in vocab_tokens)


def test_reads_gpt2s_own_files(tmp_path: Path) -> None:
    (tmp_path / "vocab.json").write_text(json.dumps({"!": 0, "Ġ": 1, "Ġt": 2}), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\n", encoding="utf-8")
    assert read_vocab(tmp_path / "vocab.json") == ({0: b"!", 1: b" ", 2: b" t"}, None)
    assert read_merges(tmp_path / "merges.txt") == [(b" ", b"t")]


@pytest.mark.parametrize(
    "text, message",
    [
        ("#version: cs336-bpe 1\nĠ t\nĠt he extra\n", r"merges\.txt:3: expected two tokens separated by one space"),
        ("Ġ t\n\nĠt\n", r"merges\.txt:3: expected two tokens"),
        ("Ġ t\na b\x00\n", r"merges\.txt:2: token 'b\\x00' contains '\\x00'"),
        ("Ġ  t\n", r"merges\.txt:1: expected two tokens"),
    ],
    ids=["three-tokens", "one-token", "foreign-character", "two-spaces"],
)
def test_a_malformed_merges_file_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "merges.txt").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_merges(tmp_path / "merges.txt")


@pytest.mark.parametrize(
    "payload, message",
    [
        ('{"format": "cs336-bpe", "version": 2, "vocab": {}}', "expected cs336-bpe version 1, got 2"),
        ('{"format": "cs336-bpe", "version": 1, "vocab": {"x": "a"}}', "expected integer token ids, got 'x'"),
        ('{"format": "cs336-bpe", "version": 1, "vocab": {"0": 7}}', "expected every token to be a string"),
        ('{"format": "cs336-bpe", "version": 1, "vocab": {"0": "a b"}}', "token 'a b' contains ' '"),
        ('["a"]', "expected a cs336-bpe vocabulary or a GPT-2 vocab.json"),
        ('{"format": "cs336-bpe", "vers', "unreadable JSON"),
    ],
    ids=["version", "id", "not-a-string", "space", "list", "truncated"],
)
def test_a_malformed_vocab_names_the_file(tmp_path: Path, payload: str, message: str) -> None:
    (tmp_path / "vocab.json").write_text(payload, encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        read_vocab(tmp_path / "vocab.json")
    assert str(caught.value).startswith(f"{tmp_path / 'vocab.json'}: ") and message in str(caught.value)


def test_missing_files_and_undecodable_bytes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        read_merges(tmp_path / "merges.txt")
    (tmp_path / "vocab.json").write_bytes(b'{"\xff": 0}')
    with pytest.raises(ValueError, match="vocab.json: expected UTF-8 text, got an undecodable byte at offset 2"):
        read_vocab(tmp_path / "vocab.json")


def test_check_byte_level_bpe() -> None:
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"<|eot|>"}
    check_byte_level_bpe(vocab, [(b"a", b"b")], ["<|eot|>"])
    with pytest.raises(ValueError, match=r"needs all 256 bytes; missing 1 \(e.g. \[65\]\)"):
        check_byte_level_bpe({k: v for k, v in vocab.items() if k != 65}, [], [])
    with pytest.raises(ValueError, match="same bytes under two ids"):
        check_byte_level_bpe(vocab | {300: b"ab"}, [], [])
    with pytest.raises(ValueError, match=r"merge \(b'b', b'c'\) uses or makes a token"):
        check_byte_level_bpe(vocab, [(b"b", b"c")], [])
    with pytest.raises(ValueError, match=r"special token\(s\) \['<\|x\|>'\]"):
        check_byte_level_bpe(vocab, [], ["<|x|>"])
