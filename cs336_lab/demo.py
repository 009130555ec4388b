"""``cs336 demo``: the whole pipeline on the bundled synthetic corpus, on a laptop CPU in under 5 minutes.

It runs the whole pipeline on the bundled synthetic corpus, on a laptop CPU in under 5 minutes:

    corpus/{train,valid}.txt     synthetic children's stories (``corpus.py``)
    tokenizer/                   a byte-level BPE tokenizer trained on corpus/train.txt
    tokens/{train,valid}.npy     the corpus as token ids
    model/                       ``cs336 train`` outputs: config.json, ckpt_latest.pt, metrics.jsonl, loss_curve.png
    samples.txt                  completions of a few prompts

A step whose outputs exist and whose settings are unchanged (``steps.json``) is skipped, so a second run
only prints the summary again; ``--force`` redoes everything. The training settings are
``demo_train_config()``, the same as ``configs/demo.toml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cs336_common.atomic import atomic_write_text, prepare_directory
from cs336_common.model_spec import ModelSpec, field_names
from cs336_lab.config import add_dataclass_arguments, config_from_args, save_config
from cs336_lab.pipeline import tokenize_files, train_tokenizer
from cs336_lab.threads import cpu_threads

logger = logging.getLogger(__name__)

# The demo model and optimiser, tuned for 2.5 minutes of 2 CPU cores (`configs/demo.toml` mirrors this);
# the model's vocab_size is the trained tokenizer's.
DEMO_MODEL = ModelSpec(
    vocab_size=1_024, context_length=128, d_model=128, num_layers=4, num_heads=4, d_ff=384, rope_theta=10_000.0
)
DEMO_TRAINING: dict[str, Any] = {
    "batch_size": 16,
    "max_steps": 4_000,
    "lr_max": 3e-3,
    "lr_min": 3e-4,
    "warmup_steps": 100,
    "lr_clock": "time",
    "weight_decay": 0.1,
    "betas": (0.9, 0.95),
    "grad_clip": 1.0,
    "max_time_s": 150.0,
    "eval_every": 50,
    "eval_batches": 10,
    "log_every": 50,
    "checkpoint_every": 1_000,
    "seed": 0,
}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class DemoConfig:
    """Settings of ``cs336 demo``; every field is a flag (``--max-time-s 60``)."""

    out: str = field(default="runs/demo", metadata=_help("directory of everything the demo writes"))
    force: bool = field(default=False, metadata=_help("redo every step even if its outputs exist"))
    num_train_stories: int = field(default=20_000, metadata=_help("stories in the synthetic training split"))
    num_valid_stories: int = field(default=1_000, metadata=_help("stories in the synthetic validation split"))
    corpus_seed: int = field(default=0, metadata=_help("seed of the synthetic corpus"))
    vocab_size: int = field(default=1_024, metadata=_help("BPE vocabulary size, special token included"))
    max_time_s: float = field(default=150.0, metadata=_help("wall-clock budget of the training step"))
    max_steps: int = field(default=4_000, metadata=_help("step budget of the training step"))
    device: str = field(default="auto", metadata=_help("auto, cpu, cuda, mps"))
    prompts: tuple[str, ...] = field(
        default=("Once upon a time", "One day, Lily found a", "Tom was scared of the dark."),
        metadata=_help("prompts the trained model completes at the end"),
    )
    max_new_tokens: int = field(default=80, metadata=_help("tokens sampled per prompt"))
    temperature: float = field(default=0.8, metadata=_help("sampling temperature; 0 = greedy"))
    top_p: float = field(default=0.95, metadata=_help("nucleus sampling: keep the smallest set of tokens of this mass"))
    num_workers: int | None = field(default=None, metadata=_help("processes for BPE training and tokenizing"))
    threads: int | None = field(
        default=None,
        metadata=_help(
            "CPU threads for training and sampling; none = time 1 thread against all cores, take the faster"
        ),
    )
    progress: bool = field(default=True, metadata=_help("progress bars"))


def demo_train_config(out: str | Path, *, vocab_size: int = 1_024, **overrides: Any):
    """The ``TrainConfig`` of the demo's training step, reading and writing under ``out``.

    ``overrides`` (and ``DEMO_TRAINING``) may name `ModelSpec` fields: they replace those of ``DEMO_MODEL``."""
    from cs336_lab.train_config import TrainConfig

    out = Path(out)
    settings = {**DEMO_TRAINING, **overrides}
    model_fields = {k: settings.pop(k) for k in field_names() if k in settings}
    model = dataclasses.replace(DEMO_MODEL, **{**model_fields, "vocab_size": vocab_size})
    if "warmup_steps" not in overrides:  # keep warm-up a small fraction of a shortened run
        settings["warmup_steps"] = min(settings["warmup_steps"], settings["max_steps"] // 10)
    return TrainConfig(
        train_data=str(out / "tokens" / "train.npy"),
        valid_data=str(out / "tokens" / "valid.npy"),
        tokenizer_dir=str(out / "tokenizer"),
        out_dir=str(out / "model"),
        model=model,
        **settings,
    )


class _Steps:
    """Runs a pipeline step unless its outputs exist and its settings equal those recorded in steps.json.

    Steps must be run in pipeline order: once one runs, every later one runs too (its inputs changed).
    """

    def __init__(self, out: Path, force: bool) -> None:
        self.path, self.stale = out / "steps.json", force
        self.timings: dict[str, float] = {}
        self.done: dict[str, Any] = json.loads(self.path.read_text()) if self.path.is_file() and not force else {}
        self.checked: list[str] = []

    def run(self, name: str, settings: dict[str, Any], outputs: Sequence[Path], fn: Callable[[], Any]) -> bool:
        settings = json.loads(json.dumps(settings, default=str))
        up_to_date = self.done.get(name) == settings and all(p.exists() for p in outputs)
        self.checked.append(name)
        if up_to_date and not self.stale:
            logger.info("%s: up to date, skipping (--force redoes it)", name)
            return False
        self.stale = True
        # Forget this step and every later one before starting: a crash must not leave them marked as done.
        self.done = {k: v for k, v in self.done.items() if k in self.checked[:-1]}
        atomic_write_text(self.path, json.dumps(self.done, indent=2) + "\n")
        start = time.perf_counter()
        fn()
        self.timings[name] = time.perf_counter() - start
        logger.info("%s: done in %.1f s", name, self.timings[name])
        self.done[name] = settings
        atomic_write_text(self.path, json.dumps(self.done, indent=2) + "\n")
        return True


@dataclass
class DemoResult:
    out: Path
    val_curve: list[tuple[int, float]]  # (step, validation loss)
    num_parameters: int
    steps: int
    samples: list[str]
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # seconds per step run this time


def run_demo(config: DemoConfig, **train_overrides: Any) -> DemoResult:
    """Corpus -> tokenizer -> tokens -> model -> samples under ``config.out`` (see the module docstring)."""
    from cs336_lab.generate import load_model
    from cs336_lab.sampling import sample_completions
    from cs336_lab.tokenizer_files import load_tokenizer
    from cs336_lab.train import train

    out = Path(config.out)
    prepare_directory(out, "--out")
    steps = _Steps(out, config.force)
    tok_dir = _prepare_data(config, steps, out)
    tokenizer = load_tokenizer(tok_dir)
    # The model's vocabulary is exactly the tokenizer's: a small corpus may stop BPE short of --vocab-size, and
    # NOTE: a padded vocabulary would let sampling pick ids that the tokenizer cannot decode.
    train_config = demo_train_config(
        out,
        vocab_size=tokenizer.vocab_size,
        max_time_s=config.max_time_s,
        max_steps=config.max_steps,
        device=config.device,
        progress=config.progress,
        **train_overrides,
    )
    ckpt = Path(train_config.out_dir) / "ckpt_latest.pt"
    model_settings = {k: v for k, v in dataclasses.asdict(train_config).items() if k != "progress"}
    with cpu_threads(config.threads):
        # A model trained again (--force, changed settings) moves the earlier one aside: see run_folder.py.
        steps.run("model", model_settings, [ckpt], lambda: train(dataclasses.replace(train_config, start_over=True)))
        model, _ = load_model(ckpt, device="cpu")
        prompts = list(config.prompts)
        sampling = {"temperature": config.temperature, "top_p": config.top_p, "seed": 0}
        completions = sample_completions(model, tokenizer, prompts, max_new_tokens=config.max_new_tokens, **sampling)
    samples = [p + c for p, c in zip(prompts, completions)]
    atomic_write_text(out / "samples.txt", "\n\n---\n\n".join(samples) + "\n")
    history = [json.loads(line) for line in (ckpt.parent / "metrics.jsonl").read_text().splitlines() if line]
    val_curve = [(int(r["step"]), float(r["val_loss"])) for r in history if "val_loss" in r]
    return DemoResult(
        out=out,
        val_curve=val_curve,
        num_parameters=sum(p.numel() for p in model.parameters()),
        steps=history[-1]["step"] if history else 0,
        samples=samples,
        timings=steps.timings,
    )


def _prepare_data(config: DemoConfig, steps: _Steps, out: Path) -> Path:
    """The corpus, its tokenizer and its token arrays under `out` (each step redone only when its settings
    changed); returns the tokenizer's directory."""
    from cs336_lab.corpus import write_corpus

    corpus_dir, tok_dir, tokens_dir = out / "corpus", out / "tokenizer", out / "tokens"
    texts = [corpus_dir / "train.txt", corpus_dir / "valid.txt"]
    arrays = [tokens_dir / "train.npy", tokens_dir / "valid.npy"]
    stories = {"num_train": config.num_train_stories, "num_valid": config.num_valid_stories}
    steps.run(
        "corpus",
        {"train": config.num_train_stories, "valid": config.num_valid_stories, "seed": config.corpus_seed},
        texts,
        lambda: write_corpus(corpus_dir, **stories, seed=config.corpus_seed),
    )
    workers = {"num_workers": config.num_workers, "show_progress": config.progress}
    steps.run(
        "tokenizer",
        {"vocab_size": config.vocab_size},
        [tok_dir],
        lambda: train_tokenizer(texts[0], tok_dir, vocab_size=config.vocab_size, **workers),
    )
    # overwrite=True: the token arrays are the demo's own files, rebuilt when the tokenizer changed
    steps.run("tokens", {}, arrays, lambda: tokenize_files(tok_dir, texts, tokens_dir, **workers, overwrite=True))
    return tok_dir


