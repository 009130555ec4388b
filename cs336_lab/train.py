"""The training loop: memory-mapped token arrays in, checkpoints, metrics and a loss curve out.

    config = TrainConfig(train_data="data/train.npy", valid_data="data/valid.npy", vocab_size=4096,
                         context_length=128, d_model=256, num_layers=4, num_heads=8, max_steps=2000)
    result = train(config)          # or: cs336 train --config run.toml --max-steps 2000

One step = `grad_accum_steps` micro-batches of `batch_size` sequences (per rank), AdamW with a cosine
schedule and warm-up, global gradient clipping. Every `eval_every` steps the model is scored on a fixed set of
validation batches (the same ones every time, so the curve is comparable), in nats per token and, when a
tokenizer is given, in bits per byte. Everything a run writes lives in `out_dir` (see `run_log.py`):

    config.json      the final config of the run          metrics.jsonl   one JSON record per log/eval step
    ckpt_latest.pt   model + optimizer + sampler state     loss_curve.png  train and validation loss

Resuming (`resume=True`) restores the model, the optimizer, the step counter, the elapsed time and the batch
sampler's random state, so a resumed CPU run reproduces the losses of an uninterrupted one exactly.

Under `torchrun --nproc_per_node N` the same code runs data-parallel (see `distributed.py`): every rank
samples its own batches from a per-rank seed, DDP averages the gradients, and only rank 0 evaluates, logs and
writes files. A checkpoint written by N ranks resumes with M ranks (ranks without a saved sampler state reseed).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from cs336_lab import distributed as dist_utils
from cs336_basics.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from cs336_lab.config import save_config
from cs336_basics.data import get_batch, load_training_tokens
from cs336_basics.loss import cross_entropy
from cs336_basics.model import ModelConfig, TransformerLM
from cs336_basics.optimizer import AdamW, clip_gradients, get_lr_cosine_schedule
from cs336_lab.run_log import MetricsLog, bytes_per_token, plot_loss_curve, progress_bar, start_wandb

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "ckpt_latest.pt"
# NOTE: the schemes of cs336_basics/init.py, spelled out: the handout's kit runs these tools on a student's
# package, which has no init.py (and a ModelConfig without `init`: model_config() then leaves it out).
InitChoice = Literal["assignment", "xavier_normal", "xavier_uniform", "kaiming_normal", "kaiming_uniform", "orthogonal"]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; `cs336 train` has one flag per field."""

    # data
    train_data: str = field(default="", metadata=_help("training tokens, a 1-d .npy array"))
    valid_data: str = field(default="", metadata=_help("validation tokens, a 1-d .npy array"))
    tokenizer_dir: str | None = field(default=None, metadata=_help("tokenizer directory: bits/byte and samples"))
    # model (maps onto ModelConfig)
    vocab_size: int = 10_000
    context_length: int = 256
    d_model: int = 512
    num_layers: int = 4
    num_heads: int = 16
    d_ff: int | None = field(default=None, metadata=_help("feed-forward width; none = about 8/3 d_model"))
    rope_theta: float = 10_000.0
    use_rmsnorm: bool = field(default=True, metadata=_help("ablation: --no-use-rmsnorm drops every RMSNorm"))
    norm_position: Literal["pre", "post"] = "pre"
    position_embedding: Literal["rope", "none"] = field(default="rope", metadata=_help("'none' = NoPE"))
    ffn_type: Literal["swiglu", "silu"] = "swiglu"
    init: InitChoice = field(default="assignment", metadata=_help("initialisation of every Linear (init.py)"))
    # optimisation
    batch_size: int = field(default=32, metadata=_help("sequences per micro-batch, per rank"))
    grad_accum_steps: int = 1
    max_steps: int = 5_000
    max_time_s: float | None = field(default=None, metadata=_help("wall-clock budget; stops cleanly"))
    lr_max: float = 1e-3
    lr_min: float = 1e-4
    warmup_steps: int = 100
    lr_clock: Literal["steps", "time"] = field(
        default="steps", metadata=_help("'time': the schedule follows elapsed/max_time_s instead of step/max_steps")
    )
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    grad_clip: float = field(default=1.0, metadata=_help("global L2 norm limit; 0 = no clipping"))
    # evaluation, logging, checkpoints
    eval_every: int = 100
    eval_batches: int = 20
    log_every: int = 10
    checkpoint_every: int = 1_000
    out_dir: str = "runs/train"
    resume: bool = field(default=False, metadata=_help("continue from out_dir/ckpt_latest.pt"))
    seed: int = 0
    progress: bool = field(default=True, metadata=_help("show a progress bar"))
    wandb: bool = field(default=False, metadata=_help("also log to Weights & Biases (if installed)"))
    wandb_project: str = "cs336-basics"
    # hardware
    device: str = field(default="auto", metadata=_help("auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps"))
    precision: Literal["auto", "fp32", "bf16"] = field(
        default="auto", metadata=_help("auto = bf16 autocast on CUDA, fp32 elsewhere")
    )
    compile: bool = field(default=False, metadata=_help("torch.compile the model"))
    peak_flops: float | None = field(
        default=None, metadata=_help("peak FLOP/s of one device, for MFU; none = the known peak of the GPU")
    )

    def __post_init__(self) -> None:
        positive = ("vocab_size", "context_length", "d_model", "num_layers", "num_heads", "batch_size",
                    "grad_accum_steps", "max_steps", "eval_every", "eval_batches", "log_every", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps={self.max_steps}], got {self.warmup_steps}")
        if not 0 <= self.lr_min <= self.lr_max:
            raise ValueError(f"expected 0 <= lr_min <= lr_max, got lr_min={self.lr_min}, lr_max={self.lr_max}")
        if self.max_time_s is not None and self.max_time_s <= 0:
            raise ValueError(f"max_time_s must be positive or None, got {self.max_time_s}")
        if self.lr_clock == "time" and self.max_time_s is None:
            raise ValueError("lr_clock='time' needs max_time_s, got max_time_s=None")
        if self.peak_flops is not None and self.peak_flops <= 0:
            raise ValueError(f"peak_flops must be positive or None, got {self.peak_flops}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")

    def model_config(self) -> ModelConfig:
        """The `ModelConfig` named by the model fields of this config."""
        names = {f.name for f in dataclasses.fields(ModelConfig)}
        return ModelConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})


