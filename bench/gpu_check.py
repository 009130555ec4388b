"""`make gpu-check`: a recipe's model trained for a few hundred steps with bf16 autocast and `torch.compile`, in < 5 min.

    python -m bench.gpu_check                                   # the TinyStories recipe on the GPU, 300 steps
    python -m bench.gpu_check --recipe configs/recipes/tinystories.toml --steps 200
    python -m bench.gpu_check --cpu-smoke                       # the same code path, a tiny model, on the CPU

Offline on a bare machine: the tokens are synthetic (a random walk of small steps through the vocabulary, so
the next token is learnable: its entropy is ln 4 nats) and the tokenizer is made up to the recipe's vocabulary
size, both written into the output folder. The run is the recipe's (`cs336_lab.train.train`: its model with
every switch, its optimiser and learning rates), with only the budget, the evaluation and the data replaced;
`--cpu-smoke` also shrinks the model (the recipe's switches stay). Printed: tokens/s (median of the logged
windows after the first, i.e. after compiling) and MFU (where the device's peak is known), the loss at the
start and the end, then a sample from the checkpoint through `cs336 generate`. Exit 1 when the loss did not
fall by at least 1 nat (0.3 in the CPU smoke run: one layer, 30 steps) or the sample failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO_ROOT

logger = logging.getLogger("bench.gpu_check")

RECIPES = REPO_ROOT / "configs" / "recipes"
EOS = "<|endoftext|>"
MIN_FALL_NATS = 1.0  # the final validation loss must be this much below the first training loss
SMOKE_MIN_FALL_NATS = 0.3  # a tiny model for a few steps: less, but still more than noise
STEPS = 300
SMOKE_STEPS = 30


def default_gpu_recipe() -> Path:
    """The best TinyStories recipe when it exists, else the handout's baseline."""
    best = RECIPES / "tinystories.toml"
    return best if best.is_file() else RECIPES / "tinystories_baseline.toml"


def synthetic_tokens(n: int, vocab_size: int, seed: int) -> np.ndarray:
    """A random walk through the ids by steps of 1, 2, 3 or 5 (mod the vocabulary, the last id, EOS, left out):
    each next token is one of 4 given the last, so a model can learn it down to ln 4 = 1.39 nats."""
    rng = np.random.default_rng(seed)
    steps = rng.choice(np.array([1, 2, 3, 5]), size=n)
    return (np.cumsum(steps) % (vocab_size - 1)).astype(np.uint16 if vocab_size <= 65536 else np.int32)


def made_up_tokenizer(vocab_size: int) -> tuple[dict[int, bytes], list[tuple[bytes, bytes]]]:
    """A byte-level BPE of exactly `vocab_size` tokens (the last is EOS): 256 bytes, then merges of lower-case
    letters and space into ever longer strings ("ab", "abc", ...), each merge of two earlier tokens."""
    vocab = {i: bytes([i]) for i in range(256)}
    merges: list[tuple[bytes, bytes]] = []
    letters = [bytes([c]) for c in b"abcdefghijklmnopqrstuvwxyz "]
    known, level = set(vocab.values()), letters
    while len(vocab) < vocab_size - 1:
        longer = []
        for left in level:
            for right in letters:
                if len(vocab) == vocab_size - 1:
                    break
                if left + right not in known:
                    vocab[len(vocab)] = left + right
                    merges.append((left, right))
                    known.add(left + right)
                    longer.append(left + right)
        level = longer
    vocab[vocab_size - 1] = EOS.encode()
    return vocab, merges


