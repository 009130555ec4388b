"""Decoding: temperature and nucleus (top-p) sampling with a KV cache.

    ids = generate(model, tokenizer.encode("Once upon a time"), max_new_tokens=50, temperature=0.8, top_p=0.95,
                   eos_id=tokenizer.token_to_id("<|endoftext|>"), generator=torch.Generator().manual_seed(0))
    texts = complete(model, tokenizer, ["Once upon a time", "The cat"], max_new_tokens=50, seed=0)

With the KV cache each new token costs one position: the prompt is run once (the "prefill"), then every step
feeds only the token just sampled, attending to the keys and values cached for the earlier positions.

NOTE, two choices worth knowing:
- Ragged batches. RoPE gives every token its absolute position, so left-padding short prompts would shift
  their positions (and padding tokens would need masking). Instead prompts are grouped by length and each group
  runs as one batch with no padding at all; the results come back in the order of the prompts.
- The context window. The model knows positions `0 .. context_length-1` only. A prompt longer than that keeps
  its last `context_length` tokens; once prompt + completion outgrow the window, generation continues with a
  sliding window: each new token is predicted from the last `context_length` tokens by a full recompute (the
  cache cannot be reused because every token's position shifts by one per step).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from .functional import softmax

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"


def top_p_filter(probs: Float[Tensor, "... vocab"], top_p: float) -> Float[Tensor, "... vocab"]:
    """Keep the smallest set of most likely tokens whose total probability reaches `top_p`; renormalise.

    The most likely token is always kept, so the result is a distribution even for a tiny `top_p`.

    >>> top_p_filter(torch.tensor([0.1, 0.5, 0.4]), 0.8)  # 0.5 alone < 0.8, 0.5 + 0.4 >= 0.8
    tensor([0.0000, 0.5556, 0.4444])
    """
    if top_p >= 1.0:
        return probs
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # probability of the tokens ranked above
    keep_sorted = mass_before < top_p  # the first token always has mass_before == 0 < top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(dim=-1, keepdim=True)


def sample_next_token(
    logits: Float[Tensor, "batch vocab"],
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Int[Tensor, " batch"]:
    """Draw one token per row from `softmax(logits / temperature)` restricted to the top-p nucleus.

    `temperature == 0` means greedy decoding (argmax). Sampling runs on the generator's device (CPU by default),
    so a seed gives the same tokens whatever device the model is on.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    device = generator.device if generator is not None else torch.device("cpu")
    probs = softmax(logits.float().to(device) / temperature, dim=-1)
    probs = top_p_filter(probs, top_p)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1).to(logits.device)


def _context_length(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    value = getattr(config, "context_length", None) or getattr(model, "context_length", None)
    if not isinstance(value, int):
        raise TypeError(f"cannot find the context length of {type(model).__name__}: expected .config.context_length")
    return value


@torch.no_grad()
def _generate_group(
    model: nn.Module,
    prompts: Int[Tensor, "batch prompt_len"],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_id: int | None,
    generator: torch.Generator | None,
    use_kv_cache: bool,
    vocab_size: int | None,
) -> list[list[int]]:
    """Generate for prompts of equal length, as one batch; each row stops at its own `eos_id`."""
    context_length = _context_length(model)
    seq = prompts[:, -context_length:]  # (B, T)
    batch = seq.shape[0]
    cache = model.new_kv_cache(batch) if use_kv_cache and hasattr(model, "new_kv_cache") else None
    fresh = seq  # the tokens the cache has not seen yet: the whole prompt first, then one token per step
    outputs: list[list[int]] = [[] for _ in range(batch)]
    done = [False] * batch
    for _ in range(max_new_tokens):
        if cache is not None and seq.shape[1] <= context_length:
            logits = model(fresh, kv_cache=cache)[:, -1]  # (B, vocab): only the new positions are computed
        else:
            cache = None  # sliding window from now on (see the module docstring)
            logits = model(seq[:, -context_length:])[:, -1]
        if vocab_size is not None:
            logits = logits[:, :vocab_size]  # a model vocabulary padded past the tokenizer's: never sample those
        next_ids = sample_next_token(logits, temperature=temperature, top_p=top_p, generator=generator)  # (B,)
        for row, token in enumerate(next_ids.tolist()):
            if done[row]:
                continue
            if eos_id is not None and token == eos_id:
                done[row] = True
            else:
                outputs[row].append(token)
        if all(done):
            break
        fresh = next_ids[:, None]  # (B, 1)
        seq = torch.cat([seq, fresh], dim=1)
    return outputs


def generate(
    model: nn.Module,
    prompt_ids: Sequence[int] | Sequence[Sequence[int]] | Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    generator: torch.Generator | None = None,
    use_kv_cache: bool = True,
    vocab_size: int | None = None,
) -> list[int] | list[list[int]]:
    """Continue one prompt (a list of ids or a 1-d tensor) or a batch (a list of lists or a 2-d tensor).

    Returns the new token ids only (not the prompt), without the `eos_id` that stopped a row; a list for one
    prompt, a list of lists for a batch. `temperature=0` is greedy decoding; `top_p < 1` samples from the
    nucleus; `generator` (a `torch.Generator`, CPU by default) makes sampling reproducible; `vocab_size` limits
    sampling to ids below it (the tokenizer's vocabulary when the model's is padded).
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    single = (isinstance(prompt_ids, Tensor) and prompt_ids.ndim == 1) or (
        not isinstance(prompt_ids, Tensor) and all(isinstance(t, numbers.Integral) for t in prompt_ids)
    )
    prompts = [prompt_ids] if single else list(prompt_ids)
    rows = [p.tolist() if isinstance(p, Tensor) else [int(t) for t in p] for p in prompts]
    if any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token, got an empty prompt")
    device = next(model.parameters()).device
    results: list[list[int]] = [[] for _ in rows]
    was_training = model.training
    model.eval()
    try:
        for length in sorted({len(r) for r in rows}):
            members = [i for i, r in enumerate(rows) if len(r) == length]
            batch = torch.tensor([rows[i] for i in members], dtype=torch.long, device=device)
            outs = _generate_group(
                model,
                batch,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_p=top_p,
                eos_id=eos_id,
                generator=generator,
                use_kv_cache=use_kv_cache,
                vocab_size=vocab_size,
            )
            for i, out in zip(members, outs):
                results[i] = out
    finally:
        model.train(was_training)
    return results[0] if single else results


def _eos_id(tokenizer: Any, eos_token: str | None) -> int | None:
    if eos_token is None:
        return None
    try:
        return tokenizer.token_to_id(eos_token)
    except (KeyError, ValueError):
        return None


def complete(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_token: str | None = EOS_TOKEN,
    use_kv_cache: bool = True,
) -> list[str]:
    """Text in, text out: the completion of each prompt (without the prompt), stopping at `eos_token`."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, got a single str: wrap it in a list")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ids = generate(
        model,
        [tokenizer.encode(p) for p in prompts],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        eos_id=_eos_id(tokenizer, eos_token),
        generator=generator,
        use_kv_cache=use_kv_cache,
        vocab_size=tokenizer.vocab_size,
    )
    return [tokenizer.decode(out) for out in ids]


__all__ = ["generate", "complete", "sample_next_token", "top_p_filter", "EOS_TOKEN"]
