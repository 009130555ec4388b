"""The reference tokenizer's own promises beyond the adapters: errors, id layout, chunking, files, parallelism."""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cs336_basics.bpe_trainer as bpe_trainer
import cs336_basics.pretokenize as pretokenize_module
import cs336_basics.tokenizer as tokenizer_module
import cs336_lab.parallel_encode as parallel_encode
from cs336_basics import Tokenizer, train_bpe
from cs336_basics.chunking import find_chunk_boundaries
from cs336_basics.pretokenize import (
    GPT2_REGEX,
    count_pretokens,
    last_safe_cut,
    pretokenize,
    pretokens,
)
from cs336_lab.parallel_encode import encode_file
from cs336_lab.tokenizer_files import load_tokenizer, read_tokenizer, save_tokenizer

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
GPT2_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "gpt2"
EOT = "<|endoftext|>"
_FRAGMENTS = ["a", "bc", " ", "  ", "\n", "\n\n", "\t", "é", "東", "😀", "7", "'s", ".", "!?", " x", "\u00a0", "\u3000"]
_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def small_tokenizer() -> Tokenizer:
    vocab, merges = train_bpe(FIXTURES / "bpe_corpus_small.txt", 256 + 1 + 300, [EOT], num_workers=1)
    return Tokenizer(vocab, merges, [EOT])


# ------------------------------------------------------------------------------------------ training
def test_train_bpe_id_layout(small_tokenizer: Tokenizer) -> None:
    vocab = small_tokenizer.vocab
    assert [vocab[i] for i in range(256)] == [bytes([b]) for b in range(256)]
    assert vocab[256] == EOT.encode()
    assert [vocab[257 + k] for k in range(3)] == [a + b for a, b in small_tokenizer.merges[:3]]
    assert len(vocab) == 256 + 1 + 300


def test_train_bpe_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_bpe(tmp_path / "nope.txt", 300, [])


@pytest.mark.parametrize("vocab_size", [255, 257, 256.5], ids=["below-bytes", "below-specials", "float"])
def test_train_bpe_vocab_size_too_small(tmp_path: Path, vocab_size) -> None:
    path = tmp_path / "c.txt"
    path.write_text("hello")
    with pytest.raises(ValueError, match=r"256 \+ 2 special tokens = 258, got"):
        train_bpe(path, vocab_size, [EOT, "<|pad|>"])


def test_train_bpe_invalid_utf8_names_the_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello wor\xffld")
    with pytest.raises(ValueError, match="not valid UTF-8.*offset 9"):
        train_bpe(path, 300, [])


@pytest.mark.parametrize("text", ["", EOT * 3, "a"], ids=["empty", "only-specials", "one-byte"])
def test_train_bpe_corpus_without_pairs_gives_no_merges(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.txt"
    path.write_text(text)
    vocab, merges = train_bpe(path, 400, [EOT])
    assert merges == [] and len(vocab) == 257


def test_train_bpe_progress_bar_and_repeated_specials(tmp_path: Path, capsys) -> None:
    path = FIXTURES / "bpe_corpus_small.txt"
    vocab, merges = train_bpe(path, 300, [EOT, EOT], show_progress=True, num_workers=1)
    assert list(vocab.values()).count(EOT.encode()) == 1 and len(vocab) == 300
    assert "merging" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["fork", "spawn"], ids=str)
def test_train_bpe_parallel_equals_serial(monkeypatch: pytest.MonkeyPatch, start_method: str) -> None:
    path = FIXTURES / "bpe_corpus_medium.txt"
    serial = train_bpe(path, 600, [EOT], num_workers=1)
    monkeypatch.setattr(bpe_trainer, "worker_context", lambda: multiprocessing.get_context(start_method))
    monkeypatch.setattr(bpe_trainer, "_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(bpe_trainer, "_TARGET_CHUNK_BYTES", 20_000)  # several chunks per worker
    assert train_bpe(path, 600, [EOT], num_workers=2) == serial


# ------------------------------------------------------------------------------------------ chunking
@_SETTINGS
@given(pieces=st.lists(st.sampled_from(_FRAGMENTS), max_size=50))
def test_every_safe_cut_preserves_pretokens(pieces: list[str]) -> None:
    text = "".join(pieces)
    whole = list(pretokenize(text))
    end = len(text)
    while (cut := last_safe_cut(text, 0, end)) > 0:
        assert list(pretokenize(text[:cut])) + list(pretokenize(text[cut:])) == whole
        end = cut - 1 if cut > 1 else 0
        if end <= 0:
            break


@_SETTINGS
@given(
    pieces=st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=5)), max_size=80),
    block=st.integers(1, 20),
)
def test_fast_pretokens_equal_the_regex(monkeypatch: pytest.MonkeyPatch, pieces: list[str], block: int) -> None:
    # The ASCII twin of the pattern and the block cutting must be invisible; tiny blocks force many cuts.
    monkeypatch.setattr(pretokenize_module, "_BLOCK_CHARS", block)
    text = "".join(pieces)
    assert pretokens(text) == GPT2_REGEX.findall(text)
    assert pretokens(text.encode("ascii", "ignore").decode()) == GPT2_REGEX.findall(
        text.encode("ascii", "ignore").decode()
    )


