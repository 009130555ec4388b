"""The training step as the context grows: TinyStories model, 128 -> 1024 tokens, ours vs the torch-native peer.

    python -m bench --scale            # with the other scale rows
    python -m bench.bench_context      # alone

The number of tokens per step is held at 2,048 (B = 2048 / T), so everything but attention costs the same at
every length and the growth is attention's (its matmuls grow like T per token; a causal kernel that skips the
masked half does half of them). Each row: tokens/s of a whole training step (forward, cross entropy, backward,
AdamW) ours vs the oracle (`F.scaled_dot_product_attention(is_causal=True)`, nn.Linear, torch.optim.AdamW),
interleaved, same weights and batch; and the attention core alone (forward + backward of the 4 layers' causal
attention at that shape) ours (`causal_attention`) vs the fused kernel, as a share of each step. The last row
gives the growth exponents (step seconds ∝ T^k) and `docs/bench/growth_context.png` the log-log plot.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.bench_model import TINYSTORIES, StepCase, bench_training_step
from bench.common import REPO_ROOT, format_table, make_row, median, time_interleaved
from bench.growth import exponent_text, fit_exponent, plot_growth, series_of
from cs336_basics.fast import causal_attention

TOKENS_PER_STEP = 2048
LENGTHS = (128, 256, 512, 1024)
DOCS_DIR = REPO_ROOT / "docs" / "bench"


def _attention_fn(kind: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor) -> Any:
    def run() -> None:
        for _ in range(TINYSTORIES.num_layers):
            if kind == "ours":
                out = causal_attention(q, k, v)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.autograd.grad(out, (q, k, v), grad)

    return run


def attention_seconds(batch: int, seq_len: int, repeats: int) -> dict[str, float]:
    """Median seconds of forward + backward of every layer's attention core, ours and the fused kernel."""
    c = TINYSTORIES
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, c.num_heads, seq_len, c.head_dim, generator=gen).requires_grad_() for _ in range(3))
    grad = torch.randn(batch, c.num_heads, seq_len, c.head_dim, generator=gen)
    times = time_interleaved(
        {kind: _attention_fn(kind, q, k, v, grad) for kind in ("ours", "fused")}, repeats=repeats, warmup=1
    )
    return {name: median(ts) for name, ts in times.items()}


def run(quick: bool = False, docs_dir: Path | None = DOCS_DIR) -> list[dict[str, Any]]:
    lengths = (64, 128) if quick else LENGTHS
    tokens = 256 if quick else TOKENS_PER_STEP
    config = replace(TINYSTORIES, context_length=max(lengths))
    rows = []
    for seq_len in lengths:
        batch = max(1, tokens // seq_len)
        step = bench_training_step(StepCase("context", config, batch, seq_len, 2 if quick else 3), torch.device("cpu"))
        attn = attention_seconds(batch, seq_len, 2 if quick else 3)
        n = batch * seq_len
        row = make_row(
            f"LM training step, TinyStories, context {seq_len} (B={batch})",
            "torch-native oracle (fused causal SDPA) + torch.optim.AdamW",
            n / step["ours"],
            n / step["oracle"],
            "tokens/s",
            goal=">= 1",
            notes=f"attention core (fwd+bwd, {config.num_layers} layers): ours {attn['ours'] * 1e3:.0f} ms "
            f"({attn['ours'] / step['ours']:.0%} of our step) vs fused {attn['fused'] * 1e3:.0f} ms "
            f"({attn['fused'] / step['oracle']:.0%} of its step); CPU-time ratio "
            f"{step['oracle_cpu'] / step['ours_cpu']:.2f}x",
        )
        rows.append(
            row
            | {
                "seq_len": seq_len,
                "ours_s": step["ours"],
                "peer_s": step["oracle"],
                "ours_attn_s": attn["ours"],
                "peer_attn_s": attn["fused"],
            }
        )
    k = {
        key: fit_exponent(*series_of(rows, "seq_len", key))
        for key in ("ours_s", "peer_s", "ours_attn_s", "peer_attn_s")
    }
    rows.append(
        make_row(
            f"LM training step: growth exponent of step time (T^k), {tokens} tokens per step",
            "torch-native oracle",
            k["ours_s"] or 0.0,
            k["peer_s"] or 0.0,
            "k",
            notes=f"attention core alone: ours {exponent_text(k['ours_attn_s'])} vs fused {exponent_text(k['peer_attn_s'])} "
            "(at fixed tokens per step, 1 = cost per token linear in T)",
        )
    )
    if docs_dir is not None and not quick:
        _plot(rows, docs_dir)
    return rows


def _plot(rows: list[dict[str, Any]], docs_dir: Path) -> None:
    """Step and attention-core seconds against the context length, ours and the peer's, on log-log axes."""
    series = {
        "ours: step": series_of(rows, "seq_len", "ours_s"),
        "oracle: step": series_of(rows, "seq_len", "peer_s"),
        "ours: attention": series_of(rows, "seq_len", "ours_attn_s"),
        "fused SDPA: attention": series_of(rows, "seq_len", "peer_attn_s"),
    }
    plot_growth(
        docs_dir / "growth_context.png",
        f"training step vs context length, TinyStories model, {TOKENS_PER_STEP} tokens/step",
        "context length T",
        [("seconds per step", series)],
    )


if __name__ == "__main__":
    print(format_table(run()))
