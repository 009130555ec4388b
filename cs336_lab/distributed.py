"""Data-parallel training on `torch.distributed`, launched by `torchrun`.

We do not invent a scheme of our own: every rank runs the same script, `torchrun` tells it who it is through
environment variables, `DistributedDataParallel` (DDP) averages gradients during `backward()`, and a few
collectives (`all_reduce_mean`, `broadcast_object`, `barrier`) keep the ranks in step for logging and evaluation.

    torchrun --nproc_per_node 2 -m cs336_lab.cli train ...                   # one machine, 2 ranks
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 \\
             --nproc_per_node 8 -m cs336_lab.cli train ...                    # node 0 of 2

A training loop needs a handful of calls, and the same code runs unchanged in a single process
(`world_size == 1`: no process group, no DDP wrapper, every collective is the identity):

    ctx = init_distributed(cfg.device)                         # rank, world size, this rank's device
    rng = np.random.default_rng(rank_seed(cfg.seed, ctx))      # each rank draws different batches
    model = wrap_model(TransformerLM(mc, device=ctx.device), ctx)
    for micro in range(accum_steps):
        with no_sync_if(model, micro < accum_steps - 1):       # forward AND backward inside
            cross_entropy(model(x), y).backward()              # DDP all-reduces on the last micro-step only
    loss = all_reduce_mean(loss, ctx)                          # the same number on every rank, for logging
    if ctx.is_main:
        save_run_checkpoint(path, model, ...)                 # cs336_common.state_dict.unwrap_model: plain keys
    del model                                                  # no DDP module may outlive the group
    cleanup(ctx)

Backends: NCCL on CUDA (each rank owns `cuda:{LOCAL_RANK}`), gloo on CPU. With `torch.compile`, wrap first
and compile the wrapper (`torch.compile(wrap_model(model, ctx))`): dynamo then splits the graph at DDP's bucket
boundaries so the all-reduce still overlaps the backward pass. bf16 autocast needs nothing special: DDP
all-reduces the parameters' gradients, which stay float32.

FSDP later: `wrap_model` is the one place that picks the wrapper, `cs336_common.state_dict` the one place that strips it.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from cs336_common.device import select_device

__all__ = [
    "DistributedContext",
    "init_distributed",
    "wrap_model",
    "no_sync_if",
    "all_reduce_mean",
    "all_reduce_means",
    "all_gather_object",
    "broadcast_object",
    "barrier",
    "cleanup",
    "rank_seed",
]

T = TypeVar("T")

# The variables torchrun (and `torch.multiprocessing` launchers that mimic it) set for every rank.
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """Who this process is in the job. `world_size == 1` means a plain single-process run.

    `backend` is `"nccl"`, `"gloo"` or `None` (no process group). `device` is where this rank keeps its
    model and batches; under NCCL it is `cuda:{local_rank}`.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        if self.local_rank < 0:
            raise ValueError(f"local_rank must be >= 0, got {self.local_rank}")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the only rank that logs, evaluates and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """True when collectives actually talk to other ranks."""
        return self.world_size > 1

    # The small interface a training loop needs: each is the identity (or a no-op) in a single process.
    def seed(self, seed: int) -> int:
        """This rank's seed for its batches (see `rank_seed`)."""
        return rank_seed(seed, self)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model to train: DDP-wrapped when there are several ranks (see `wrap_model`)."""
        return wrap_model(model, self)

    def means(self, values: list[float]) -> list[float]:
        """The mean over all ranks of each of a few floats (see `all_reduce_means`)."""
        return all_reduce_means(values, self)

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order (see `all_gather_object`)."""
        return all_gather_object(obj, self)

    def barrier(self) -> None:
        """Wait for every rank (see `barrier`)."""
        barrier(self)


def _env_int(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def init_distributed(device: str = "auto", *, timeout: datetime.timedelta | None = None) -> DistributedContext:
    """Join the process group that `torchrun` set up, or describe a single process when not launched by it.

    Reads `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`. With `WORLD_SIZE` unset or 1 no
    process group is created. Calling it again in a process whose group is already initialised reuses it.
    """
    if "WORLD_SIZE" not in os.environ or _env_int("WORLD_SIZE") == 1:
        return DistributedContext(device=select_device(device))

    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: launch with torchrun "
            f"(expected all of {', '.join(_TORCHRUN_VARS)})"
        )
    rank, world_size, local_rank = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    dev = select_device(device, local_rank=local_rank, distributed=True)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    ctx = DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, backend=backend)

    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # before init: NCCL binds its communicator to the current device
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend, "rank": rank, "world_size": world_size}
        if timeout is not None:
            kwargs["timeout"] = timeout
        if backend == "nccl":
            kwargs["device_id"] = dev  # eager NCCL init: errors surface here, not at the first all-reduce
        dist.init_process_group(init_method="env://", **kwargs)
    elif dist.get_world_size() != world_size or dist.get_rank() != rank:
        raise ValueError(
            f"a process group already exists with rank {dist.get_rank()} of {dist.get_world_size()}, "
            f"but the environment says rank {rank} of {world_size}"
        )
    return ctx