@_SETTINGS
@given(pieces=st.lists(st.sampled_from(_FRAGMENTS), max_size=60), size=st.integers(1, 30))
def test_blocks_cover_the_text_at_safe_cuts(pieces: list[str], size: int) -> None:
    text = "".join(pieces)
    parts = list(pretokenize_module.blocks(text, size))
    assert "".join(parts) == text and all(parts)
    assert all(len(p) >= size for p in parts[:-1])
    assert [t for p in parts for t in pretokens(p)] == GPT2_REGEX.findall(text)


def test_fast_pretokens_every_ascii_character() -> None:
    text = "".join(chr(c) + chr(d) for c in range(128) for d in (32, 97, 10, c))
    assert pretokens(text) == GPT2_REGEX.findall(text)


@_SETTINGS
@given(
    pieces=st.lists(st.sampled_from([*_FRAGMENTS, EOT, "<|x y|>", "a" + EOT]), max_size=80),
    num_chunks=st.integers(1, 12),
    window=st.integers(1, 64),
)
def test_chunk_boundaries_preserve_pretoken_counts(tmp_path: Path, pieces, num_chunks: int, window: int) -> None:
    text = "".join(pieces)
    specials = [EOT, "<|x y|>", "a" + EOT, EOT * 2]  # overlapping ones too
    path = tmp_path / "chunks.txt"
    data = text.encode("utf-8")
    path.write_bytes(data)
    with open(path, "rb") as f:
        bounds = find_chunk_boundaries(f, num_chunks, specials, window=window)
    assert bounds[0] == 0 and bounds[-1] == len(data) and bounds == sorted(set(bounds))
    total: Counter[str] = Counter()
    for start, end in zip(bounds, bounds[1:]):
        total.update(count_pretokens(data[start:end].decode("utf-8"), specials))
    assert total == count_pretokens(text, specials)


def test_chunk_boundaries_prefer_special_tokens(tmp_path: Path) -> None:
    path = tmp_path / "docs.txt"
    path.write_bytes(f"{EOT}".join(["some words here " * 50] * 8).encode())
    with open(path, "rb") as f:
        bounds = find_chunk_boundaries(f, 4, [EOT])
    data = path.read_bytes()
    assert len(bounds) == 5 and all(data[b:].startswith(EOT.encode()) for b in bounds[1:-1])


# ------------------------------------------------------------------------------------------ encoding
def test_decode_unknown_id_names_it(small_tokenizer: Tokenizer) -> None:
    with pytest.raises(ValueError, match="token id 999999"):
        small_tokenizer.decode([1, 2, 999999])
    with pytest.raises(ValueError, match="token id -1"):
        small_tokenizer.decode([-1])


def test_encode_rejects_bytes(small_tokenizer: Tokenizer) -> None:
    with pytest.raises(TypeError, match="expects a str, got bytes"):
        small_tokenizer.encode(b"abc")  # type: ignore[arg-type]


def test_tokenizer_rejects_incomplete_vocabularies() -> None:
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="all 256 single bytes"):
        Tokenizer({i: v for i, v in vocab.items() if i != 7}, [])
    with pytest.raises(ValueError, match="merge 0"):
        Tokenizer(vocab, [(b"a", b"b")])


def test_token_to_id(small_tokenizer: Tokenizer) -> None:
    assert small_tokenizer.token_to_id(EOT) == 256
    assert small_tokenizer.token_to_id(b"a") == ord("a")
    assert small_tokenizer.vocab_size == 557


