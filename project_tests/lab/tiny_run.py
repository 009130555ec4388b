"""A tiny trained language model for the tests of `cs336 evaluate` and the leaderboard.

    run = make_tiny_run(tmp_path)        # ~10 s on one CPU core
    run.checkpoint, run.tokenizer_dir, run.valid_text

The whole pipeline of the tools on a few synthetic stories: a 300-token BPE tokenizer, the token arrays,
a 2-layer model trained for 40 steps by `cs336_lab.train.train` (so its checkpoint is exactly what
`cs336 train` writes: weights, optimizer, config with `tokenizer_dir`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cs336_common.model_spec import ModelSpec
from cs336_lab.corpus import write_corpus
from cs336_lab.pipeline import tokenize_files, train_tokenizer
from cs336_lab.train import train
from cs336_lab.train_config import CHECKPOINT_NAME, TrainConfig

VOCAB_SIZE = 300
CONTEXT_LENGTH = 32


@dataclass(frozen=True)
class TinyRun:
    checkpoint: Path
    tokenizer_dir: Path
    valid_text: Path
    valid_tokens: Path
    config: TrainConfig


def make_tiny_run(root: Path, *, steps: int = 40) -> TinyRun:
    """Train the tiny model under `root` (see the module docstring)."""
    corpus = write_corpus(root / "corpus", num_train=120, num_valid=12)
    tokenizer_dir = root / "tokenizer"
    train_tokenizer(corpus.train, tokenizer_dir, vocab_size=VOCAB_SIZE, num_workers=1)
    counts = tokenize_files(tokenizer_dir, [corpus.train, corpus.valid], root / "tokens", num_workers=1)
    train_npy, valid_npy = sorted(counts, key=lambda p: p.stem != "train")
    config = TrainConfig(
        train_data=str(train_npy),
        valid_data=str(valid_npy),
        tokenizer_dir=str(tokenizer_dir),
        model=ModelSpec(vocab_size=VOCAB_SIZE, context_length=CONTEXT_LENGTH, d_model=32, num_layers=2, num_heads=4),
        batch_size=8,
        max_steps=steps,
        warmup_steps=4,
        lr_max=3e-3,
        eval_every=steps,
        eval_batches=2,
        log_every=steps,
        checkpoint_every=steps,
        out_dir=str(root / "run"),
        progress=False,
        device="cpu",
    )
    train(config)
    return TinyRun(root / "run" / CHECKPOINT_NAME, tokenizer_dir, corpus.valid, valid_npy, config)
