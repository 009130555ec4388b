"""`cs336 tokenize`'s fast engine: tiktoken with our vocabulary where (and only where) it gives our ids.

Expected ids come from the from-scratch tokenizer on a tiny trained vocabulary and, for GPT-2's vocabulary, from
tiktoken's own GPT-2 construction (`data_gym_to_mergeable_bpe_ranks` on the same files, its own pattern).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import cs336_lab.parallel_encode as parallel_encode
import cs336_lab.pipeline as pipeline
from cs336_lab.assignment import Assignment
from cs336_lab.tiktoken_engine import (
    GPT2_PATTERN,
    EngineUnavailable,
    build_encoding,
    choose_engine,
    rank_order_problem,
)
from cs336_lab.tokenizer_files import read_tokenizer, save_tokenizer

tiktoken = pytest.importorskip("tiktoken")

EOT = "<|endoftext|>"
REPO = Path(__file__).resolve().parents[2]
GPT2_DIR = REPO / ".." / "shared" / "data" / "gpt2"
# Real-ish text with what a tokenizer gets wrong: Unicode, whitespace runs (trailing too), digits, contractions.
TEXTS = [
    "Once upon a time, there was a little girl named Lily. She liked to play outside!\n",
    "  leading and trailing spaces   ",
    "tabs\t\tand\n\n\nnewlines\r\n  \n",
    "caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u4f60\u597d\u4e16\u754c \U0001f600\U0001f680 \u0661\u0662 \u00a0nbsp\u2003em",
    "we'll they've I'M don't 'tis 12345 3.14159 x=1;y=2",
    f"one{EOT}two {EOT} three{EOT}{EOT}\n{EOT}",
    "\x1c\x1d\x1e\x1f\x85\x0b\x0c odd spaces \u3000 end ",
]


def _corpus(n: int = 400, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "little", "girl", "Lily", "played", "café", "naïve", "你好", "😀", "don't", "42", "3.5", "x=y"]
    seps = [" ", "  ", "\n", "\n\n", "\t", ", ", ". ", "   "]
    return "".join(rng.choice(words) + rng.choice(seps) + (EOT if rng.random() < 0.05 else "") for _ in range(n))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A 400-token BPE trained on the corpus above (with the package's `train_bpe`), saved; and its tokenizer."""
    work = tmp_path_factory.mktemp("tiny")
    (work / "train.txt").write_text(_corpus(3000) + "".join(TEXTS), encoding="utf-8")
    vocab, merges = Assignment.load().run_train_bpe(str(work / "train.txt"), 400, [EOT])
    save_tokenizer(vocab, merges, work / "tok", special_tokens=[EOT])
    return work / "tok", Assignment.load().make_tokenizer(*read_tokenizer(work / "tok"))


def _saved(tmp_path: Path, vocab: dict, merges: list, specials=(EOT,)) -> Path:
    save_tokenizer(vocab, merges, tmp_path / "tok", special_tokens=list(specials))
    return tmp_path / "tok"


def test_pattern_is_the_packages() -> None:
    """Fails with tiktoken's own GPT-2 pattern (`\\s+$` alternative) or a copy that drifted."""
    from cs336_basics.pretokenize import GPT2_PATTERN as PACKAGE_PATTERN

    assert GPT2_PATTERN == PACKAGE_PATTERN


def test_engine_ids_equal_the_tokenizers_on_a_tiny_vocab(tiny) -> None:
    directory, tokenizer = tiny
    encoding = choose_engine("tiktoken", tokenizer, *read_tokenizer(directory), _corpus(200, seed=1))
    for text in [*TEXTS, _corpus(500, seed=2), "".join(TEXTS)]:
        assert encoding.encode(text, allowed_special="all") == tokenizer.encode(text), text
        assert encoding.encode_to_numpy(text, allowed_special="all").tolist() == tokenizer.encode(text)


def test_tokenize_with_the_engine_writes_the_tokenizers_ids(tiny, tmp_path: Path, caplog) -> None:
    directory, tokenizer = tiny
    text = _corpus(40_000, seed=3) + "".join(TEXTS)
    (tmp_path / "data.txt").write_text(text, encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="cs336_lab"):
        pipeline.tokenize_files(directory, [tmp_path / "data.txt"], tmp_path / "out", engine="tiktoken", num_workers=2)
    assert "tokenize engine: tiktoken" in caplog.text
    assert np.load(tmp_path / "out" / "data.npy").tolist() == tokenizer.encode(text)


def _gpt2_oracle(tmp_path: Path):
    """tiktoken's own GPT-2 encoding, built by tiktoken from the same files (no download)."""
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    merges = tmp_path / "vocab.bpe"  # tiktoken's reader skips a first `#version` line
    merges.write_text(
        "#version: 0.2\n" + (GPT2_DIR / "gpt2_merges.txt").read_text(encoding="utf-8").rstrip("\n") + "\n"
    )
    ranks = data_gym_to_mergeable_bpe_ranks(str(merges), str(GPT2_DIR / "gpt2_vocab.json"))
    pattern = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
    return tiktoken.Encoding("gpt2-oracle", pat_str=pattern, mergeable_ranks=ranks, special_tokens={EOT: 50256})


