"""`TrainConfig`, everything that defines a training run (one `cs336 train` flag per field), and `TrainResult`.

The model is a nested `ModelSpec` (`config.model`, declared and validated in `cs336_common/model_spec.py`):
its flags stay plain (`--d-model`, `--eps`, `--no-use-rmsnorm`), and a config file gives it as a `[model]`
table or, as configs written before the nesting did, as top-level keys. Every other field belongs to the
trainer. A value that cannot work is refused here, before anything is loaded or written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cs336_common.model_spec import ModelSpec

CHECKPOINT_NAME = "ckpt_latest.pt"
# The warm-up of `warmup_steps=None`: this many steps, but at most a tenth of the run, so that the default never
# refuses a short run (`--max-steps 20` warms up for 2 steps) and a long one keeps the usual 100 steps. A value
# given explicitly is checked as given (a warm-up longer than the run is an error, not silently shortened).
DEFAULT_WARMUP_STEPS = 100


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; `cs336 train` has one flag per field.

    `warmup_steps=None` resolves to `min(DEFAULT_WARMUP_STEPS, max_steps // 10)` at construction (an int after).
    """

    # data
    train_data: str = field(default="", metadata=_help("training tokens, a 1-d .npy array"))
    valid_data: str = field(default="", metadata=_help("validation tokens, a 1-d .npy array"))
    tokenizer_dir: str | None = field(default=None, metadata=_help("tokenizer directory: bits/byte and samples"))
    # model: flags without a prefix (--d-model); a [model] table or top-level keys in a config file
    model: ModelSpec = field(default_factory=ModelSpec, metadata={"flatten": True})
    # optimisation
    batch_size: int = field(default=32, metadata=_help("sequences per micro-batch, per rank"))
    grad_accum_steps: int = field(default=1, metadata=_help("micro-batches summed into one optimizer step"))
    max_steps: int = field(default=5_000, metadata=_help("optimizer steps of the run"))
    max_time_s: float | None = field(default=None, metadata=_help("wall-clock budget; stops cleanly"))
    lr_max: float = field(default=1e-3, metadata=_help("peak learning rate, reached at the end of the warm-up"))
    lr_min: float = field(default=1e-4, metadata=_help("final learning rate of the cosine schedule"))
    warmup_steps: int | None = field(
        default=None, metadata=_help(f"steps of linear warm-up; none = min({DEFAULT_WARMUP_STEPS}, max_steps // 10)")
    )
    lr_clock: Literal["steps", "time"] = field(
        default="steps", metadata=_help("'time': the schedule follows elapsed/max_time_s instead of step/max_steps")
    )
    lr_schedule: Literal["cosine", "wsd"] = field(
        default="cosine",
        metadata=_help("'wsd': warm-up, lr_max held, a linear decay to lr_min over the last decay_fraction of the run"),
    )
    decay_fraction: float = field(
        default=0.2, metadata=_help("the final share of the run the 'wsd' schedule decays in")
    )
    weight_decay: float = field(default=0.1, metadata=_help("decoupled weight decay (AdamW's and Muon's)"))
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=_help("AdamW beta1 and beta2"))
    adam_eps: float = field(default=1e-8, metadata=_help("AdamW epsilon"))
    optimizer: Literal["adamw", "muon"] = field(
        default="adamw",
        metadata=_help("'muon': Muon for the hidden matrices, AdamW for the embedding, the gains and lm_head"),
    )
    muon_lr: float | None = field(
        default=None,
        metadata=_help(
            "peak lr of the Muon matrices, scheduled like lr_max; none = lr_max (Muon's steps are scaled to AdamW's RMS)"
        ),
    )
    muon_momentum: float = field(default=0.95, metadata=_help("Muon's (Nesterov) momentum"))
    embedding_lr: float | None = field(
        default=None,
        metadata=_help(
            "peak lr of the token embedding (its own AdamW group), scheduled like lr_max; none = lr_max "
            "(the embedding in the one group of the rest)"
        ),
    )
    z_loss: float = field(
        default=0.0,
        metadata=_help(
            "weight of PaLM's z-loss mean(logsumexp(logits)^2) in the training loss; 0 = none "
            "(the validation loss and bits/byte stay the plain cross-entropy)"
        ),
    )
    grad_clip: float = field(default=1.0, metadata=_help("global L2 norm limit; 0 = no clipping"))
    # evaluation, logging, checkpoints
    eval_every: int = field(default=100, metadata=_help("steps between validation losses"))
    eval_batches: int = field(default=20, metadata=_help("validation batches per evaluation"))
    log_every: int = field(default=10, metadata=_help("steps between training-loss lines"))
    checkpoint_every: int = field(default=1_000, metadata=_help("steps between checkpoints (one also at the end)"))
    out_dir: str = field(default="runs/train", metadata=_help("folder of the checkpoint, metrics, config and plots"))
    resume: bool = field(default=False, metadata=_help("continue from out_dir/ckpt_latest.pt"))
    start_over: bool = field(
        default=False,
        metadata=_help(
            "out_dir holds an earlier run: move its files to a new sibling folder <out_dir>.old-<timestamp>, train anew"
        ),
    )
    seed: int = field(default=0, metadata=_help("seed of the initialisation and the batch sampling"))
    progress: bool = field(default=True, metadata=_help("show a progress bar"))
    wandb: bool = field(default=False, metadata=_help("also log to Weights & Biases (if installed)"))
    wandb_project: str = field(default="cs336-basics", metadata=_help("Weights & Biases project of --wandb"))
    # hardware
    device: str = field(default="auto", metadata=_help("auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps"))
    precision: Literal["auto", "fp32", "bf16"] = field(
        default="auto", metadata=_help("auto = bf16 autocast on CUDA, fp32 elsewhere")
    )
    compile: bool = field(default=False, metadata=_help("torch.compile the model"))
    peak_flops: float | None = field(
        default=None, metadata=_help("peak FLOP/s of one device, for MFU; none = the known peak of the GPU")
    )
    threads: int | None = field(
        default=None, metadata=_help("torch CPU threads of the run (torch.set_num_threads); none = torch's default")
    )

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelSpec):
            raise TypeError(f"TrainConfig.model must be a ModelSpec, got {type(self.model).__name__}")
        positive = (
            "batch_size",
            "grad_accum_steps",
            "max_steps",
            "eval_every",
            "eval_batches",
            "log_every",
            "checkpoint_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps is None:  # resolved once; config.json records the number
            object.__setattr__(self, "warmup_steps", min(DEFAULT_WARMUP_STEPS, self.max_steps // 10))
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
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {self.threads}")
        if self.resume and self.start_over:
            raise ValueError("expected at most one of resume and start_over, got both")
        _check_optimisation(self)


def _check_optimisation(config: TrainConfig) -> None:
    """Refuse a non-finite or out-of-range optimisation setting up front, naming its flag (a run would diverge
    at its first step, or never stop, and the divergence could not say which setting was to blame)."""
    ranges = {
        "lr_max": (config.lr_max, "a finite number > 0", lambda v: v > 0),
        "lr_min": (config.lr_min, "a finite number >= 0", lambda v: v >= 0),
        "weight_decay": (config.weight_decay, "a finite number >= 0", lambda v: v >= 0),
        "adam_eps": (config.adam_eps, "a finite number > 0", lambda v: v > 0),
        "grad_clip": (config.grad_clip, "a finite number >= 0 (0: no clipping)", lambda v: v >= 0),
        "max_time_s": (config.max_time_s, "a finite number > 0 or none", lambda v: v > 0),
        "muon_lr": (config.muon_lr, "a finite number > 0 or none", lambda v: v > 0),
        "muon_momentum": (config.muon_momentum, "a finite number in [0, 1)", lambda v: 0 <= v < 1),
        "embedding_lr": (config.embedding_lr, "a finite number > 0 or none", lambda v: v > 0),
        "z_loss": (config.z_loss, "a finite number >= 0 (0: no z-loss)", lambda v: v >= 0),
        "decay_fraction": (config.decay_fraction, "a finite number in [0, 1]", lambda v: 0 <= v <= 1),
        "peak_flops": (config.peak_flops, "a finite number > 0 or none", lambda v: v > 0),
    }
    for name, (value, expected, ok) in ranges.items():
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise ValueError(f"--{name.replace('_', '-')} ({name}) must be {expected}, got {value}")
    choices = {"optimizer": ("adamw", "muon"), "lr_schedule": ("cosine", "wsd")}
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise ValueError(
                f"--{name.replace('_', '-')} ({name}) must be one of {allowed}, got {getattr(config, name)!r}"
            )
    if len(config.betas) != 2 or not all(math.isfinite(b) and 0 <= b < 1 for b in config.betas):
        raise ValueError(f"--betas (betas) must be two numbers in [0, 1), got {' '.join(map(str, config.betas))}")


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
    stop_reason: str = "max_steps"  # or "max_time_s", "SIGTERM", "SIGINT"


class NonFiniteLossError(FloatingPointError):
    """Raised when the run diverges (a non-finite loss or gradient norm, or an unhealthy model at a checkpoint);
    the last healthy checkpoint is left intact."""


__all__ = ["TrainConfig", "TrainResult", "NonFiniteLossError", "CHECKPOINT_NAME"]
