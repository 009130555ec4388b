"""What the trainer feeds the model: token arrays checked up front, training batches, the validation score.

    tokens = load_training_tokens("data/train.npy", "train_data", context_length=256, vocab_size=10_000)
    sampler = BatchSampler(tokens, batch_size=32, context_length=256, device=device, seed=0)
    x, y = sampler()                             # the package's get_batch, drawn from the sampler's generator
    loss = estimate_loss(model, valid_tokens, config, device)    # the same fixed batches on every call

The sampler's numpy `Generator` state goes into every checkpoint, so a resumed run draws the batches that an
uninterrupted one would have drawn.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cs336_lab.assignment import Assignment
from cs336_lab.errors import describe_file
from cs336_lab.train_config import TrainConfig

# Token ids are checked over at most this many leading tokens: scanning a memory-mapped corpus of billions of
# tokens costs seconds per GB.
_CHECKED_TOKENS = 50_000_000


def load_training_tokens(path: str, name: str, *, context_length: int, vocab_size: int) -> np.ndarray:
    """Memory-map the 1-d `.npy` token array `path`, checked to be long enough and to fit the vocabulary.

    `name` ("train_data", "valid_data") names the setting in the error messages.
    """
    if not path:
        raise ValueError(f"{name} is required: expected the path of a .npy token array, got ''")
    if not Path(path).is_file():
        found = "a directory" if Path(path).is_dir() else "nothing"
        raise FileNotFoundError(f"{name}: expected a .npy token file at {path}, found {found}")
    with open(path, "rb") as f:
        is_npy = f.read(6) == b"\x93NUMPY"
    if not is_npy:  # NOTE: numpy's own error for a text file advises loading it with allow_pickle (unsafe)
        raise ValueError(
            f"{name}: expected a .npy token array (as `cs336 tokenize` writes), got {path}: {describe_file(path)}"
        )
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        reason = "it holds Python objects, not token ids" if "allow_pickle" in str(error) else str(error)
        raise ValueError(f"{name}: expected a .npy token array, got an unreadable file {path} ({reason})") from None
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-d integer array, got shape {tokens.shape} dtype {tokens.dtype}")
    if len(tokens) <= context_length:
        raise ValueError(f"{name} has {len(tokens)} tokens, need more than context_length={context_length}")
    # An id outside the vocabulary would fail deep inside the embedding (a device assert on CUDA), mid-run.
    head = np.asarray(tokens[:_CHECKED_TOKENS])
    smallest, largest = int(head.min()), int(head.max())
    if smallest < 0 or largest >= vocab_size:
        bad = smallest if smallest < 0 else largest
        raise ValueError(
            f"{name} holds token id {bad}, expected ids in [0, vocab_size={vocab_size}): "
            "does --vocab-size match the tokenizer?"
        )
    return tokens


class BatchSampler:
    """Random training batches from a numpy `Generator` whose state goes into the checkpoint."""

    def __init__(
        self, tokens: np.ndarray, *, batch_size: int, context_length: int, device: torch.device, seed: int | list[int]
    ) -> None:
        self.tokens, self.batch_size, self.context_length, self.device = tokens, batch_size, context_length, device
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return Assignment.load().sample_batch(self.tokens, self.batch_size, self.context_length, self.device, self.rng)

    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    def reseed(self, seed: list[int]) -> None:
        """Fresh, distinct streams (a resume with another number of ranks than the checkpoint's)."""
        self.rng = np.random.default_rng(seed)


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast when asked for (or by default on CUDA), else a no-op context."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def estimate_loss(model: nn.Module, tokens: np.ndarray, config: TrainConfig, device: torch.device) -> float:
    """Mean validation loss (nats/token) over `eval_batches` fixed batches: the same batches on every call."""
    sampler = BatchSampler(
        tokens,
        batch_size=config.batch_size,
        context_length=config.model.context_length,
        device=device,
        seed=config.seed + 1_000_003,
    )  # fixed: independent of the training sampler
    was_training = model.training
    model.eval()
    losses = []
    for _ in range(config.eval_batches):
        x, y = sampler()
        with autocast(device, config.precision):
            logits = model(x)
        losses.append(Assignment.load().training_loss(logits, y).item())
    model.train(was_training)
    return float(np.mean(losses))


__all__ = ["load_training_tokens", "BatchSampler", "autocast", "estimate_loss"]