def test_engine_on_gpt2_vocab_equals_tiktokens_gpt2(tmp_path: Path) -> None:
    if not (GPT2_DIR / "gpt2_vocab.json").exists():
        pytest.skip("../shared/data/gpt2 is not on this machine")
    from cs336_common.gpt2_files import read_merges, read_vocab

    vocab, merges = read_vocab(GPT2_DIR / "gpt2_vocab.json")[0], read_merges(GPT2_DIR / "gpt2_merges.txt")
    tokenizer = Assignment.load().make_tokenizer(vocab, merges, [EOT])
    oracle = _gpt2_oracle(tmp_path)
    encoding = choose_engine("tiktoken", tokenizer, vocab, merges, [EOT], "".join(TEXTS))
    for text in [*TEXTS, _corpus(300, seed=4)]:
        expected = oracle.encode(text, allowed_special="all")
        assert encoding.encode(text, allowed_special="all") == expected
        assert tokenizer.encode(text) == expected


def _permuted(vocab: dict, seed: int = 0) -> dict:
    ids = list(vocab)
    random.Random(seed).shuffle(ids)
    return {new: vocab[old] for new, old in zip(ids, vocab)}


def _swapped_merges(vocab: dict, merges: list) -> dict:
    """The ids of the results of merges 10 and 20 exchanged: a vocabulary whose ids are not in merge order."""
    ids = {token: i for i, token in vocab.items()}
    a, b = ids[b"".join(merges[10])], ids[b"".join(merges[20])]
    return vocab | {a: vocab[b], b: vocab[a]}


@pytest.mark.parametrize(
    "case, reason",
    [
        ("permuted", "not in merge order"),
        ("swapped", "not in merge order"),
        ("no tiktoken", "tiktoken is not installed"),
    ],
)
def test_auto_falls_back_saying_why(tiny, tmp_path: Path, monkeypatch, caplog, case: str, reason: str) -> None:
    """Each fallback keeps the tokenizer's ids and names its reason in one log line; `--engine tiktoken` refuses."""
    vocab, merges, _ = read_tokenizer(tiny[0])
    if case == "permuted":
        vocab = _permuted(vocab)
    elif case == "swapped":
        vocab = _swapped_merges(vocab, merges)
    else:
        monkeypatch.setitem(sys.modules, "tiktoken", None)  # `import tiktoken` raises ImportError
    directory = _saved(tmp_path, vocab, merges)
    text = "".join(TEXTS) + _corpus(300, seed=5)
    (tmp_path / "data.txt").write_text(text, encoding="utf-8")
    monkeypatch.setattr(pipeline, "ENGINE_MIN_BYTES", 0)
    with caplog.at_level(logging.INFO, logger="cs336_lab"):
        pipeline.tokenize_files(directory, [tmp_path / "data.txt"], tmp_path / "out")
    lines = [r.getMessage() for r in caplog.records if "tokenize engine" in r.getMessage()]
    assert len(lines) == 1 and "tokenize engine: ours" in lines[0] and reason in lines[0], lines
    tokenizer = Assignment.load().make_tokenizer(vocab, merges, [EOT])
    assert np.load(tmp_path / "out" / "data.npy").tolist() == tokenizer.encode(text)
    with pytest.raises(EngineUnavailable, match=f"--engine tiktoken does not apply: .*{reason}"):
        pipeline.tokenize_files(directory, [tmp_path / "data.txt"], tmp_path / "out2", engine="tiktoken")
    assert not (tmp_path / "out2" / "data.npy").exists()


def test_sample_proof_names_the_first_difference(tiny) -> None:
    """A tokenizer that disagrees with tiktoken (a student's bug) is caught on the sample, position named."""
    directory, tokenizer = tiny

    class OffByOne:
        special_tokens = [EOT]

        def encode(self, text: str) -> list[int]:
            ids = tokenizer.encode(text)
            return ids[:7] + [ids[7] + 1] + ids[8:]

        def decode(self, ids: list[int]) -> str:
            return tokenizer.decode(ids)

    with pytest.raises(EngineUnavailable, match=r"ids differ on the sample: first at token 7, near character \d+"):
        choose_engine("tiktoken", OffByOne(), *read_tokenizer(directory), _corpus(100))
    assert choose_engine("auto", OffByOne(), *read_tokenizer(directory), _corpus(100)) is None


