"""Fixtures shared by the trainer's tests (test_train.py, test_train_recipe.py): a learnable token corpus and
a tiny run configuration that trains on it in a second."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cs336_common.model_spec import ModelSpec
from cs336_lab.train import TrainConfig

VOCAB = 64


@pytest.fixture(scope="module")
def token_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A learnable corpus: one random 50-token phrase repeated, so the loss falls within a few steps."""
    directory = tmp_path_factory.mktemp("tokens")
    phrase = np.random.default_rng(0).integers(0, VOCAB, size=50)
    tokens = np.tile(phrase, 100).astype(np.uint16)
    np.save(directory / "train.npy", tokens)
    np.save(directory / "valid.npy", tokens[:1000])
    return directory / "train.npy", directory / "valid.npy"


@pytest.fixture
def tiny_config(token_files: tuple[Path, Path], tmp_path: Path) -> TrainConfig:
    """Twelve steps of a 2-layer, 32-wide model, evaluated and checkpointed every 4 steps."""
    train_path, valid_path = token_files
    return TrainConfig(
        train_data=str(train_path),
        valid_data=str(valid_path),
        model=ModelSpec(vocab_size=VOCAB, context_length=16, d_model=32, num_layers=2, num_heads=2),
        batch_size=4,
        max_steps=12,
        warmup_steps=2,
        lr_max=3e-3,
        lr_min=3e-4,
        eval_every=4,
        eval_batches=2,
        log_every=1,
        checkpoint_every=4,
        out_dir=str(tmp_path / "run"),
        device="cpu",
        progress=False,
    )
