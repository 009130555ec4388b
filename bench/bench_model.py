"""LM benchmarks: a training step beside the torch-native oracle, and generation with vs without a KV cache.

Training step (forward, cross entropy, backward, AdamW step), our `TransformerLM` + `AdamW` against
`oracle.model.OracleTransformerLM` (nn.Linear, F.rms_norm, F.scaled_dot_product_attention, ...) +
`torch.optim.AdamW`: identical shapes, identical initial weights (the oracle loads our state dict), identical
batch. Ours runs twice, in its textbook form and with the fused kernels of `cs336_basics/fast.py` (what the
trainer runs); the three alternate (A B C C B A ...) and each gets a row of its median step time against
the oracle's. A full run adds the TinyStories
case with both models under `torch.compile` (on a CPU only with `python -m bench --scale`: compiling both
takes minutes there; compiled, both models get fused kernels). Each row also carries the
achieved FLOP/s from `cs336_lab.accounting` (3x the forward matmul FLOPs per token) and, on a known GPU,
the MFU.

Generation: 256 new tokens from a short prompt with the KV cache against the same model recomputing the
whole prefix at every step.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from bench.common import make_row, median, time_interleaved
from cs336_basics import fast
from cs336_basics.decoding import generate
from cs336_basics.loss import cross_entropy
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.optimizer import AdamW
from cs336_common.device import select_device
from cs336_lab.accounting import mfu, peak_flops_for_device, resolved_d_ff, training_flops_per_token

logger = logging.getLogger(__name__)

SMALL = ModelConfig(vocab_size=2048, context_length=128, d_model=128, num_layers=2, num_heads=4, d_ff=384)
TINYSTORIES = ModelConfig(
    vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344, rope_theta=10000.0
)


@dataclass(frozen=True)
class StepCase:
    """One training-step comparison: a model shape, a batch shape and how many timed repeats."""

    name: str
    config: ModelConfig
    batch_size: int
    seq_len: int
    repeats: int
    compile: bool = False  # torch.compile both models (the optimizers stay eager)
    goal: str = ">= 1"  # ours / peer throughput


def _cases(quick: bool, device: torch.device, compile: bool = True) -> list[StepCase]:
    if device.type == "cuda":  # a GPU has room for real batches
        return [
            StepCase("small", SMALL, 64, SMALL.context_length, 5 if quick else 20),
            StepCase("TinyStories", TINYSTORIES, 32 if quick else 128, TINYSTORIES.context_length, 5 if quick else 20),
        ] + ([] if quick else [StepCase("TinyStories", TINYSTORIES, 128, TINYSTORIES.context_length, 20, compile=True)])
    if quick:
        return [StepCase("small", SMALL, 2, 64, 2), StepCase("TinyStories", TINYSTORIES, 1, 64, 2)]
    return [
        StepCase("small", SMALL, 8, SMALL.context_length, 7, goal=">= 1.05"),
        StepCase("TinyStories", TINYSTORIES, 8, 256, 5, goal=">= 1.1"),
    ] + ([StepCase("TinyStories", TINYSTORIES, 4, 256, 5, compile=True)] if compile else [])


def _oracle_model(config: ModelConfig, device: torch.device) -> torch.nn.Module:
    from oracle.model import OracleTransformerLM

    return OracleTransformerLM(
        vocab_size=config.vocab_size,
        context_length=config.context_length,
        d_model=config.d_model,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        d_ff=resolved_d_ff(config),
        rope_theta=config.rope_theta,
    ).to(device)


def _step_fn(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
) -> Any:
    """One training step on a fixed batch, as a closure for `time_interleaved`."""

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return step


def _oracle_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, targets)


def _contestants(case: StepCase, device: torch.device) -> dict[str, Any]:
    """The training steps raced, each on its own copy of the same initial weights and the same batch:
    ours in its textbook form, ours with the kernels of `cs336_basics/fast.py` (what the trainer runs) and
    the torch-native oracle; under `torch.compile`, our textbook form and the oracle, both compiled."""
    torch.manual_seed(0)
    textbook = TransformerLM(case.config, device=device)
    fused = TransformerLM(case.config, device=device, fused_kernels=True)
    fused.load_state_dict(textbook.state_dict())
    oracle = _oracle_model(case.config, device)
    oracle.load_state_dict(textbook.state_dict())
    hyper = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, case.config.vocab_size, (case.batch_size, case.seq_len + 1), generator=gen).to(device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    if case.compile:
        return {
            "textbook": _step_fn(
                torch.compile(textbook), AdamW(textbook.parameters(), **hyper), cross_entropy, x, y, device
            ),
            "oracle": _step_fn(
                torch.compile(oracle), torch.optim.AdamW(oracle.parameters(), **hyper), _oracle_loss, x, y, device
            ),
        }
    return {
        "textbook": _step_fn(textbook, AdamW(textbook.parameters(), **hyper), cross_entropy, x, y, device),
        "fused": _step_fn(fused, AdamW(fused.parameters(), **hyper), fast.cross_entropy, x, y, device),
        "oracle": _step_fn(oracle, torch.optim.AdamW(oracle.parameters(), **hyper), _oracle_loss, x, y, device),
    }


def bench_training_step(case: StepCase, device: torch.device) -> dict[str, Any]:
    """Median seconds per step (wall clock, and process CPU time as `<name>_cpu`) of each contestant of
    `_contestants`, interleaved, on the same batch from the same initial weights."""
    contestants = _contestants(case, device)
    cpu: dict[str, list[float]] = {}
    with warnings.catch_warnings():
        # NOTE: inductor warns that it cannot generate code for the oracle's complex RoPE: expected, harmless.
        warnings.simplefilter("ignore", UserWarning)
        times = time_interleaved(
            contestants,
            repeats=case.repeats,
            warmup=2 if device.type == "cuda" or case.compile else 1,  # the first call compiles
            cpu_times=cpu,
        )
    return {name: median(ts) for name, ts in times.items()} | {f"{n}_cpu": median(ts) for n, ts in cpu.items()}


def _training_rows(quick: bool, device: torch.device, compile: bool = True) -> list[dict[str, Any]]:
    rows = []
    for case in _cases(quick, device, compile):
        try:
            seconds = bench_training_step(case, device)
        except Exception as err:  # noqa: BLE001 - torch.compile needs a working compiler toolchain
            if not case.compile:
                raise
            logger.warning("torch.compile case skipped: %s: %s", type(err).__name__, err)
            continue
        # The fused row first: it is what the trainer runs (and the row earlier runs reported as "ours").
        for name in ("fused", "textbook"):
            if name in seconds:
                rows.append(_training_row(case, device, seconds, name))
    return rows


def _training_row(case: StepCase, device: torch.device, seconds: dict[str, float], name: str) -> dict[str, Any]:
    """The row of contestant `name` against the oracle."""
    peak = peak_flops_for_device(device, torch.float32)
    tokens = case.batch_size * case.seq_len
    ours_tps, oracle_tps = tokens / seconds[name], tokens / seconds["oracle"]
    flops_per_token = training_flops_per_token(case.config, case.seq_len)
    notes = (
        f"B={case.batch_size} T={case.seq_len}, {torch.get_num_threads()} threads, median of {case.repeats}; "
        f"{flops_per_token / 1e6:.1f} MFLOP/token (3x fwd matmuls): "
        f"ours {ours_tps * flops_per_token / 1e9:.1f} GFLOP/s, oracle {oracle_tps * flops_per_token / 1e9:.1f} GFLOP/s"
    )
    if device.type == "cpu":
        notes += f"; CPU-time ratio {seconds['oracle_cpu'] / seconds[f'{name}_cpu']:.2f}x"
    if peak is not None:
        notes += f"; fp32 MFU ours {mfu(ours_tps, flops_per_token, peak):.1%}, oracle {mfu(oracle_tps, flops_per_token, peak):.1%}"
    if name == "fused":
        notes += f"; textbook form / fused kernels step time {seconds['textbook'] / seconds['fused']:.2f}x"
    variant = (
        "torch.compile of the textbook form"
        if case.compile
        else ("fused kernels (cs336_basics/fast.py)" if name == "fused" else "textbook form")
    )
    row = make_row(
        f"LM training step (fwd+bwd+AdamW), {case.name}, {device.type}, {variant}",
        "torch-native oracle + torch.optim.AdamW" + (", torch.compile" if case.compile else ""),
        ours_tps,
        oracle_tps,
        "tokens/s",
        goal=case.goal if name == "fused" or case.compile else None,
        notes=notes,
    )
    # Extra machine-readable fields (the aggregator keeps them in the JSON).
    row |= {
        "flops_per_token": flops_per_token,
        "ours_flop_per_s": ours_tps * flops_per_token,
        "peer_flop_per_s": oracle_tps * flops_per_token,
        "ours_cpu_s": seconds[f"{name}_cpu"],
        "peer_cpu_s": seconds["oracle_cpu"],
    }
    if peak is not None:
        row |= {"ours_mfu": mfu(ours_tps, flops_per_token, peak), "peer_mfu": mfu(oracle_tps, flops_per_token, peak)}
    return row


def _generate_fn(model: TransformerLM, prompt: torch.Tensor, max_new_tokens: int, use_kv_cache: bool) -> Any:
    """Greedy decoding (no sampling noise: both contestants produce the same tokens)."""

    def run() -> None:
        generate(model, prompt, max_new_tokens=max_new_tokens, temperature=0.0, use_kv_cache=use_kv_cache)

    return run


def _generation_rows(quick: bool, device: torch.device) -> list[dict[str, Any]]:
    new_tokens = 32 if quick else 256
    prompt_len = 16
    # NOTE: context 512 so that prompt + 256 new tokens fit without cropping. On a GPU the TinyStories shapes;
    # on a CPU the small ones: without a cache, 256 steps of up to 272 tokens through the TinyStories model
    # are ~1.3 TFLOP, minutes on two busy cores.
    base = TINYSTORIES if device.type == "cuda" else SMALL
    name = "TinyStories shapes" if device.type == "cuda" else "small"
    config = replace(base, context_length=512)
    torch.manual_seed(0)
    model = TransformerLM(config, device=device).eval()
    prompt = torch.randint(0, config.vocab_size, (prompt_len,), generator=torch.Generator().manual_seed(2)).to(device)
    times = time_interleaved(
        {
            "cache": _generate_fn(model, prompt, new_tokens, use_kv_cache=True),
            "no_cache": _generate_fn(model, prompt, new_tokens, use_kv_cache=False),
        },
        repeats=1 if quick else 3,
        warmup=0 if quick or device.type == "cpu" else 1,
    )
    cache_tps, no_cache_tps = new_tokens / median(times["cache"]), new_tokens / median(times["no_cache"])
    return [
        make_row(
            f"generation, {new_tokens} new tokens, {name}, {device.type}",
            "same model without KV cache",
            cache_tps,
            no_cache_tps,
            "tokens/s",
            notes=f"prompt {prompt_len} tokens, context 512, batch 1; ratio = KV-cache speed-up",
        )
    ]


def run(quick: bool = False, device: str | None = None, compile: bool | None = None) -> list[dict[str, Any]]:
    """All LM rows: training step for each case, then generation.

    `compile` (default: on a GPU only) adds the torch.compile case: on two busy CPU cores compiling both
    models takes many minutes, so `python -m bench` runs it on a CPU only with `--scale`.
    """
    dev = select_device(device or "auto")
    return _training_rows(quick, dev, dev.type == "cuda" if compile is None else compile) + _generation_rows(quick, dev)


if __name__ == "__main__":
    from bench.common import format_table

    print(format_table(run()))
