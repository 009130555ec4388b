"""`cs336 evaluate`: every token scored once, agreement with a naive loop, bits per byte, configs, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cs336_basics.model import ModelConfig, TransformerLM
from cs336_lab.cli import main
from cs336_lab.evaluate import evaluate, load_for_eval, plan_windows
from cs336_lab.run_checkpoint import save_run_checkpoint
from cs336_lab.tokenizer_files import load_tokenizer, read_tokenizer, save_tokenizer

CONFIG = ModelConfig(vocab_size=260, context_length=16, d_model=32, num_layers=2, num_heads=4)
TEXT = "Once upon a time, a small fox found a shiny stone. It was red. <|endoftext|>The end! " * 6


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bytes plus three merges and a special token: tokens of 1 to 3 bytes."""
    directory = tmp_path_factory.mktemp("tok")
    merges = [(b" ", b"a"), (b"o", b"n"), (b" a", b" ")]
    vocab = {i: bytes([i]) for i in range(256)} | {256 + i: a + b for i, (a, b) in enumerate(merges)}
    save_tokenizer(vocab | {259: b"<|endoftext|>"}, merges, directory, special_tokens=["<|endoftext|>"])
    return directory


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    torch.manual_seed(0)
    model = TransformerLM(CONFIG)
    with torch.no_grad():  # sharper than the initialisation, so that context matters
        model.lm_head.weight.mul_(4.0)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
    save_run_checkpoint(path, model, None, 7, config=CONFIG.to_dict() | {"tokenizer_dir": str(tokenizer_dir)})
    return path


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "valid.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def naive_nats(model: torch.nn.Module, tokens: list[int], context_length: int, stride: int) -> tuple[float, int]:
    """Obviously correct, for stride == context_length (disjoint windows) and stride == 1 (full context)."""
    total, count = 0.0, 0
    with torch.no_grad():
        if stride == context_length:
            for start in range(0, len(tokens) - 1, context_length):
                window = torch.tensor([tokens[start : start + context_length + 1]])
                logits = model(window[:, :-1])[0]
                total += F.cross_entropy(logits, window[0, 1:], reduction="sum").item()
                count += window.shape[1] - 1
        else:
            assert stride == 1
            for j in range(1, len(tokens)):
                logits = model(torch.tensor([tokens[max(0, j - context_length) : j]]))[0, -1]
                total += F.cross_entropy(logits[None], torch.tensor([tokens[j]])).item()
                count += 1
    return total, count


@pytest.mark.parametrize(
    "n,m,s", [(2, 1, 1), (8, 3, 3), (8, 4, 2), (100, 16, 16), (100, 16, 5), (17, 16, 1), (5, 16, 4)]
)
def test_windows_score_every_target_once_with_the_stated_context(n: int, m: int, s: int) -> None:
    scored: list[int] = []
    for k, window in enumerate(plan_windows(n, m, s)):
        assert window.start == k * s and 1 <= window.length <= m
        positions = range(window.start + 1 + window.skip, window.start + window.length + 1)
        scored.extend(positions)
        if k:  # after the first window, every scored target sees at least m - s tokens of context
            assert all(p - window.start >= m - s + 1 for p in positions)
    assert scored == list(range(1, n))


@pytest.mark.parametrize("bad", [dict(n=1, m=4, s=4), dict(n=10, m=4, s=5), dict(n=10, m=4, s=0), dict(n=10, m=0, s=1)])
def test_bad_windows_are_errors(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="expected"):
        plan_windows(bad["n"], bad["m"], bad["s"])


@pytest.mark.parametrize("stride", [None, 1], ids=["disjoint", "stride-1"])
def test_loss_and_bits_per_byte_equal_a_naive_recomputation(
    checkpoint: Path, text_file: Path, tokenizer_dir: Path, stride: int | None
) -> None:
    result = evaluate(checkpoint, text_file, stride=stride, batch_size=5)
    tokens = load_tokenizer(tokenizer_dir).encode(TEXT)
    model, _ = load_for_eval(checkpoint)
    nats, count = naive_nats(model, tokens, CONFIG.context_length, stride or CONFIG.context_length)
    num_bytes = len(TEXT.encode("utf-8")) - len(read_tokenizer(tokenizer_dir)[0][tokens[0]])  # all but the first token
    assert (result.tokens, result.predicted_tokens, result.predicted_bytes) == (len(tokens), len(tokens) - 1, num_bytes)
    assert count == len(tokens) - 1
    assert result.loss == pytest.approx(nats / count, abs=1e-6)
    assert result.bits_per_byte == pytest.approx(nats / math.log(2) / num_bytes, abs=1e-6)
    assert result.perplexity == pytest.approx(math.exp(result.loss))