@_SETTINGS
@given(
    pieces=st.lists(st.sampled_from([*_FRAGMENTS, EOT, EOT * 2, "<|x y|>", "<|x"]), max_size=60),
    data=st.data(),
)
def test_encode_iterable_flushes_correctly(
    monkeypatch: pytest.MonkeyPatch, small_tokenizer: Tokenizer, pieces: list[str], data
) -> None:
    # With a one-character buffer the reference looks for a safe cut after every chunk: the hard path.
    monkeypatch.setattr(tokenizer_module, "_ITERABLE_BUFFER_CHARS", 1)
    tok = Tokenizer(small_tokenizer.vocab, small_tokenizer.merges, [EOT, EOT * 2, "<|x y|>"])
    text = "".join(pieces)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=30)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    assert list(tok.encode_iterable(chunks)) == tok.encode(text)


# ------------------------------------------------------------------------------------------ files
def test_save_and_load_round_trip(tmp_path: Path, small_tokenizer: Tokenizer) -> None:
    save_tokenizer(small_tokenizer.vocab, small_tokenizer.merges, tmp_path / "tok", small_tokenizer.special_tokens)
    vocab, merges, specials = read_tokenizer(tmp_path / "tok")
    assert (vocab, merges, specials) == (small_tokenizer.vocab, small_tokenizer.merges, [EOT])
    again = load_tokenizer(tmp_path / "tok")
    text = (FIXTURES / "bpe_corpus_small.txt").read_text(encoding="utf-8")
    assert again.encode(text) == small_tokenizer.encode(text)
    files = Tokenizer.from_files(tmp_path / "tok" / "vocab.json", tmp_path / "tok" / "merges.txt")
    assert files.encode(text) == small_tokenizer.encode(text)


def test_saved_format_is_human_readable(tmp_path: Path) -> None:
    vocab = {i: bytes([i]) for i in range(256)} | {256: b" t", 257: b" the", 258: b"\n\n", 259: "é".encode()}
    merges = [(b" ", b"t"), (b" t", b"he"), (b"\n", b"\n"), (b"\xc3", b"\xa9")]
    save_tokenizer(vocab, merges, tmp_path, [EOT])
    saved = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert saved["format"] == "cs336-bpe" and saved["version"] == 1 and saved["special_tokens"] == [EOT]
    assert saved["vocab"]["257"] == "Ġthe" and saved["vocab"]["258"] == "ĊĊ" and saved["vocab"]["259"] == "Ã©"
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines == ["#version: cs336-bpe 1", "Ġ t", "Ġt he", "Ċ Ċ", "Ã ©"]
    assert read_tokenizer(tmp_path) == (vocab, merges, [EOT])
    assert not list(tmp_path.glob("*.tmp"))


def test_from_files_reads_gpt2_format() -> None:
    if not (GPT2_DIR / "gpt2_vocab.json").exists():
        pytest.skip("GPT-2 files not present")
    tok = Tokenizer.from_files(GPT2_DIR / "gpt2_vocab.json", GPT2_DIR / "gpt2_merges.txt", [EOT])
    assert tok.encode("Hello world<|endoftext|>") == [15496, 995, 50256]


def test_read_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        read_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text('{"format": "cs336-bpe", "version": 99, "vocab": {}}')
    with pytest.raises(ValueError, match="version 1, got 99"):
        read_tokenizer(tmp_path)


