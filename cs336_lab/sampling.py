"""Text completion for the tools: the package's own `complete` when it has one, else a plain sampling loop.

    texts = sample_completions(model, tokenizer, ["Once upon a time"], max_new_tokens=50, temperature=0.8,
                               top_p=0.95, seed=0)

The reference's `complete` (`cs336_basics/decoding.py`) batches prompts and keeps a KV cache. A package
without it (a student's, say) still gets completions from `plain_complete`: one prompt at a time, the whole
(windowed) context recomputed for every new token, temperature and nucleus (top-p) sampling on the package's
logits. Slower, and the same distribution.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cs336_lab.assignment import Assignment

EOS_TOKEN = "<|endoftext|>"


def check_sampling(temperature: float, top_p: float, max_new_tokens: int) -> None:
    """Refuse settings that cannot sample, naming the expected range and the value."""
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"--temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise ValueError(f"--top-p must be in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")


def sample_completions(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int | None,
    use_kv_cache: bool = True,
) -> list[str]:
    """The completion of each prompt (without the prompt), stopping at the end-of-text token."""
    check_sampling(temperature, top_p, max_new_tokens)
    package_complete = Assignment.load().complete
    if package_complete is not None:
        return package_complete(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            use_kv_cache=use_kv_cache,
        )
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return [
        plain_complete(
            model,
            tokenizer,
            p,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            generator=generator,
        )
        for p in prompts
    ]


@torch.no_grad()
def plain_complete(
    model: nn.Module,
    tokenizer: Any,
    prompt: str,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    generator: torch.Generator | None,
    context_length: int | None = None,
) -> str:
    """Sample a completion token by token, recomputing the last `context_length` positions each time."""
    try:
        eos = tokenizer.encode(EOS_TOKEN)
    except Exception:
        eos = []
    eos_id = eos[0] if len(eos) == 1 else None
    window = (
        context_length
        or getattr(model, "context_length", None)
        or getattr(getattr(model, "config", None), "context_length", None)
        or 1 << 30
    )
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt) or ([eos_id] if eos_id is not None else [0])
    new: list[int] = []
    model.eval()
    for _ in range(max_new_tokens):
        context = torch.tensor([(ids + new)[-window:]], device=device)  # (1, T)
        logits = model(context)[0, -1].float()  # (vocab,)
        token = _sample(logits, temperature, top_p, generator)
        if token == eos_id:
            break
        new.append(token)
    return tokenizer.decode(new)


def _sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """One id from `softmax(logits / temperature)` restricted to the smallest set of mass >= `top_p`."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1).cpu()
    sorted_probs, order = probs.sort(descending=True)
    keep = sorted_probs.cumsum(0) - sorted_probs < top_p  # the mass before each token is still short of top_p
    sorted_probs = sorted_probs * keep
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return int(order[choice])


__all__ = ["EOS_TOKEN", "check_sampling", "sample_completions", "plain_complete"]
