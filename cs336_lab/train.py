"""The training loop: memory-mapped token arrays in, checkpoints, metrics and a loss curve out.

    config = TrainConfig(train_data="data/train.npy", valid_data="data/valid.npy", vocab_size=4096,
                         context_length=128, d_model=256, num_layers=4, num_heads=8, max_steps=2000)
    result = train(config)          # or: cs336 train --config run.toml --max-steps 2000

The loop reads as its steps: set up (data, model, optimizer, sampler, resume), then per step the update, the
evaluation, the log and the checkpoint. One update = `grad_accum_steps` micro-batches of `batch_size`
sequences (per rank), AdamW (or `optimizer="muon"`: Muon for the hidden matrices beside it) with warm-up and a
cosine (or warm-up/stable/decay) schedule, global gradient clipping, optionally a z-loss in the training loss.
Every `eval_every` steps the model is scored on a fixed set of validation batches (the same ones every time, so
the curve is comparable), in nats per token and, when a tokenizer is given, in bits per byte. Everything a run
writes lives in `out_dir` (see `run_log.py`):

    config.json      the final config of the run          metrics.jsonl   one JSON record per log/eval step
    ckpt_latest.pt   model + optimizer + sampler state     loss_curve.png  train and validation loss
    outcome.json     running, done, stopped, diverged or failed, with the step and why (run_folder.py)

A run locks `out_dir` while it runs, and refuses a folder that holds an earlier run unless asked to `resume` it
or to `start_over` (which moves the earlier run aside, deleting nothing; see `run_folder.py`).

The model, loss, optimizer, schedule, clipping and batching are the assignment's, reached through
`cs336_lab/assignment.py`, so the loop trains a student's own package as well as ours.

A run stops cleanly on SIGTERM or SIGINT (`stop_signals.py`: finish the step, save, exit) and stops with
`NonFiniteLossError` when it diverges; a checkpoint is written only for a healthy model, so `ckpt_latest.pt`
always holds the last healthy step.

Resuming (`resume=True`) restores the model, the optimizer, the step counter, the elapsed time and the batch
sampler's random state, so a resumed run on the step clock reproduces the losses of an uninterrupted one
exactly (on the CPU). With `lr_clock="time"` the schedule follows the wall clock, which no resume can replay.

Under `torchrun --nproc_per_node N` the same code runs data-parallel (see `distributed.py`): every rank
samples its own batches from a per-rank seed, DDP averages the gradients, and only rank 0 evaluates, logs and
writes files. A checkpoint written by N ranks resumes with M ranks (ranks without a saved sampler state reseed).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import logging
import math
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cs336_common.atomic import prepare_directory, sweep_temp_files
from cs336_common.model_spec import ModelSpec
from cs336_lab.assignment import MUON, Assignment
from cs336_lab.batches import BatchSampler, autocast, estimate_loss, load_training_tokens
from cs336_lab.config import save_config
from cs336_lab.distributed import DistributedContext, cleanup, init_distributed, no_sync_if
from cs336_lab.errors import USER_ERRORS
from cs336_lab.run_checkpoint import load_run_checkpoint, read_run_checkpoint, save_run_checkpoint
from cs336_lab.run_folder import hold_run_folder, write_outcome
from cs336_lab.run_log import RunLog, bytes_per_token
from cs336_lab.run_tokenizer import RECORD_KEY, absolute_paths, tokenizer_record
from cs336_lab.stop_signals import StopSignals
from cs336_lab.train_config import CHECKPOINT_NAME, NonFiniteLossError, TrainConfig, TrainResult

logger = logging.getLogger(__name__)

ModelFactory = Callable[[ModelSpec, torch.device], nn.Module]
OptimizerFactory = Callable[[list[nn.Parameter], TrainConfig], torch.optim.Optimizer]


def default_model_factory(spec: ModelSpec, device: torch.device) -> nn.Module:
    """The package's `TransformerLM` for the run's `ModelSpec` (see `cs336_lab/assignment.py`), with our
    reference's hand-written kernels switched on (the same model, a faster eager step)."""
    return Assignment.load().build_model(spec, device, fused_kernels=True)