def wrap_model(model: nn.Module, ctx: DistributedContext, **ddp_kwargs: Any) -> nn.Module:
    """Wrap `model` (already on `ctx.device`) in DDP when there are several ranks; return it unchanged otherwise.

    DDP broadcasts rank 0's parameters to every rank at construction, so all ranks start identical even if
    they initialised with different seeds. Extra keyword arguments go to `DistributedDataParallel`.
    """
    if not ctx.is_distributed:
        return model
    if not dist.is_initialized():
        raise ValueError(f"world_size is {ctx.world_size} but no process group exists: call init_distributed")
    param_devices = {p.device for p in model.parameters()}
    if param_devices and param_devices != {ctx.device}:
        raise ValueError(
            f"move the model to {ctx.device} before wrapping it, found parameters on {sorted(map(str, param_devices))}"
        )
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def _find_ddp(model: nn.Module) -> DistributedDataParallel | None:
    """The DDP wrapper in `model`, looking through `torch.compile`'s wrapper; None when there is none."""
    while True:
        if isinstance(model, DistributedDataParallel):
            return model
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner


def no_sync_if(model: nn.Module, condition: bool) -> contextlib.AbstractContextManager[None]:
    """`model.no_sync()` when `model` is (or compiles) a DDP wrapper and `condition` holds, else a no-op.

    Gradient accumulation: pass `condition = micro_step < accum_steps - 1` so gradients only accumulate
    locally on the early micro-steps and are all-reduced once, during the last backward.

    NOTE: put the forward pass inside the context too: DDP decides during `forward` whether the coming
    backward synchronises.
    """
    ddp = _find_ddp(model)
    if ddp is not None and condition:
        return ddp.no_sync()
    return contextlib.nullcontext()


def all_reduce_mean(value: float | Tensor, ctx: DistributedContext) -> float:
    """The mean of a scalar over all ranks, as a Python float (identity in a single process).

    Used for logging and evaluation: every rank contributes its local loss and all of them get the average.
    Accumulated in float64 so the average of equal values is exact.
    """
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"all_reduce_mean takes a scalar, got a tensor of shape {tuple(value.shape)}")
        tensor = value.detach().to(device=ctx.device, dtype=torch.float64).reshape(1)
    elif isinstance(value, (int, float)):
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=ctx.device)
    else:
        raise TypeError(f"all_reduce_mean takes a float or a scalar tensor, got {type(value).__name__}")
    if ctx.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= ctx.world_size
    return float(tensor.item())


def all_reduce_means(values: list[float], ctx: DistributedContext) -> list[float]:
    """The mean over all ranks of each of a few floats, in one all-reduce (`values` itself in a single process).

    The training loop averages its loss and clock this way so that every rank takes the same decisions.
    """
    if not ctx.is_distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return (t / ctx.world_size).tolist()


def all_gather_object(obj: T, ctx: DistributedContext) -> list[T]:
    """Every rank's `obj` (any picklable value), in rank order, on every rank; `[obj]` in a single process."""
    if not ctx.is_distributed:
        return [obj]
    objects: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(objects, obj)
    return objects


def broadcast_object(obj: T, ctx: DistributedContext, *, src: int = 0) -> T:
    """Rank `src`'s `obj` (any picklable value) on every rank; returns `obj` itself in a single process.

    Example: `run_dir = broadcast_object(make_run_dir() if ctx.is_main else None, ctx)`.
    """
    if not ctx.is_distributed:
        return obj
    if not 0 <= src < ctx.world_size:
        raise ValueError(f"src must be in [0, {ctx.world_size}), got {src}")
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def barrier(ctx: DistributedContext) -> None:
    """Wait until every rank gets here (no-op in a single process), e.g. before others read rank 0's file."""
    if not ctx.is_distributed:
        return
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def cleanup(ctx: DistributedContext) -> None:
    """Leave the process group at the end of a run (no-op in a single process or when already gone).

    Drop every DDP-wrapped model first: a DDP module still alive when its group is destroyed, or when the
    process exits, can abort the process in gloo's teardown (`train` does so; `gc.collect` here frees the
    reference cycles that keep a dropped wrapper alive).
    """
    if ctx.is_distributed and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def rank_seed(seed: int, ctx: DistributedContext) -> int:
    """A per-rank seed: `seed` itself on rank 0, an independent-looking 63-bit seed on the other ranks.

    Rank 0 keeps `seed` so a single-process run is unchanged; the others hash `(seed, rank)` so that rank 1
    of seed 0 does not replay rank 0 of seed 1 (as `seed + rank` would).

    >>> rank_seed(42, DistributedContext())
    42
    >>> ctx = DistributedContext(rank=1, world_size=2)
    >>> rank_seed(42, ctx) == rank_seed(42, ctx) != 42
    True
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if ctx.rank == 0:
        return seed
    state = np.random.SeedSequence(entropy=seed, spawn_key=(ctx.rank,)).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))  # < 2**63: fits torch.manual_seed and numpy