@dataclass
class TrainResult:
    """What `train` returns: the final numbers plus every logged record (also in metrics.jsonl)."""

    steps: int
    tokens_seen: int
    final_val_loss: float | None
    best_val_loss: float | None
    final_val_bpb: float | None
    elapsed_s: float
    out_dir: Path
    history: list[dict[str, Any]]


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss or the gradient norm becomes inf/nan; the last good checkpoint is left intact."""


ModelFactory = Callable[[ModelConfig, torch.device], nn.Module]
OptimizerFactory = Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]


def default_model_factory(model_config: ModelConfig, device: torch.device) -> nn.Module:
    return TransformerLM(model_config, device=device)


def default_optimizer_factory(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    return AdamW(params, lr=config.lr_max, betas=config.betas, eps=config.adam_eps, weight_decay=config.weight_decay)


class BatchSampler:
    """Random training batches from a numpy `Generator` whose state goes into the checkpoint."""

    def __init__(self, tokens: np.ndarray, config: TrainConfig, device: torch.device, seed: int) -> None:
        self.tokens, self.config, self.device = tokens, config, device
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return get_batch(self.tokens, self.config.batch_size, self.config.context_length, str(self.device),
                         generator=self.rng)

    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state


def _autocast(device: torch.device, precision: str) -> Any:
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate(model: nn.Module, tokens: np.ndarray, config: TrainConfig, device: torch.device) -> float:
    """Mean validation loss (nats/token) over `eval_batches` fixed batches: the same batches on every call."""
    rng = np.random.default_rng(config.seed + 1_000_003)  # fixed: independent of the training sampler
    was_training = model.training
    model.eval()
    losses = []
    for _ in range(config.eval_batches):
        x, y = get_batch(tokens, config.batch_size, config.context_length, str(device), generator=rng)
        with _autocast(device, config.precision):
            logits = model(x)
        losses.append(cross_entropy(logits, y).item())
    model.train(was_training)
    return float(np.mean(losses))


def _lr_at(config: TrainConfig, step: int, elapsed_s: float) -> float:
    """The scheduled learning rate before step `step` (0-based), by step count or by elapsed time."""
    it: float = step
    if config.lr_clock == "time":
        assert config.max_time_s is not None
        it = elapsed_s / config.max_time_s * config.max_steps
    return get_lr_cosine_schedule(it, config.lr_max, config.lr_min, config.warmup_steps, config.max_steps)


def _flops_and_peak(config: TrainConfig, device: torch.device) -> tuple[float | None, float | None]:
    """FLOPs per trained token and the peak FLOP/s for MFU: the user's, else the device's known peak."""
    try:
        from cs336_lab.accounting import peak_flops_for_device, training_flops_per_token
    except ImportError:
        return None, None
    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    try:
        flops = training_flops_per_token(config.model_config(), config.context_length)
        if config.peak_flops is not None:
            return flops, config.peak_flops
        return flops, peak_flops_for_device(device, torch.bfloat16 if bf16 else torch.float32)
    except Exception:  # MFU is a nicety: never let it break a run
        return None, None


def train(
    config: TrainConfig,
    *,
    model_factory: ModelFactory | None = None,
    optimizer_factory: OptimizerFactory | None = None,
) -> TrainResult:
    """Train a language model as described by `config`; see the module docstring.

    `model_factory(model_config, device)` and `optimizer_factory(params, config)` replace our `TransformerLM`
    and `AdamW`, e.g. to train the harness's torch-native oracle model with the very same loop.
    Raises `NonFiniteLossError` (a `FloatingPointError`) when the loss diverges.
    """
    owns_group = not torch.distributed.is_initialized()  # leave a caller's process group alone at the end
    ctx = dist_utils.init_distributed(config.device)
    try:
        return _train(config, ctx, model_factory or default_model_factory,
                      optimizer_factory or default_optimizer_factory)
    finally:
        if owns_group:
            dist_utils.cleanup(ctx)


def _train(
    config: TrainConfig,
    ctx: dist_utils.DistributedContext,
    model_factory: ModelFactory,
    optimizer_factory: OptimizerFactory,
) -> TrainResult:
    device = ctx.device
    out_dir = Path(config.out_dir)
    ckpt_path = out_dir / CHECKPOINT_NAME
    sizes = {"context_length": config.context_length, "vocab_size": config.vocab_size}
    train_tokens = load_training_tokens(config.train_data, "train_data", **sizes)
    valid_tokens = load_training_tokens(config.valid_data, "valid_data", **sizes)
    if config.resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt_path}")

    torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model_config = config.model_config()
    model = model_factory(model_config, device)
    optimizer = optimizer_factory([p for p in model.parameters() if p.requires_grad], config)
    sampler = BatchSampler(train_tokens, config, device, dist_utils.rank_seed(config.seed, ctx))

    step, tokens_seen, elapsed_offset, best_val = 0, 0, 0.0, math.inf
    if config.resume:
        payload = read_checkpoint(ckpt_path, map_location="cpu")
        step = load_checkpoint(ckpt_path, model, optimizer, map_location=device, restore_rng=True)
        extra = payload.get("extra") or {}
        tokens_seen = int(extra.get("tokens_seen", 0))
        elapsed_offset = float(extra.get("elapsed_s", 0.0))
        best_val = float(extra.get("best_val_loss", math.inf))
        states = extra.get("sampler_states") or []
        if len(states) == ctx.world_size:
            sampler.set_state(states[ctx.rank])
        else:  # a different number of ranks: fresh, distinct streams for the rest of the run
            sampler.rng = np.random.default_rng([dist_utils.rank_seed(config.seed, ctx), step])
        del payload

    train_model: nn.Module = dist_utils.wrap_model(model, ctx)
    if config.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]

    tokens_per_step = config.batch_size * config.context_length * config.grad_accum_steps * ctx.world_size
    flops_per_token, peak_flops = _flops_and_peak(config, device)
    metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=ctx.is_main)
    bpt = None
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.json")
        metrics.start(keep_until_step=step if config.resume else -1)
        if config.tokenizer_dir:
            bpt = bytes_per_token(config.tokenizer_dir, valid_tokens)
    wandb_run = start_wandb(config) if ctx.is_main and config.wandb else None

    def checkpoint(at_step: int, elapsed_s: float) -> None:
        states = dist_utils.all_gather_object(sampler.state(), ctx)
        if ctx.is_main:
            extra = {"tokens_seen": tokens_seen, "elapsed_s": elapsed_s, "best_val_loss": best_val,
                     "sampler_states": states, "world_size": ctx.world_size}
            save_checkpoint(model, optimizer, at_step, ckpt_path, config=dataclasses.asdict(config),
                            extra=extra, save_rng=True)
        dist_utils.barrier(ctx)

    def run_eval(at_step: int, elapsed_s: float) -> dict[str, Any]:
        nonlocal best_val
        record: dict[str, Any] = {}
        if ctx.is_main:
            val = evaluate(model, valid_tokens, config, device)
            best_val = min(best_val, val)
            record = {"val_loss": val}
            if bpt is not None:
                record["val_bpb"] = val / math.log(2) / bpt
            logger.info("step %d: validation loss %.4f%s", at_step, val,
                        f", {record['val_bpb']:.4f} bits/byte" if bpt is not None else "")
        dist_utils.barrier(ctx)
        return record

    progress = progress_bar(config, step) if ctx.is_main and config.progress else None
    model.train()
    last_val: float | None = None
    start = time.perf_counter() - elapsed_offset
    window_start, window_tokens = time.perf_counter(), 0
    last_saved, plotted = step, 0
    stop_reason = "max_steps"
    try:
        while step < config.max_steps:
            elapsed = time.perf_counter() - start
            lr = _lr_at(config, step, elapsed)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = 0.0
            for micro in range(config.grad_accum_steps):
                x, y = sampler()
                with dist_utils.no_sync_if(train_model, micro < config.grad_accum_steps - 1):
                    with _autocast(device, config.precision):
                        logits = train_model(x)
                    loss = cross_entropy(logits, y) / config.grad_accum_steps
                    loss.backward()
                loss_sum += loss.item()
            params = [p for p in model.parameters() if p.grad is not None]
            grad_norm = clip_gradients(params, config.grad_clip) if config.grad_clip > 0 else _grad_norm(params)
            loss_mean, elapsed = dist_utils.all_reduce_means([loss_sum, time.perf_counter() - start], ctx)
            if not (math.isfinite(loss_mean) and math.isfinite(grad_norm)):
                raise NonFiniteLossError(
                    f"non-finite {'loss' if not math.isfinite(loss_mean) else 'gradient norm'} at step {step + 1} "
                    f"(loss {loss_mean}, grad norm {grad_norm}, lr {lr:.3g}); the run stops here and "
                    f"{ckpt_path} keeps the last good state (step {last_saved}); try a lower lr_max or grad_clip"
                )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_step
            window_tokens += tokens_per_step

            out_of_time = config.max_time_s is not None and elapsed >= config.max_time_s
            last = step == config.max_steps or out_of_time
            record: dict[str, Any] = {}
            if step % config.log_every == 0 or step % config.eval_every == 0 or last:
                tok_s = window_tokens / max(time.perf_counter() - window_start, 1e-9)
                record = {"step": step, "tokens": tokens_seen, "time_s": round(elapsed, 3), "lr": lr,
                          "train_loss": loss_mean, "grad_norm": grad_norm, "tokens_per_s": tok_s}
                if flops_per_token and peak_flops:
                    record["mfu"] = tok_s * flops_per_token / peak_flops / ctx.world_size
            if step % config.eval_every == 0 or last:
                record.update(run_eval(step, elapsed))
                last_val = record.get("val_loss", last_val)
            if record and ctx.is_main:
                metrics.write(record)
                if wandb_run is not None:
                    wandb_run.log(record, step=step)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{loss_mean:.3f}", lr=f"{lr:.2e}")
            if step % config.checkpoint_every == 0 or last:
                checkpoint(step, elapsed)
                last_saved = step
                if ctx.is_main:  # redrawn with each checkpoint (a plot costs ~0.2 s)
                    plot_loss_curve(metrics.records, out_dir / "loss_curve.png")
                    plotted = len(metrics.records)
            if record:  # the next throughput window starts after this step's evaluation, checkpoint and plot
                window_start, window_tokens = time.perf_counter(), 0
            if out_of_time:
                stop_reason = "max_time_s"
                break
    finally:
        if progress is not None:
            progress.close()
        if wandb_run is not None:
            wandb_run.finish()
        if ctx.is_main and len(metrics.records) != plotted:
            plot_loss_curve(metrics.records, out_dir / "loss_curve.png")
    if ctx.is_main:
        logger.info("stopped after %d steps (%s), %d tokens", step, stop_reason, tokens_seen)
    final_bpb = last_val / math.log(2) / bpt if (last_val is not None and bpt) else None
    return TrainResult(steps=step, tokens_seen=tokens_seen, final_val_loss=last_val,
                       best_val_loss=best_val if math.isfinite(best_val) else None, final_val_bpb=final_bpb,
                       elapsed_s=time.perf_counter() - start, out_dir=out_dir, history=list(metrics.records))


@torch.no_grad()
def _grad_norm(params: list[nn.Parameter]) -> float:
    if not params:
        return 0.0
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in params])).item()


# --------------------------------------------------------------------------------------------- CLI


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register `cs336 train`: one flag per `TrainConfig` field, plus `--config FILE`."""
    from cs336_lab.config import add_dataclass_arguments

    parser = subparsers.add_parser("train", help="train a Transformer LM on .npy token arrays",
                                   description=__doc__.split("\n\n")[0])
    add_dataclass_arguments(parser, TrainConfig)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cs336_lab.config import config_from_args

    try:
        config = config_from_args(TrainConfig, args)
        result = train(config)
    except (ValueError, TypeError, FileNotFoundError) as err:
        logger.error("%s", err)
        return 2
    except NonFiniteLossError as err:
        logger.error("%s", err)
        return 1
    if result.final_val_loss is not None:
        bpb = f", {result.final_val_bpb:.4f} bits/byte" if result.final_val_bpb is not None else ""
        logger.info("final validation loss %.4f%s after %d steps; outputs in %s",
                    result.final_val_loss, bpb, result.steps, result.out_dir)
    return 0


__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "train", "evaluate", "add_subcommand"]