def test_rank_order_problems_are_named() -> None:
    byte_vocab = {i: bytes([i]) for i in range(256)}
    vocab = byte_vocab | {256: EOT.encode(), 257: b"ab", 258: b"abc"}
    merges = [(b"a", b"b"), (b"ab", b"c")]
    assert rank_order_problem(vocab, merges, [EOT]) is None
    assert "duplicate token b'ab'" in rank_order_problem(vocab | {259: b"ab"}, merges, [EOT])
    assert "makes b'abc', which is not in the vocabulary" in rank_order_problem(
        {k: v for k, v in vocab.items() if v != b"abc"}, merges, [EOT]
    )
    assert "neither a byte" in rank_order_problem(vocab | {259: b"zz"}, merges, [EOT])
    assert "byte 0x61" in rank_order_problem({k: v for k, v in vocab.items() if k != 97}, merges, [EOT])
    overlapping = vocab | {259: b"<|endoftext|>x"}
    assert "overlap" in rank_order_problem(overlapping, merges, [EOT, "<|endoftext|>x"])
    # Merges that tiktoken, merging by rank, would apply in another way: (b, c) first, then (a, b) and (ab, c).
    # Ours encodes "abc" as [a, bc]: once b and c are merged no "ab" is left; tiktoken makes "abc".
    odd = byte_vocab | {256: EOT.encode(), 257: b"bc", 258: b"ab", 259: b"abc"}
    odd_merges = [(b"b", b"c"), (b"a", b"b"), (b"ab", b"c")]
    assert "tiktoken would build b'abc' from [b'a', b'bc']" in rank_order_problem(odd, odd_merges, [EOT])


def test_engine_choice_is_checked(tiny) -> None:
    with pytest.raises(ValueError, match="engine must be one of auto, tiktoken, ours, got 'fast'"):
        choose_engine("fast", tiny[1], *read_tokenizer(tiny[0]), "")
    assert choose_engine("ours", tiny[1], *read_tokenizer(tiny[0]), "") is None
    assert build_encoding(*read_tokenizer(tiny[0])).n_vocab == 400


def _encode(path: Path, out: Path, tokenizer, engine) -> None:
    parallel_encode.encode_file(path, out, tokenizer, num_workers=1, engine=engine)


def _traced_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("chunking", [True, False])
def test_encode_file_memory_does_not_follow_the_corpus(tiny, tmp_path: Path, monkeypatch, chunking: bool) -> None:
    """8x the text, not 8x the memory: the ids are written as they come, never all held (with the engine, and
    without chunking extras, where `encode_iterable`'s ids were all collected before this change)."""
    directory, tokenizer = tiny
    monkeypatch.setattr(parallel_encode, "_TARGET_CHUNK_BYTES", 64 << 10)
    monkeypatch.setattr(parallel_encode, "_IDS_PER_BLOCK", 1 << 14)
    monkeypatch.setattr(parallel_encode, "_COPY_BYTES", 64 << 10)
    if not chunking:
        monkeypatch.setattr(type(Assignment.load()), "has_chunking", property(lambda self: False))
    engine = build_encoding(*read_tokenizer(directory)) if chunking else None
    base = _corpus(4000, seed=6)  # ~40 KB; its ids ~ 20k tokens
    peaks, sizes = [], []
    for copies in (8, 64):
        (tmp_path / "in.txt").write_text(base * copies, encoding="utf-8")
        out = tmp_path / f"out{copies}.npy"
        peaks.append(_traced_peak(lambda o=out: _encode(tmp_path / "in.txt", o, tokenizer, engine)))
        assert np.load(out).tolist() == tokenizer.encode(base * copies)
        sizes.append(np.load(out).nbytes)
    # Holding the ids (even as a compact array) would add at least their bytes to the peak.
    assert peaks[1] - peaks[0] < 0.5 * (sizes[1] - sizes[0]), (peaks, sizes)


@pytest.mark.slow
def test_killed_tokenize_leaves_no_npy(tiny, tmp_path: Path) -> None:
    """SIGKILL while the ids are being written: the output name never appears (temp file, then rename)."""
    (tmp_path / "big.txt").write_text(_corpus(200_000, seed=7), encoding="utf-8")  # ~2 MB: seconds with ours
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cs336_lab.cli", "tokenize", str(tmp_path / "big.txt"), "--tokenizer"]
    proc = subprocess.Popen(
        [*command, str(tiny[0]), "--out-dir", str(out), "--engine", "ours", "--num-workers", "1"],
        cwd=REPO,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    deadline = time.monotonic() + 60
    while not (out.is_dir() and any(out.iterdir())) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "tokenize finished before it could be killed: give it more text"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "big.npy").exists()
    assert [p.name for p in out.iterdir() if not p.name.startswith(".big.npy.")] == []


def test_cli_engine_tiktoken_refuses_in_one_line(tiny, tmp_path: Path, caplog) -> None:
    from cs336_lab.cli import main

    vocab, merges, _ = read_tokenizer(tiny[0])
    directory = _saved(tmp_path, _permuted(vocab), merges)
    (tmp_path / "data.txt").write_text("".join(TEXTS), encoding="utf-8")
    argv = ["tokenize", str(tmp_path / "data.txt"), "--tokenizer", str(directory), "--out-dir", str(tmp_path / "o")]
    assert main([*argv, "--engine", "tiktoken"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(
        "--engine tiktoken does not apply: token ids are not in merge order"
    )
    assert "\n" not in errors[0] and not (tmp_path / "o" / "data.npy").exists()
    assert main([*argv, "--engine", "ours"]) == 0 and (tmp_path / "o" / "data.npy").exists()