def test_a_token_array_gives_the_same_numbers_as_its_text(
    checkpoint: Path, text_file: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    np.save(tmp_path / "valid.npy", np.array(load_tokenizer(tokenizer_dir).encode(TEXT), dtype=np.uint16))
    from_text, from_npy = evaluate(checkpoint, text_file), evaluate(checkpoint, tmp_path / "valid.npy")
    assert (from_npy.loss, from_npy.bits_per_byte) == (from_text.loss, from_text.bits_per_byte)
    no_tokenizer = tmp_path / "plain.pt"
    save_run_checkpoint(no_tokenizer, load_for_eval(checkpoint)[0], None, 0, config=CONFIG.to_dict())
    assert evaluate(no_tokenizer, tmp_path / "valid.npy").bits_per_byte is None  # no vocabulary, no bytes


def test_deterministic_and_independent_of_the_batch_size(checkpoint: Path, text_file: Path) -> None:
    first, again = evaluate(checkpoint, text_file, batch_size=1), evaluate(checkpoint, text_file, batch_size=1)
    assert first.loss == again.loss
    assert evaluate(checkpoint, text_file, batch_size=7).loss == pytest.approx(first.loss, abs=1e-6)


def test_a_plain_checkpoint_dict_needs_a_config(
    checkpoint: Path, text_file: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    model, _ = load_for_eval(checkpoint)
    plain = tmp_path / "student" / "model.pt"
    plain.parent.mkdir()
    # What most course solutions write: compiled-model keys included.
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": state, "optimizer": {}, "iteration": 3}, plain)
    expected = evaluate(checkpoint, text_file).loss
    with pytest.raises(ValueError, match="stores no config.*--config"):
        evaluate(plain, text_file, tokenizer=tokenizer_dir)
    toml = tmp_path / "model.toml"
    toml.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in CONFIG.to_dict().items()) + "batch_size = 4\n")
    assert evaluate(plain, text_file, tokenizer=tokenizer_dir, config=toml).loss == expected
    (plain.parent / "config.json").write_text(json.dumps(CONFIG.to_dict() | {"tokenizer_dir": str(tokenizer_dir)}))
    assert evaluate(plain, text_file).loss == expected  # config.json beside it, as `cs336 train` writes


def test_bad_inputs_are_clear_errors(checkpoint: Path, text_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="context-length <= the model's 16, got 17"):
        evaluate(checkpoint, text_file, context_length=17)
    np.save(tmp_path / "big.npy", np.array([1, 2, 300]))
    with pytest.raises(ValueError, match=r"token id 300, expected ids in \[0, vocab_size=260\)"):
        evaluate(checkpoint, tmp_path / "big.npy")
    with pytest.raises(ValueError, match="expected a .npy token array or a text file"):
        evaluate(checkpoint, tmp_path / "valid.csv")


def test_cli_prints_one_json_line(checkpoint: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(text_file),
                "--no-progress",
                "--context-length",
                "8",
                "--stride",
                "4",
                "--threads",
                "1",  # as the tests' torch runs: the same sums in the same order, so the same loss to the last bit
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["loss"] == evaluate(checkpoint, text_file, context_length=8, stride=4).loss
    assert {"bits_per_byte", "predicted_tokens", "perplexity", "context_length", "stride"} <= record.keys()
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(text_file), "--stride", "99"]) == 2


@pytest.mark.slow
def test_a_trained_checkpoint_agrees_with_the_naive_loop_to_1e6(tmp_path: Path) -> None:
    from project_tests.lab.tiny_run import make_tiny_run

    run = make_tiny_run(tmp_path)
    result = evaluate(run.checkpoint, run.valid_text)
    model, _ = load_for_eval(run.checkpoint)
    tokens = load_tokenizer(run.tokenizer_dir).encode(run.valid_text.read_text(encoding="utf-8"))
    nats, count = naive_nats(model, tokens, run.config.model.context_length, run.config.model.context_length)
    assert result.predicted_tokens == count
    assert abs(result.loss - nats / count) < 1e-6
    assert result.loss < math.log(run.config.model.vocab_size)  # it learned something


def test_cli_batches_by_tokens_and_picks_its_threads(checkpoint: Path, text_file: Path) -> None:
    """Issue 23: `cs336 evaluate` of a small model took minutes: 16 windows per forward pass whatever their length,
    and two torch threads fighting over two busy cores (5x slower than one). It now packs ~4,096 tokens per pass
    and times 1 thread against all cores (or takes `--threads`); the numbers do not change."""
    import subprocess
    import sys

    from cs336_lab.evaluate import default_batch_size

    assert (default_batch_size(256, 10_000), default_batch_size(16, 260), default_batch_size(1024, 50_257)) == (
        16,
        256,
        1,
    )
    runs = {}
    for extra in (["--threads", "1"], ["--batch-size", "1", "--threads", "2"]):
        done = subprocess.run(
            [sys.executable, "-m", "cs336_lab.cli", "evaluate", "--checkpoint", str(checkpoint), "--data"]
            + [str(text_file), "--context-length", "8", "--stride", "4", *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert f"using {extra[-1]} CPU thread(s)" in done.stderr
        runs[extra[-1]] = json.loads(done.stdout)["loss"]
    assert runs["1"] == pytest.approx(runs["2"], rel=1e-6)
    assert runs["1"] == pytest.approx(
        evaluate(checkpoint, text_file, context_length=8, stride=4, batch_size=3).loss, rel=1e-6
    )