def format_summary(result: DemoResult, points: int = 6) -> str:
    """The validation-loss curve in a few lines, then the samples."""
    lines = [f"== demo: {result.num_parameters / 1e6:.2f} M parameters, {result.steps} steps; outputs in {result.out}"]
    curve = result.val_curve
    if curve:
        (s0, l0), (s1, l1) = curve[0], curve[-1]
        best_step, best = min(curve, key=lambda sl: sl[1])
        lines.append(
            f"validation loss (nats/token): first {l0:.3f} (step {s0}), last {l1:.3f} (step {s1}), "
            f"best {best:.3f} (step {best_step}); perplexity {math.exp(l1):.1f}"
        )
        picks = sorted({round(i * (len(curve) - 1) / max(points - 1, 1)) for i in range(points)})
        lines.append("  " + "  ".join(f"step {curve[i][0]}: {curve[i][1]:.3f}" for i in picks))
    if result.timings:
        lines.append("time: " + ", ".join(f"{name} {secs:.0f} s" for name, secs in result.timings.items()))
    lines.append("== samples")
    for sample in result.samples:
        lines += [sample.strip(), "--"]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- CLI


def _run_demo(args: argparse.Namespace) -> int:
    config = config_from_args(DemoConfig, args)
    start = time.perf_counter()
    result = run_demo(config)
    save_config(config, Path(config.out) / "demo_config.json")
    print(format_summary(result))  # the demo's output proper, on stdout
    logger.info("demo finished in %.0f s", time.perf_counter() - start)
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``cs336 demo``."""
    p = subparsers.add_parser(
        "demo", help="the whole pipeline on the synthetic corpus (CPU, < 5 min)", description=__doc__.split("\n\n")[1]
    )
    add_dataclass_arguments(p, DemoConfig)
    p.set_defaults(func=_run_demo)