@pytest.mark.parametrize(
    ("num_workers", "start_method"), [(1, "fork"), (2, "fork"), (2, "spawn")], ids=["serial", "fork", "spawn"]
)
def test_encode_file_equals_encode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_tokenizer: Tokenizer, num_workers: int, start_method: str
) -> None:
    monkeypatch.setattr(parallel_encode, "pool_context", lambda: multiprocessing.get_context(start_method))
    monkeypatch.setattr(parallel_encode, "_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(parallel_encode, "_TARGET_CHUNK_BYTES", 10_000)
    source = FIXTURES / "bpe_corpus_medium.txt"
    count = encode_file(source, tmp_path / "out" / "ids.npy", small_tokenizer, num_workers=num_workers)
    ids = np.load(tmp_path / "out" / "ids.npy", mmap_mode="r")
    assert ids.dtype == np.uint16 and count == len(ids)
    assert ids.tolist() == small_tokenizer.encode(source.read_bytes().decode("utf-8"))
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ids.npy"]


def test_encode_file_uses_uint32_for_large_vocabularies(tmp_path: Path, small_tokenizer: Tokenizer) -> None:
    vocab = dict(small_tokenizer.vocab) | {70_000: b"<|big|>"}
    tok = Tokenizer(vocab, small_tokenizer.merges, [EOT, "<|big|>"])
    (tmp_path / "in.txt").write_text("hi <|big|> there<|endoftext|>")
    encode_file(tmp_path / "in.txt", tmp_path / "ids.npy", tok)
    ids = np.load(tmp_path / "ids.npy")
    assert ids.dtype == np.uint32 and ids.tolist() == tok.encode("hi <|big|> there<|endoftext|>")
    assert 70_000 in ids.tolist()


def test_encode_file_failure_leaves_nothing(tmp_path: Path, small_tokenizer: Tokenizer) -> None:
    (tmp_path / "bad.txt").write_bytes(b"ok \xff no")
    with pytest.raises(ValueError, match="offset 3"):
        encode_file(tmp_path / "bad.txt", tmp_path / "ids.npy", small_tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]
    with pytest.raises(FileNotFoundError):
        encode_file(tmp_path / "missing.txt", tmp_path / "ids.npy", small_tokenizer)


def test_encode_file_empty(tmp_path: Path, small_tokenizer: Tokenizer) -> None:
    (tmp_path / "empty.txt").write_text("")
    assert encode_file(tmp_path / "empty.txt", tmp_path / "ids.npy", small_tokenizer) == 0
    assert np.load(tmp_path / "ids.npy").shape == (0,)


def test_encode_iterable_long_run_without_spaces(small_tokenizer: Tokenizer) -> None:
    # 200k characters with no safe cut, one character at a time: held back, then encoded, in linear time.
    text = "x" * 200_000 + " tail" + EOT + "y" * 50_000
    assert list(small_tokenizer.encode_iterable(iter(text))) == small_tokenizer.encode(text)


@_SETTINGS
@given(words=st.lists(st.text(st.sampled_from("ab e=x é😀"), min_size=1, max_size=300), min_size=1, max_size=5))
def test_long_word_bpe_equals_the_simple_loop(
    monkeypatch: pytest.MonkeyPatch, small_tokenizer: Tokenizer, words: list[str]
) -> None:
    tok = Tokenizer(small_tokenizer.vocab, small_tokenizer.merges)
    monkeypatch.setattr(tokenizer_module, "_LONG_WORD", 10**9)
    simple = [tok._bpe(w) for w in words]
    monkeypatch.setattr(tokenizer_module, "_LONG_WORD", 0)
    assert [tok._bpe(w) for w in words] == simple


# VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so it would include the forked pytest image.
_RSS_CHILD = """
import sys
from cs336_basics import Tokenizer
from cs336_lab.parallel_encode import encode_file
tok = Tokenizer({i: bytes([i]) for i in range(256)} | {256: b"<|endoftext|>"}, [], ["<|endoftext|>"])
count = encode_file(sys.argv[1], sys.argv[2], tok, num_workers=1)
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(count, peak_kib * 1024)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc (Linux)")
def test_encode_file_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    """Peak RSS encoding 60 MB is within 40 MiB of encoding 20 MB (both in 4 MB chunks; byte-level ids: 2 bytes
    a byte of text). Copying the ids through memory maps grew it by ~150 MiB here, 1.3 GB for a 1 GB corpus."""
    import subprocess
    import sys

    peaks = {}
    for mb in (20, 60):
        text = tmp_path / f"in{mb}.txt"
        text.write_text(("the cat sat on a mat. " * 45 + "\n<|endoftext|>\n") * (mb * 1_000_000 // 1004))
        out = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(text), str(tmp_path / f"ids{mb}.npy")],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        count, peaks[mb] = map(int, out.stdout.split())
        assert count == len(np.load(tmp_path / f"ids{mb}.npy", mmap_mode="r")) > mb * 900_000
        text.unlink()
    assert peaks[60] - peaks[20] < 40 << 20, f"peak RSS {peaks[20] >> 20} MiB at 20 MB, {peaks[60] >> 20} MiB at 60 MB"