def default_optimizer_factory(params: list[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """The package's `AdamW` with the run's hyper-parameters."""
    return Assignment.load().make_optimizer(
        params, lr=config.lr_max, betas=config.betas, eps=config.adam_eps, weight_decay=config.weight_decay
    )


def default_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """`default_optimizer_factory`'s AdamW, or with `optimizer="muon"` the package's `MuonAdamW` (one optimizer,
    one state_dict): Muon for the hidden matrices at `muon_lr`, AdamW for the rest at `lr_max`. With
    `embedding_lr`, the token embedding is an AdamW group of its own at that peak (`embedding_group`)."""
    split = (lambda groups: embedding_group(groups, model)) if config.embedding_lr is not None else None
    if config.optimizer == "muon":
        return Assignment.load().make_muon_optimizer(
            model,
            lr=config.lr_max,
            muon_lr=_muon_lr(config),
            momentum=config.muon_momentum,
            betas=config.betas,
            eps=config.adam_eps,
            weight_decay=config.weight_decay,
            regroup=split,
        )
    params = [p for p in model.parameters() if p.requires_grad]
    return default_optimizer_factory(params if split is None else split([{"params": params}]), config)


def embedding_group(groups: list[dict[str, Any]], model: nn.Module) -> list[dict[str, Any]]:
    """`groups` with the token embedding (`token_embeddings.weight`, the contract's name; tied to the output
    layer or not) taken out of its group into a group of its own, marked `"role": "embedding"`, which keeps
    the other settings of the group it left; `_update` gives that group the `embedding_lr` schedule."""
    try:
        table = model.get_parameter("token_embeddings.weight")
    except AttributeError as error:
        raise ValueError(
            f"--embedding-lr: expected the model to have a parameter token_embeddings.weight, got none ({error})"
        ) from None
    out: list[dict[str, Any]] = []
    for group in groups:
        params = list(group["params"])
        if not any(p is table for p in params):
            out.append(group)
            continue
        rest = [p for p in params if p is not table]
        out.extend([dict(group, params=rest)] if rest else [])
        out.append(dict(group, params=[table], role="embedding"))
    return out


def _muon_lr(config: TrainConfig) -> float:
    return config.lr_max if config.muon_lr is None else config.muon_lr


def _embedding_lr(config: TrainConfig) -> float:
    return config.lr_max if config.embedding_lr is None else config.embedding_lr


def scheduled_group_lr(group: dict[str, Any], config: TrainConfig, lr: float) -> float:
    """A group's learning rate when the schedule is at `lr`: each kind of group follows the same schedule,
    scaled to its own peak (`muon_lr` for Muon's groups, `embedding_lr` for the embedding's, else `lr_max`)."""
    if group.get("use_muon"):
        return lr * _muon_lr(config) / config.lr_max
    if group.get("role") == "embedding":
        return lr * _embedding_lr(config) / config.lr_max
    return lr


def _refuse_missing_extras(config: TrainConfig, custom_optimizer: bool) -> None:
    """Say up front, naming the flag, which switch the package cannot serve (before anything is built)."""
    door = Assignment.load()
    if config.optimizer == "muon" and not custom_optimizer:
        door.require(MUON, "--optimizer muon")
    if config.z_loss > 0:
        door.require(("cross_entropy_with_z_loss",), f"--z-loss {config.z_loss}")
    if config.lr_schedule == "wsd":
        door.require(("wsd_lr_schedule",), "--lr-schedule wsd")


@dataclass
class _Run:
    """The state of a run between steps: what a checkpoint saves and the loop advances."""

    config: TrainConfig
    ctx: DistributedContext
    model: nn.Module  # the plain model (evaluated and saved)
    train_model: nn.Module  # the model stepped: DDP-wrapped and/or compiled
    optimizer: torch.optim.Optimizer
    sampler: BatchSampler
    valid_tokens: np.ndarray
    step: int = 0
    tokens_seen: int = 0
    clock_offset: float = 0.0  # seconds already trained before this process started (a resume)
    best_val: float = math.inf
    last_val: float | None = None
    val_step: int = -1  # the step `last_val` was measured at
    saved_step: int = 0
    bytes_per_token: float | None = None
    tokenizer: dict[str, Any] | None = None  # what the checkpoint remembers of the tokenizer (run_tokenizer.py)

    @property
    def ckpt_path(self) -> Path:
        return Path(self.config.out_dir) / CHECKPOINT_NAME


def train(
    config: TrainConfig,
    *,
    model_factory: ModelFactory | None = None,
    optimizer_factory: OptimizerFactory | None = None,
) -> TrainResult:
    """Train a language model as described by `config`; see the module docstring.

    `model_factory(spec, device)` and `optimizer_factory(params, config)` replace the package's
    `TransformerLM` and `AdamW`, e.g. to train the torch-native oracle model with the very same loop.
    Raises `NonFiniteLossError` (a `FloatingPointError`) when the loss diverges.
    """
    owns_group = not torch.distributed.is_initialized()  # leave a caller's process group alone at the end
    threads_before = torch.get_num_threads()
    if config.threads is not None:  # a recipe fixes its thread count (the start-up summary logs it)
        torch.set_num_threads(config.threads)
    ctx = init_distributed(config.device)
    run: _Run | None = None
    try:
        with hold_run_folder(config, ctx):  # out_dir is locked, and checked for an earlier run, until the end
            run = _set_up(config, ctx, model_factory or default_model_factory, optimizer_factory)
            return _loop_noting_outcome(run)
    except BaseException as exc:
        if ctx.is_distributed and owns_group:  # the failed frames below keep the DDP module alive: free it
            traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        # NOTE: DDP's reducer holds the process group; a group destroyed (or a process ending) while a DDP
        # module is still alive aborts a rank now and then on a loaded machine (6 of 40 two-rank runs: "terminate
        # called without an active exception", exit -6). `cleanup` collects the dropped wrapper first.
        run = None
        if owns_group:
            cleanup(ctx)
        torch.set_num_threads(threads_before)


def _set_up(
    config: TrainConfig,
    ctx: DistributedContext,
    model_factory: ModelFactory,
    optimizer_factory: OptimizerFactory | None,
) -> _Run:
    """Data, model, optimizer and sampler; restored from the checkpoint when resuming."""
    _refuse_missing_extras(config, custom_optimizer=optimizer_factory is not None)
    sizes = {"context_length": config.model.context_length, "vocab_size": config.model.vocab_size}
    train_tokens = load_training_tokens(config.train_data, "train_data", **sizes)
    valid_tokens = load_training_tokens(config.valid_data, "valid_data", **sizes)
    ckpt_path = Path(config.out_dir) / CHECKPOINT_NAME
    if config.resume and not ckpt_path.is_file():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt_path}")

    torch.manual_seed(config.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = model_factory(config.model, ctx.device)
    if optimizer_factory is None:
        optimizer = default_optimizer(model, config)
    else:
        optimizer = optimizer_factory([p for p in model.parameters() if p.requires_grad], config)
    sampler = BatchSampler(
        train_tokens,
        batch_size=config.batch_size,
        context_length=config.model.context_length,
        device=ctx.device,
        seed=ctx.seed(config.seed),
    )
    run = _Run(config, ctx, model, model, optimizer, sampler, valid_tokens)
    if config.resume:
        _resume(run)
    run.train_model = ctx.wrap(model)
    if config.compile:
        run.train_model = torch.compile(run.train_model)  # type: ignore[assignment]
    if ctx.is_main and config.tokenizer_dir:
        run.bytes_per_token = bytes_per_token(config.tokenizer_dir, valid_tokens)
        run.tokenizer = tokenizer_record(config.tokenizer_dir)
    return run


def _resume(run: _Run) -> None:
    """Restore the model, optimizer, counters and this rank's sampler state from the run's checkpoint."""
    payload = read_run_checkpoint(run.ckpt_path, map_location="cpu")
    _check_same_model(payload.get("config") or {}, run.config)
    _check_same_optimizer(payload.get("config") or {}, run.config)
    run.step = run.saved_step = load_run_checkpoint(payload, run.model, run.optimizer, restore_rng=True)
    extra = payload.get("extra") or {}
    run.tokens_seen = int(extra.get("tokens_seen", 0))
    run.clock_offset = float(extra.get("elapsed_s", 0.0))
    run.best_val = float(extra.get("best_val_loss", math.inf))
    states = extra.get("sampler_states") or []
    if len(states) == run.ctx.world_size:
        run.sampler.set_state(states[run.ctx.rank])
    else:  # a different number of ranks: fresh, distinct streams for the rest of the run
        run.sampler.reseed([run.ctx.seed(run.config.seed), run.step])


def _check_same_model(stored: dict[str, Any], config: TrainConfig) -> None:
    """Refuse to resume a checkpoint into another architecture (some changes, e.g. num_heads, fit its shapes)."""
    saved, wanted = ModelSpec.from_run_config(stored).to_dict(), config.model.to_dict()  # old flat configs too
    changed = sorted(k for k in saved.keys() & wanted.keys() if saved[k] != wanted[k])
    if changed:
        diff = ", ".join(f"{k}={saved[k]!r} in the checkpoint, {wanted[k]!r} asked" for k in changed)
        raise ValueError(
            f"resume: expected the checkpoint's model settings, got {diff}; a resumed run keeps its "
            "architecture (train another model in a new --out-dir)"
        )


def _check_same_optimizer(stored: dict[str, Any], config: TrainConfig) -> None:
    """Refuse to resume AdamW's state into Muon or back (a run written before `optimizer` existed is AdamW), and
    a run whose embedding had no group of its own into one that has (the groups would not line up), or back."""
    saved = stored.get("optimizer", "adamw")
    if saved != config.optimizer:
        raise ValueError(
            f"resume: expected the checkpoint's --optimizer {saved}, got --optimizer {config.optimizer}; "
            "a resumed run keeps its optimizer (train with another one in a new --out-dir)"
        )
    saved_lr = stored.get("embedding_lr")
    if (saved_lr is None) != (config.embedding_lr is None):
        raise ValueError(
            f"resume: expected --embedding-lr {saved_lr if saved_lr is not None else 'none'} as in the checkpoint "
            f"(a number or none), got {config.embedding_lr if config.embedding_lr is not None else 'none'}; the "
            "embedding's own optimizer group is kept or left out for the whole run (its value may change)"
        )


def _loop(run: _Run) -> TrainResult:
    config, ctx = run.config, run.ctx
    out_dir = Path(config.out_dir)
    if ctx.is_main:
        prepare_directory(out_dir, "out_dir")
        for debris in sweep_temp_files(out_dir):  # a killed earlier run's half-written file
            logger.info("removed %s, left by a killed run", debris.name)
        save_config(config, out_dir / "config.json")
        _log_summary(run)
    log = RunLog(
        out_dir,
        enabled=ctx.is_main,
        max_steps=config.max_steps,
        start_step=run.step,
        resume=config.resume,
        progress=config.progress,
        wandb=(config.wandb_project, dataclasses.asdict(config)) if config.wandb else None,
    )
    mfu = _mfu_factor(config, ctx)
    start = time.perf_counter() - run.clock_offset
    elapsed, stop_reason = run.clock_offset, "max_steps"
    with log, StopSignals() as stop:
        while run.step < config.max_steps:
            # NOTE: the learning rate follows the clock agreed by all ranks at the end of the previous step
            # (each rank's own clock would give each replica its own rate under lr_clock="time").
            lr = _lr_at(config, run.step, elapsed)
            loss, grad_norm, elapsed, signalled = _update(run, lr, start, stop.requested is not None)
            out_of_time = config.max_time_s is not None and elapsed >= config.max_time_s
            last = run.step == config.max_steps or out_of_time or signalled
            tok_s = log.count_tokens(_tokens_per_step(run))
            record: dict[str, Any] = {}
            if run.step % config.log_every == 0 or run.step % config.eval_every == 0 or last:
                record = {
                    "step": run.step,
                    "tokens": run.tokens_seen,
                    "time_s": round(elapsed, 3),
                    "lr": lr,
                    "train_loss": loss,
                    "grad_norm": grad_norm,
                    "tokens_per_s": tok_s,
                }
                if mfu:
                    record["mfu"] = tok_s * mfu
            if run.step % config.eval_every == 0 or (last and not signalled):
                record.update(_evaluate(run))
            if record:
                log.write(record)
            log.tick(loss, lr)
            if run.step % config.checkpoint_every == 0 or last:
                _checkpoint(run, elapsed)
                log.plot()
            if record:  # the next throughput window starts after this step's evaluation, checkpoint and plot
                log.restart_window()
            if out_of_time or signalled:
                stop_reason = "max_time_s" if out_of_time else (stop.name or "SIGTERM")  # another rank's signal
                break
    if ctx.is_main:
        logger.info("stopped after %d steps (%s), %d tokens", run.step, stop_reason, run.tokens_seen)
    return _result(run, log, time.perf_counter() - start, stop_reason)


def _log_summary(run: _Run) -> None:
    """The start-up lines: what is trained, on what, how, where it writes, and from where a resume continues."""
    config, ctx, spec = run.config, run.ctx, run.config.model
    params = sum(p.numel() for p in run.model.parameters())
    logger.info(
        "training %s parameters (d_model %d, %d layers, %d heads, vocab %d) for %d steps, warm-up %d, lr %g -> %g",
        f"{params:,}",
        spec.d_model,
        spec.num_layers,
        spec.num_heads,
        spec.vocab_size,
        config.max_steps,
        config.warmup_steps,
        config.lr_max,
        config.lr_min,
    )
    logger.info(
        "%s tokens per step (batch %d x context %d x %d accumulation x %d rank(s))",
        f"{_tokens_per_step(run):,}",
        config.batch_size,
        spec.context_length,
        config.grad_accum_steps,
        ctx.world_size,
    )
    logger.info("%s; %s%s", _optimizer_line(config), _schedule_line(config), _z_loss_line(config))
    bf16 = config.precision == "bf16" or (config.precision == "auto" and ctx.device.type == "cuda")
    logger.info(
        "device %s, %d CPU thread(s), precision %s%s; writing to %s",
        ctx.device,
        torch.get_num_threads(),
        "bf16 autocast" if bf16 else "fp32",
        ", torch.compile" if config.compile else "",
        Path(config.out_dir).resolve(),
    )
    if config.resume:
        logger.info(
            "resuming from step %d of %s (%s tokens seen, %.1f s trained)",
            run.step,
            run.ckpt_path.resolve(),
            f"{run.tokens_seen:,}",
            run.clock_offset,
        )


def _optimizer_line(config: TrainConfig) -> str:
    adamw = f"AdamW (betas {config.betas[0]:g} {config.betas[1]:g}, eps {config.adam_eps:g})"
    if config.embedding_lr is not None:
        adamw += f" (the embedding at peak lr {config.embedding_lr:g})"
    if config.optimizer != "muon":
        return f"optimizer {adamw}, weight decay {config.weight_decay:g}"
    return (
        f"optimizer Muon (peak lr {_muon_lr(config):g}, momentum {config.muon_momentum:g}) for the hidden "
        f"matrices + {adamw} for the embedding, gains and lm_head, weight decay {config.weight_decay:g}"
    )


def _schedule_line(config: TrainConfig) -> str:
    if config.lr_schedule == "wsd":
        return f"warm-up/stable/decay schedule (linear decay over the last {config.decay_fraction:.0%} of the run)"
    return "cosine schedule"


def _z_loss_line(config: TrainConfig) -> str:
    return f"; training loss + z-loss {config.z_loss:g} (validation: plain cross-entropy)" if config.z_loss else ""


def _loop_noting_outcome(run: _Run) -> TrainResult:
    """`_loop`, noting how it ends in `out_dir/outcome.json` (`run_folder.py`, read by `cs336 compare`); a write
    into `out_dir` that fails (a full disk) is said in one line, with what the folder keeps."""

    def note(status: str, error: str = "") -> None:
        if run.ctx.is_main:
            write_outcome(run.config.out_dir, status, step=run.step, tokens=run.tokens_seen, error=error)

    note("running")
    try:
        result = _loop(run)
    except NonFiniteLossError as err:
        note("diverged", str(err))
        raise
    except OSError as err:
        note("failed", str(err))
        if isinstance(err, USER_ERRORS):
            raise
        where = f" ({err.filename})" if err.filename else ""
        then = "free some space and continue" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "continue"
        failure = OSError(
            f"training stopped at step {run.step}: could not write to {run.config.out_dir}: "
            f"{err.strerror or err}{where}; {_saved(run)}: {then} with --resume"
        )
        failure.errno = err.errno
        raise failure from err
    except BaseException as err:
        note("failed", f"{type(err).__name__}: {err}".splitlines()[0])
        raise
    note("done" if result.stop_reason in ("max_steps", "max_time_s") else "stopped")
    return result


def _tokens_per_step(run: _Run) -> int:
    c = run.config
    return c.batch_size * c.model.context_length * c.grad_accum_steps * run.ctx.world_size


def _lr_at(config: TrainConfig, step: int, elapsed_s: float) -> float:
    """The scheduled learning rate before step `step` (0-based), by step count or by elapsed time."""
    it: float = step
    if config.lr_clock == "time":
        assert config.max_time_s is not None
        it = elapsed_s / config.max_time_s * config.max_steps
    return Assignment.load().lr_at(
        it,
        config.lr_max,
        config.lr_min,
        config.warmup_steps,
        config.max_steps,
        schedule=config.lr_schedule,
        decay_fraction=config.decay_fraction,
    )


def _update(run: _Run, lr: float, start: float, signalled: bool) -> tuple[float, float, float, bool]:
    """One optimizer step at learning rate `lr`.

    Returns what all ranks agree on: the mean loss, the gradient norm, the elapsed seconds, and whether any
    rank was signalled to stop (so that all of them stop after the same step).
    """
    config = run.config
    for group in run.optimizer.param_groups:
        group["lr"] = scheduled_group_lr(group, config, lr)
    loss_sum = 0.0
    for micro in range(config.grad_accum_steps):
        x, y = run.sampler()
        with no_sync_if(run.train_model, micro < config.grad_accum_steps - 1):  # all-reduce on the last one
            with autocast(run.ctx.device, config.precision):
                logits = run.train_model(x)
            loss = _training_loss(logits, y, config.z_loss) / config.grad_accum_steps
            loss.backward()
        loss_sum += loss.item()
    params = [p for p in run.model.parameters() if p.grad is not None]
    grad_norm = Assignment.load().clip_and_measure(params, config.grad_clip)
    loss_mean, elapsed, votes = run.ctx.means([loss_sum, time.perf_counter() - start, float(signalled)])
    if not (math.isfinite(loss_mean) and math.isfinite(grad_norm)):
        what = "loss" if not math.isfinite(loss_mean) else "gradient norm"
        raise NonFiniteLossError(
            f"non-finite {what} at step {run.step + 1} (loss {loss_mean}, grad norm "
            f"{grad_norm}, lr {lr:.3g}); the run stops here and {_kept(run)}"
        )
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.tokens_seen += _tokens_per_step(run)
    return loss_mean, grad_norm, elapsed, votes > 0


def _training_loss(logits: torch.Tensor, targets: torch.Tensor, z_loss: float) -> torch.Tensor:
    """The loss a step minimises: the package's cross-entropy, plus the z-loss when asked for (the validation loss
    never adds it: `estimate_loss` scores the plain cross-entropy)."""
    door = Assignment.load()
    return (
        door.training_loss_with_z_loss(logits, targets, z_loss) if z_loss > 0 else door.training_loss(logits, targets)
    )


def _kept(run: _Run) -> str:
    """What the run leaves behind after a divergence, for the message."""
    return f"{_saved(run)}; try a lower lr_max or grad_clip"


def _saved(run: _Run) -> str:
    """Which checkpoint the run leaves behind, for a message."""
    if run.saved_step == 0 or not run.ckpt_path.is_file():
        return "no healthy checkpoint was written yet"
    return f"{run.ckpt_path} keeps the last healthy state (step {run.saved_step})"


def _evaluate(run: _Run) -> dict[str, Any]:
    """The validation loss (and bits per byte) on the main rank, as a record's fields; {} elsewhere."""
    record: dict[str, Any] = {}
    if run.ctx.is_main:
        val = estimate_loss(run.model, run.valid_tokens, run.config, run.ctx.device)
        run.best_val, run.last_val, run.val_step = min(run.best_val, val), val, run.step
        record = {"val_loss": val}
        if run.bytes_per_token is not None:
            record["val_bpb"] = val / math.log(2) / run.bytes_per_token
        logger.info(
            "step %d: validation loss %.4f%s",
            run.step,
            val,
            f", {record['val_bpb']:.4f} bits/byte" if "val_bpb" in record else "",
        )
    run.ctx.barrier()
    return record


def _checkpoint(run: _Run, elapsed_s: float) -> None:
    """Save the run (main rank), with every rank's sampler state; all ranks wait for the file.

    Only a healthy model is saved (`_unhealthy`): a diverging one raises `NonFiniteLossError` instead, and the
    checkpoint on disk keeps the last healthy step.
    """
    problem = run.ctx.gather(_unhealthy(run) if run.ctx.is_main else None)[0]
    if problem is not None:
        raise NonFiniteLossError(
            f"the model diverged by step {run.step} ({problem}); the run stops here and {_kept(run)}"
        )
    states = run.ctx.gather(run.sampler.state())
    if run.ctx.is_main:
        extra = {
            "tokens_seen": run.tokens_seen,
            "elapsed_s": elapsed_s,
            "best_val_loss": run.best_val,
            "sampler_states": states,
            "world_size": run.ctx.world_size,
            RECORD_KEY: run.tokenizer,
        }
        # Absolute paths: `cs336 generate --checkpoint` finds the tokenizer from any folder.
        save_run_checkpoint(
            run.ckpt_path,
            run.model,
            run.optimizer,
            run.step,
            config=absolute_paths(dataclasses.asdict(run.config)),
            extra=extra,
            save_rng=True,
        )
    run.saved_step = run.step
    run.ctx.barrier()


# A weight this large means the run blew up: trained LMs keep theirs within a few units (bf16 would overflow).
_MAX_HEALTHY_WEIGHT = 1e4


def _unhealthy(run: _Run) -> str | None:
    """Why the model is not worth keeping (non-finite or exploded weights, a validation loss above twice that
    of uniform guessing), or None.

    NOTE: a finite loss is not enough: saturated weights of 1e6-1e10 can still score a modest loss on a batch,
    and give NaN at once on resume or when sampling.
    """
    largest = max((float(p.detach().abs().max()) for p in run.model.parameters() if p.numel()), default=0.0)
    if not math.isfinite(largest):
        return "non-finite weights"
    if largest > _MAX_HEALTHY_WEIGHT:
        return f"a weight of magnitude {largest:.3g} > {_MAX_HEALTHY_WEIGHT:.0g}"
    if run.val_step == run.step and run.last_val is not None:
        loss = run.last_val
    else:  # one fixed validation batch; it draws nothing from the training sampler
        one_batch = dataclasses.replace(run.config, eval_batches=1)
        loss = estimate_loss(run.model, run.valid_tokens, one_batch, run.ctx.device)
    limit = 2 * math.log(run.config.model.vocab_size)
    return None if loss <= limit else f"validation loss {loss:.4g} > {limit:.3g}, twice that of uniform guessing"


def _mfu_factor(config: TrainConfig, ctx: DistributedContext) -> float | None:
    """MFU per token/s: FLOPs per token / peak FLOP/s / ranks (None when either is unknown)."""
    flops_per_token, peak_flops = _flops_and_peak(config, ctx.device)
    return flops_per_token / peak_flops / ctx.world_size if flops_per_token and peak_flops else None


def _flops_and_peak(config: TrainConfig, device: torch.device) -> tuple[float | None, float | None]:
    """FLOPs per trained token and the peak FLOP/s for MFU: the user's, else the device's known peak."""
    from cs336_lab.accounting import peak_flops_for_device, training_flops_per_token

    bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    try:
        flops = training_flops_per_token(config.model, config.model.context_length)
        if config.peak_flops is not None:
            return flops, config.peak_flops
        return flops, peak_flops_for_device(device, torch.bfloat16 if bf16 else torch.float32)
    except Exception:  # MFU is a nicety: never let it break a run
        return None, None


def _result(run: _Run, log: RunLog, elapsed_s: float, stop_reason: str) -> TrainResult:
    bpt, last_val = run.bytes_per_token, run.last_val
    return TrainResult(
        steps=run.step,
        tokens_seen=run.tokens_seen,
        final_val_loss=last_val,
        best_val_loss=run.best_val if math.isfinite(run.best_val) else None,
        final_val_bpb=last_val / math.log(2) / bpt if (last_val is not None and bpt) else None,
        elapsed_s=elapsed_s,
        out_dir=Path(run.config.out_dir),
        history=list(log.records),
        stop_reason=stop_reason,
    )


# --------------------------------------------------------------------------------------------- CLI


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register `cs336 train`: one flag per `TrainConfig` field, plus `--config FILE`."""
    from cs336_lab.config import add_dataclass_arguments

    parser = subparsers.add_parser(
        "train", help="train a Transformer LM on .npy token arrays", description=__doc__.split("\n\n")[0]
    )
    add_dataclass_arguments(parser, TrainConfig)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cs336_lab.config import config_from_args
    from cs336_lab.errors import USER_ERRORS

    try:
        config = config_from_args(TrainConfig, args)
        result = train(config)
    except USER_ERRORS as err:
        logger.error("%s", err)
        return 2
    except NonFiniteLossError as err:
        logger.error("%s", err)
        return 1
    if result.stop_reason in ("SIGTERM", "SIGINT"):
        logger.warning(
            "stopped by %s after step %d: checkpoint saved to %s; continue with --resume",
            result.stop_reason,
            result.steps,
            result.out_dir / CHECKPOINT_NAME,
        )
        return 128 + signal.Signals[result.stop_reason].value
    if result.final_val_loss is not None:
        bpb = f", {result.final_val_bpb:.4f} bits/byte" if result.final_val_bpb is not None else ""
        logger.info(
            "final validation loss %.4f%s after %d steps; outputs in %s",
            result.final_val_loss,
            bpb,
            result.steps,
            result.out_dir,
        )
    return 0


__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "train", "estimate_loss", "add_subcommand"]
