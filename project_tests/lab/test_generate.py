"""Generation: greedy limit, KV cache vs full recompute, nucleus sampling, EOS, seeds, batches, the CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch

import cs336_lab.generate as generate_mod
from cs336_basics.decoding import complete, generate, sample_next_token, top_p_filter
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_lab.generate import load_model
from cs336_lab.run_checkpoint import save_run_checkpoint

CONFIG = ModelConfig(vocab_size=61, context_length=24, d_model=32, num_layers=2, num_heads=4)


@pytest.fixture(scope="module")
def model() -> TransformerLM:
    torch.manual_seed(0)
    lm = TransformerLM(CONFIG)
    with torch.no_grad():  # sharper logits than the initialisation's, so greedy choices are clear-cut
        lm.lm_head.weight.mul_(8.0)
    return lm.eval()


def greedy_by_hand(model: TransformerLM, prompt: list[int], n: int) -> list[int]:
    """The obviously correct decoder: recompute the whole (windowed) sequence, take the argmax."""
    seq = list(prompt)
    for _ in range(n):
        window = torch.tensor([seq[-CONFIG.context_length :]])
        with torch.no_grad():
            seq.append(int(model(window)[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.parametrize("use_kv_cache", [True, False], ids=["kv-cache", "recompute"])
def test_temperature_zero_is_greedy(model: TransformerLM, use_kv_cache: bool) -> None:
    out = generate(model, [3, 1, 4], max_new_tokens=10, temperature=0.0, use_kv_cache=use_kv_cache)
    assert out == greedy_by_hand(model, [3, 1, 4], 10)


def test_temperature_to_zero_approaches_greedy(model: TransformerLM) -> None:
    gen = torch.Generator().manual_seed(1)
    out = generate(model, [3, 1, 4], max_new_tokens=10, temperature=1e-4, generator=gen)
    assert out == greedy_by_hand(model, [3, 1, 4], 10)


def test_kv_cache_logits_equal_full_recompute(model: TransformerLM) -> None:
    ids = torch.randint(0, CONFIG.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)  # (2, 20, vocab)
        cache = model.new_kv_cache(2)
        steps = [model(ids[:, :5], kv_cache=cache)] + [model(ids[:, t : t + 1], kv_cache=cache) for t in range(5, 20)]
    # float32: the cached path sums attention over the same keys in another order of operations.
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)


def test_kv_cache_matches_recompute_past_the_context_window(model: TransformerLM) -> None:
    # 20 prompt tokens + 30 new ones outgrow context_length=24: both paths switch to a sliding window.
    prompt = list(range(20))
    cached = generate(model, prompt, max_new_tokens=30, temperature=0.0)
    assert len(cached) == 30
    assert cached == generate(model, prompt, max_new_tokens=30, temperature=0.0, use_kv_cache=False)
    assert cached == greedy_by_hand(model, prompt, 30)


def test_kv_cache_feeds_one_position_per_new_token(model: TransformerLM) -> None:
    lengths: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[-1]))
    try:
        generate(model, [1, 2, 3, 4, 5], max_new_tokens=6, temperature=0.0)
        assert lengths == [5, 1, 1, 1, 1, 1]  # the prompt once (prefill), then only the token just sampled
        lengths.clear()
        generate(model, [1, 2, 3, 4, 5], max_new_tokens=3, temperature=0.0, use_kv_cache=False)
        assert lengths == [5, 6, 7]
    finally:
        handle.remove()


def test_sampling_with_a_seed_is_reproducible(model: TransformerLM) -> None:
    def run(seed: int) -> list[int]:
        return generate(model, [5], max_new_tokens=20, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_kv_cache_and_recompute_sample_the_same_tokens(model: TransformerLM) -> None:
    kwargs = {"max_new_tokens": 15, "temperature": 0.9, "top_p": 0.9}
    a = generate(model, [2, 7], generator=torch.Generator().manual_seed(3), **kwargs)
    b = generate(model, [2, 7], generator=torch.Generator().manual_seed(3), use_kv_cache=False, **kwargs)
    assert a == b


def test_eos_stops_the_row(model: TransformerLM) -> None:
    greedy = greedy_by_hand(model, [9, 9], 12)
    eos = greedy[4]
    out = generate(model, [9, 9], max_new_tokens=12, temperature=0.0, eos_id=eos)
    assert out == greedy[: greedy.index(eos)]  # stops at the first EOS, which is not returned


def test_batch_of_ragged_prompts_equals_one_by_one(model: TransformerLM) -> None:
    prompts = [[1, 2, 3], [4], [5, 6, 7], [8, 9]]
    batch = generate(model, prompts, max_new_tokens=8, temperature=0.0)
    assert batch == [greedy_by_hand(model, p, 8) for p in prompts]
    eos = batch[0][2]
    stopped = generate(model, prompts, max_new_tokens=8, temperature=0.0, eos_id=eos)
    assert stopped == [b[: b.index(eos)] if eos in b else b for b in batch]
    assert generate(model, torch.tensor([[1, 2, 3], [5, 6, 7]]), max_new_tokens=8, temperature=0.0) == [
        batch[0],
        batch[2],
    ]
    assert generate(model, np.array([1, 2, 3]), max_new_tokens=8, temperature=0.0) == batch[0]


def test_top_p_filter_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3], [0.7, 0.05, 0.15, 0.1]])
    # Row 0 sorted: 0.4, 0.3, 0.2, 0.1 (cumulative 0.4, 0.7, 0.9, 1.0); row 1: 0.7, 0.15, 0.1, 0.05.
    torch.testing.assert_close(top_p_filter(probs, 0.35), torch.tensor([[0, 1.0, 0, 0], [1.0, 0, 0, 0]]))
    torch.testing.assert_close(top_p_filter(probs, 0.6), torch.tensor([[0, 4 / 7, 0, 3 / 7], [1.0, 0, 0, 0]]))
    torch.testing.assert_close(
        top_p_filter(probs, 0.8), torch.tensor([[0, 4 / 9, 2 / 9, 3 / 9], [0.7 / 0.85, 0, 0.15 / 0.85, 0]])
    )
    assert top_p_filter(probs, 1e-9).count_nonzero(dim=-1).tolist() == [1, 1]  # the top token always stays
    assert torch.equal(top_p_filter(probs, 1.0), probs)


def test_sampling_stays_in_the_nucleus_with_the_right_frequencies() -> None:
    probs = torch.tensor([0.05, 0.5, 0.3, 0.15])
    logits = probs.log().expand(4000, 4)
    draws = sample_next_token(logits, temperature=1.0, top_p=0.8, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 2}  # 0.5 + 0.3 reaches 0.8: tokens 0 and 3 are outside
    # 4000 Bernoulli(5/8) draws: standard deviation ~0.0077, so 0.04 is > 5 sigma.
    assert (draws == 1).float().mean().item() == pytest.approx(0.625, abs=0.04)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
    ],
    ids=["negative-temperature", "zero-top-p", "big-top-p", "negative-length"],
)
def test_bad_arguments_are_named(model: TransformerLM, kwargs: dict, message: str) -> None:
    args = {"max_new_tokens": 3} | kwargs
    with pytest.raises(ValueError, match=message):
        generate(model, [1, 2], **args)


def test_empty_prompt_is_an_error(model: TransformerLM) -> None:
    with pytest.raises(ValueError, match="empty prompt"):
        generate(model, [[1], []], max_new_tokens=2)


@pytest.fixture(scope="module")
def byte_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cs336_lab.tokenizer_files import save_tokenizer

    directory = tmp_path_factory.mktemp("tok")
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"<|endoftext|>"}
    save_tokenizer(vocab, [], directory, special_tokens=["<|endoftext|>"])
    return directory


@pytest.fixture(scope="module")
def byte_checkpoint(tmp_path_factory: pytest.TempPathFactory, byte_tokenizer_dir: Path) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=257, context_length=32, d_model=32, num_layers=1, num_heads=2)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pt"
    save_run_checkpoint(
        path,
        TransformerLM(config),
        None,
        0,
        config=config.to_dict() | {"tokenizer_dir": str(byte_tokenizer_dir), "batch_size": 4},
    )
    return path


def test_complete_returns_text_per_prompt(byte_checkpoint: Path, byte_tokenizer_dir: Path) -> None:
    from cs336_lab.tokenizer_files import load_tokenizer

    model, config = load_model(byte_checkpoint)
    tokenizer = load_tokenizer(byte_tokenizer_dir)
    texts = complete(model, tokenizer, ["ab", "hello"], max_new_tokens=5, temperature=0.0)
    ids = generate(
        model, [tokenizer.encode("ab"), tokenizer.encode("hello")], max_new_tokens=5, temperature=0.0, eos_id=256
    )
    assert texts == [tokenizer.decode(i) for i in ids]
    with pytest.raises(TypeError, match="list of strings"):
        complete(model, tokenizer, "ab", max_new_tokens=1)  # type: ignore[arg-type]


def test_cli_generates_from_a_checkpoint(byte_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    generate_mod.add_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "generate",
            "--checkpoint",
            str(byte_checkpoint),
            "--prompt",
            "ab",
            "--prompt",
            "cd",
            "--max-new-tokens",
            "4",
            "--seed",
            "0",
        ]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("ab") and "\ncd" in out
    missing = parser.parse_args(["generate", "--checkpoint", str(byte_checkpoint.parent / "nope.pt")])
    assert missing.func(missing) == 2


def test_vocab_size_limits_sampling_to_the_tokenizers_ids(model: TransformerLM) -> None:
    # A model vocabulary padded past the tokenizer's must never produce an id the tokenizer cannot decode.
    unrestricted = generate(model, [3, 1, 4], max_new_tokens=40, generator=torch.Generator().manual_seed(0))
    assert max(unrestricted) >= 10, "the test needs a run that does sample high ids"
    out = generate(model, [3, 1, 4], max_new_tokens=40, generator=torch.Generator().manual_seed(0), vocab_size=10)
    assert len(out) == 40 and max(out) < 10
