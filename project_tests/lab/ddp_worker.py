"""What each rank runs in `test_distributed.py`, and the single-process reference it is compared with.

Launched as `torchrun --nproc_per_node 2 project_tests/lab/ddp_worker.py OUT_DIR [--compile=BACKEND]`. Every
rank trains the same tiny `TransformerLM` on its shard of the same global batches (plain DDP, DDP with
gradient accumulation under `no_sync_if`, a bf16-autocast step, and optionally the compiled DDP wrapper with
accumulation) and writes `OUT_DIR/rank{r}.pt` with its final parameters, first-step gradients, step losses
and a few probes of the collectives. The test computes the single-process run with
`train_steps(..., DistributedContext())` on the whole global batch and compares.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from cs336_basics.loss import cross_entropy
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.optimizer import AdamW
from cs336_common.state_dict import unwrap_model
from cs336_lab.distributed import (
    DistributedContext,
    all_gather_object,
    all_reduce_mean,
    all_reduce_means,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    no_sync_if,
    rank_seed,
    wrap_model,
)

TINY = ModelConfig(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4, d_ff=64)
GLOBAL_BATCH = 8  # rows per optimiser step over all ranks: 4 per rank with 2 ranks
NUM_STEPS = 3
LR = 1e-2  # large enough that three steps move every parameter well beyond the comparison tolerance


def make_model(seed: int = 0) -> TransformerLM:
    torch.manual_seed(seed)
    return TransformerLM(TINY)


def make_batches(num_steps: int = NUM_STEPS, seed: int = 1234) -> list[tuple[Tensor, Tensor]]:
    """The global (inputs, targets) of every step, identical on every rank."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, TINY.vocab_size, (num_steps, GLOBAL_BATCH, TINY.context_length + 1), generator=gen)
    return [(t[:, :-1], t[:, 1:]) for t in tokens]


def train_steps(
    model: nn.Module,
    ctx: DistributedContext,
    batches: list[tuple[Tensor, Tensor]],
    *,
    accum_steps: int = 1,
    autocast: bool = False,
    probe: dict[str, Any] | None = None,
) -> list[float]:
    """AdamW steps on this rank's contiguous shard of each global batch; returns the global mean losses.

    The loss of each micro-batch is divided by `accum_steps`, so the accumulated gradient is the gradient
    of this rank's mean loss, and DDP's average over ranks makes it the gradient of the global mean loss.
    """
    optimizer = AdamW(model.parameters(), lr=LR, weight_decay=0.1)
    losses = []
    for step, (x, y) in enumerate(batches):
        per_rank = x.shape[0] // ctx.world_size
        x, y = (t[ctx.rank * per_rank : (ctx.rank + 1) * per_rank].to(ctx.device) for t in (x, y))
        step_loss = 0.0
        for micro, (xm, ym) in enumerate(zip(x.chunk(accum_steps), y.chunk(accum_steps))):
            with no_sync_if(model, micro < accum_steps - 1):
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=autocast):
                    logits = model(xm)
                loss = cross_entropy(logits, ym) / accum_steps
                loss.backward()
            step_loss += loss.item()
            if probe is not None and step == 0:
                # Gradient of the first parameter after each micro-step: local under no_sync, averaged after.
                probe.setdefault("grad_after_micro", []).append(next(model.parameters()).grad.detach().clone())
        if probe is not None and step == 0:
            named = unwrap_model(model).named_parameters()
            probe["grads"] = {name: p.grad.detach().cpu().clone() for name, p in named}
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(all_reduce_mean(step_loss, ctx))
    return losses


def params_of(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in unwrap_model(model).state_dict().items()}


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0])
    # "--compile=BACKEND" adds a run of the torch.compile'd DDP wrapper (dynamo splits its graph at DDP's buckets).
    compile_backend = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--compile=")), None)
    torch.set_num_threads(1)  # two ranks share two cores
    ctx = init_distributed("cpu")
    result: dict[str, Any] = {"rank": ctx.rank, "world_size": ctx.world_size, "backend": ctx.backend}

    # Collectives: each rank contributes something different.
    result["mean_of_rank_plus_one"] = all_reduce_mean(torch.tensor(ctx.rank + 1.0), ctx)
    result["broadcast"] = broadcast_object({"from_rank": ctx.rank}, ctx)
    result["means"] = all_reduce_means([float(ctx.rank), 10.0 * ctx.rank + 1.0], ctx)
    result["gathered"] = all_gather_object({"rank": ctx.rank}, ctx)
    result["rank_seed"] = rank_seed(7, ctx)
    barrier(ctx)

    batches = make_batches()
    # Different seeds per rank on purpose: DDP must broadcast rank 0's initial parameters.
    model = wrap_model(make_model(seed=ctx.rank), ctx)
    result["initial"] = params_of(model)
    probe: dict[str, Any] = {}
    result["plain_losses"] = train_steps(model, ctx, batches, probe=probe)
    result["plain"] = params_of(model)
    result["plain_grads"] = probe["grads"]

    model = wrap_model(make_model(seed=0), ctx)
    probe = {}
    result["accum_losses"] = train_steps(model, ctx, batches, accum_steps=2, probe=probe)
    result["accum"] = params_of(model)
    result["accum_grads"] = probe["grads"]
    result["accum_grad_after_micro"] = probe["grad_after_micro"]

    model = wrap_model(make_model(seed=0), ctx)
    result["bf16_losses"] = train_steps(model, ctx, batches[:1], autocast=True)
    result["bf16"] = params_of(model)

    if compile_backend is not None:
        model = torch.compile(wrap_model(make_model(seed=0), ctx), backend=compile_backend)
        probe = {}
        result["compiled_losses"] = train_steps(model, ctx, batches, accum_steps=2, probe=probe)
        result["compiled"] = params_of(model)
        result["compiled_grads"] = probe["grads"]

    torch.save(result, out_dir / f"rank{ctx.rank}.pt")
    del model  # a DDP module alive at teardown can abort the process (see `cleanup`)
    cleanup(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