def write_data(directory: Path, vocab_size: int, train_tokens: int) -> tuple[Path, Path, Path]:
    """The synthetic train/valid tokens and the made-up tokenizer, in `directory`."""
    from cs336_lab.tokenizer_files import save_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "train.npy", synthetic_tokens(train_tokens, vocab_size, seed=0))
    np.save(directory / "valid.npy", synthetic_tokens(max(train_tokens // 20, 20_000), vocab_size, seed=1))
    vocab, merges = made_up_tokenizer(vocab_size)
    save_tokenizer(vocab, merges, directory / "tokenizer", special_tokens=[EOS])
    return directory / "train.npy", directory / "valid.npy", directory / "tokenizer"


def check_config(recipe: Path, out_dir: Path, *, smoke: bool, steps: int) -> Any:
    """The recipe's config with the check's data, budget, evaluation, device and precision (bf16, compiled)."""
    from cs336_lab.config import load_config
    from cs336_lab.train_config import TrainConfig

    config = load_config(TrainConfig, recipe)
    model, batch_size = config.model, config.batch_size
    if smoke:  # the recipe's switches on a tiny model
        model = dataclasses.replace(model, vocab_size=512, context_length=32, d_model=64, num_layers=1, num_heads=4)
        model = dataclasses.replace(model, d_ff=None)  # re-derived for the width (and the FFN type)
        batch_size = 8
    train_npy, valid_npy, tok_dir = write_data(out_dir / "data", model.vocab_size, steps * batch_size * 8 + 100_000)
    return dataclasses.replace(
        config,
        model=model,
        batch_size=batch_size,
        train_data=str(train_npy),
        valid_data=str(valid_npy),
        tokenizer_dir=str(tok_dir),
        out_dir=str(out_dir / "run"),
        max_steps=steps,
        warmup_steps=max(1, steps // 10),
        lr_clock="steps",
        max_time_s=240.0,  # a cap: the check must fit in 5 minutes whatever happens
        eval_every=max(1, steps // 3),
        eval_batches=4,
        log_every=max(1, steps // 15),
        checkpoint_every=steps,
        device="cpu" if smoke else "cuda",
        precision="bf16",
        compile=True,
        progress=False,
        threads=1 if smoke else config.threads,
        resume=False,
        start_over=False,
    )


def min_fall(config: Any) -> float:
    """How far the loss must fall: 1 nat on the GPU, 0.3 in the CPU smoke run."""
    return SMOKE_MIN_FALL_NATS if config.device == "cpu" else MIN_FALL_NATS


def sample(checkpoint: Path, device: str) -> subprocess.CompletedProcess[str]:
    """`cs336 generate` on the checkpoint: 32 tokens after the prompt "ab"."""
    cmd = [sys.executable, "-m", "cs336_lab.cli", "generate", "--checkpoint", str(checkpoint), "--prompt", "ab"]
    cmd += ["--max-new-tokens", "32", "--seed", "0", "--device", device]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)


def summarise(result: Any, config: Any, seconds: float, sampled: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The check's figures and verdict from the run's records and the sample."""
    records = [r for r in result.history if "tokens_per_s" in r]
    steady = records[1:] or records  # the first window holds the compilation
    first_loss = next(r["train_loss"] for r in result.history if "train_loss" in r)
    fell = result.final_val_loss is not None and result.final_val_loss <= first_loss - min_fall(config)
    mfus = [r["mfu"] for r in steady if "mfu" in r]
    return {
        "device": config.device,
        "model": dataclasses.asdict(config.model),
        "batch_size": config.batch_size,
        "steps": result.steps,
        "seconds": round(seconds, 1),
        "train_s": round(result.elapsed_s, 1),
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady) if steady else None,
        "mfu": statistics.median(mfus) if mfus else None,
        "first_train_loss": first_loss,
        "final_val_loss": result.final_val_loss,
        "loss_fell": fell,
        "min_fall_nats": min_fall(config),
        "sample_ok": sampled.returncode == 0 and bool(sampled.stdout.strip()),
        "sample": sampled.stdout.strip()[:200],
        "ok": fell and sampled.returncode == 0,
    }


def run_check(recipe: Path, out_dir: Path, *, smoke: bool, steps: int) -> dict[str, Any]:
    """Train, sample, and return the summary (also written to `out_dir/gpu_check.json`)."""
    import torch

    from cs336_lab.train import train

    if not smoke and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: run it on a GPU machine, or with --cpu-smoke")
    start = time.perf_counter()
    config = check_config(recipe, out_dir, smoke=smoke, steps=steps)
    result = train(config)
    sampled = sample(Path(config.out_dir) / "ckpt_latest.pt", config.device)
    summary = summarise(result, config, time.perf_counter() - start, sampled) | {"recipe": str(recipe)}
    if sampled.returncode != 0:
        summary["sample_error"] = sampled.stderr.strip()[-1000:]
    (out_dir / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=None, help="the recipe (default: the TinyStories one)")
    parser.add_argument("--steps", type=int, default=None, help=f"steps ({STEPS}; {SMOKE_STEPS} with --cpu-smoke)")
    parser.add_argument("--cpu-smoke", action="store_true", help="a tiny model on the CPU: the same code path")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the data and run go (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    recipe = (args.recipe or default_gpu_recipe()).resolve()
    steps = args.steps or (SMOKE_STEPS if args.cpu_smoke else STEPS)
    if not recipe.is_file() or steps < 3:
        parser.error(f"expected an existing --recipe and --steps >= 3, got {recipe} and {steps}")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        summary = run_check(recipe, args.out_dir or Path(tmp), smoke=args.cpu_smoke, steps=steps)
    mfu = f", MFU {summary['mfu']:.1%}" if summary["mfu"] is not None else ", MFU unknown (no peak for this device)"
    print(
        f"gpu-check ({'CPU smoke' if args.cpu_smoke else 'GPU'}, {recipe.name}): {summary['steps']} steps in "
        f"{summary['seconds']:.0f} s, {summary['tokens_per_s']:,.0f} tokens/s{mfu}; loss "
        f"{summary['first_train_loss']:.3f} -> {summary['final_val_loss']:.3f} "
        f"({'fell' if summary['loss_fell'] else 'DID NOT FALL'} by >= {summary['min_fall_nats']} nat); "
        f"sample {'ok' if summary['sample_ok'] else 'FAILED'}: {summary['sample'][:80]!r}"
    )
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
