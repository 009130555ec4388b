"""`cs336 evaluate`: the loss of a checkpoint over a whole validation split, in nats/token and bits per byte.

    cs336 evaluate --checkpoint runs/demo/ckpt_latest.pt --data data/synthetic/valid.txt
    {"loss": 1.8731, "bits_per_byte": 0.6402, "predicted_tokens": 51203, ...}     # one line on stdout

Unlike the training loop's validation estimate (a fixed sample of random batches), every token of the split
after the first is predicted exactly once. Windows of `context_length` tokens start every `stride` tokens
(default: `stride = context_length`, non-overlapping windows); a window scores only the targets that no
earlier window scored, so with a smaller stride each token is predicted with at least
`context_length - stride` tokens of context (the first window scores all of its targets, and the last window
may be shorter). Losses are summed per token in float64, so the result does not depend on the batch size
beyond float32 rounding of the logits, and the same inputs always give the same number.

Bits per byte = (total nats) / ln 2 / (UTF-8 bytes of the predicted tokens): a loss that does not depend on the
tokenizer. It needs the vocabulary, so it is `null` for a `.npy` split without a tokenizer.

The checkpoint is one written by `cs336 train` (it stores its config), or a plain
`{"model", "optimizer", "iteration"}` dict with the model's config given by `--config FILE` (TOML or JSON
with `ModelConfig` fields, extra keys such as training options are ignored) or found as `config.json` beside
the checkpoint, as `cs336 train` writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cs336_common.model_spec import ModelSpec
from cs336_common.state_dict import strip_wrapper_prefixes
from cs336_lab.assignment import Assignment  # the one door into the assignment: ours, or a student's package
from cs336_lab.batches import load_training_tokens
from cs336_lab.errors import utf8_error
from cs336_lab.run_checkpoint import read_run_checkpoint
from cs336_lab.run_tokenizer import RECORD_KEY, check_tokenizer, find_tokenizer_dir
from cs336_lab.tokenizer_files import read_tokenizer

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".text", ".md")
# The default batch: windows of this many tokens in all per forward pass, at most `LOGITS_PER_BATCH` logits.
TOKENS_PER_BATCH = 4_096
LOGITS_PER_BATCH = 2**26  # 256 MB of float32 logits


def default_batch_size(context_length: int, vocab_size: int) -> int:
    """Windows per forward pass: `TOKENS_PER_BATCH` tokens (16 windows of 256, 128 of 32), fewer for a large
    vocabulary (`LOGITS_PER_BATCH`), at least one.

    >>> default_batch_size(256, 10_000), default_batch_size(32, 300), default_batch_size(1024, 50_257)
    (16, 128, 1)
    """
    by_tokens = TOKENS_PER_BATCH // context_length
    by_logits = LOGITS_PER_BATCH // (context_length * vocab_size)
    return max(1, min(by_tokens, by_logits))


@dataclass(frozen=True)
class Window:
    """Tokens `[start, start + length]` of the split: inputs `[start, start + length)`, targets one later.

    The first `skip` targets were scored by an earlier window and are not counted again.
    """

    start: int
    length: int
    skip: int


def plan_windows(num_tokens: int, context_length: int, stride: int | None = None) -> list[Window]:
    """The windows that predict every token after the first exactly once.

    >>> [(w.start, w.length, w.skip) for w in plan_windows(8, 3)]
    [(0, 3, 0), (3, 3, 0), (6, 1, 0)]
    >>> [(w.start, w.length, w.skip) for w in plan_windows(8, 4, stride=2)]
    [(0, 4, 0), (2, 4, 2), (4, 3, 2)]
    """
    stride = context_length if stride is None else stride
    if context_length < 1 or not 1 <= stride <= context_length:
        raise ValueError(f"expected 1 <= stride <= context_length, got {stride=} and {context_length=}")
    if num_tokens < 2:
        raise ValueError(f"expected a split of at least 2 tokens (one to predict), got {num_tokens}")
    last_target = num_tokens - 1  # targets are positions 1 .. num_tokens - 1
    windows, scored_until, start = [], 0, 0
    while scored_until < last_target:
        end = min(start + context_length, last_target)  # the window's last target position
        windows.append(Window(start, end - start, max(0, scored_until - start)))
        scored_until, start = end, start + stride
    return windows


def _batches(windows: list[Window], batch_size: int) -> Iterator[list[Window]]:
    """Consecutive windows of equal length, at most `batch_size` at a time."""
    batch: list[Window] = []
    for window in windows:
        if batch and (len(batch) == batch_size or window.length != batch[0].length):
            yield batch
            batch = []
        batch.append(window)
    if batch:
        yield batch


@torch.no_grad()
def sum_token_losses(
    model: torch.nn.Module,
    tokens: np.ndarray,
    windows: list[Window],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[float, int]:
    """(total nats, number of scored targets) of `model` over `windows` of `tokens`."""
    from cs336_lab.progress import progress as progress_bar

    total, count = 0.0, 0
    bar = progress_bar(len(windows), "evaluate", "windows", enabled=progress)
    for batch in _batches(windows, batch_size):
        length = batch[0].length
        starts = np.array([w.start for w in batch])[:, None] + np.arange(length + 1)[None, :]
        chunk = torch.from_numpy(np.asarray(tokens[starts], dtype=np.int64)).to(device)  # (B, T + 1)
        logits = model(chunk[:, :-1]).float()  # (B, T, vocab)
        # Fused: no second (B, T, vocab) tensor of log-probabilities.
        nats = F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="none").view(len(batch), -1)
        scored = torch.arange(length, device=nats.device)[None, :] >= torch.tensor(
            [[w.skip] for w in batch], device=nats.device
        )
        total += float(nats.double()[scored].sum())
        count += int(scored.sum())
        bar.update(len(batch))
    bar.close()
    return total, count


def predicted_bytes(tokens: np.ndarray, windows: list[Window], token_bytes: np.ndarray) -> int:
    """UTF-8 bytes of the scored targets (every token but the first, when the windows cover the split)."""
    first = windows[0].start + 1 + windows[0].skip
    last = windows[-1].start + windows[-1].length
    return int(token_bytes[np.asarray(tokens[first : last + 1])].sum())


# ----------------------------------------------------------------------------------------- loading


def model_config_of(payload: dict[str, Any], checkpoint: Path, config: str | Path | None) -> dict[str, Any]:
    """The model's config: `config` (a file) if given, else the checkpoint's own, else `config.json` beside it."""
    if config is not None:
        from cs336_lab.config import read_config_file

        return dict(read_config_file(config))
    if isinstance(payload.get("config"), dict):
        return dict(payload["config"])
    beside = checkpoint.parent / "config.json"
    if beside.is_file():
        return dict(json.loads(beside.read_text(encoding="utf-8")))
    raise ValueError(
        f"checkpoint {checkpoint} stores no config and there is no config.json beside it: pass --config FILE "
        "(TOML or JSON with a [model] table, or top-level keys, of vocab_size, context_length, d_model, num_heads, ...)"
    )


def load_for_eval(
    checkpoint: str | Path, *, config: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The package's `TransformerLM` with the weights of `checkpoint`, in eval mode, and its full config dict
    (with the checkpoint's record of its tokenizer under `RECORD_KEY`, if it has one)."""
    checkpoint = Path(checkpoint)
    payload = read_run_checkpoint(checkpoint, map_location="cpu")
    full = model_config_of(payload, checkpoint, config)
    model = Assignment.load().build_model(ModelSpec.from_run_config(full), "cpu", fused_kernels=True)
    extra = payload.get("extra")
    if isinstance(extra, dict) and extra.get(RECORD_KEY):  # the tokenizer it was trained with (run_tokenizer.py)
        full[RECORD_KEY] = extra[RECORD_KEY]
    state = strip_wrapper_prefixes(payload["model"])
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"the weights of {checkpoint} do not fit its config: {error}") from error
    return model.to(device).eval(), full


@dataclass(frozen=True)
class Split:
    """A split's token ids, and the UTF-8 length of each id when the vocabulary is known."""

    tokens: np.ndarray
    token_bytes: np.ndarray | None


def load_split(
    data: str | Path, tokenizer_dir: str | Path | None, vocab_size: int, record: dict[str, Any] | None = None
) -> Split:
    """A `.npy` token array as is, or a text file encoded with the package's `Tokenizer` for `tokenizer_dir`.

    The tokenizer must fit the model (`check_tokenizer`, against `record`: the checkpoint's memory of its own).
    """
    data = Path(data)
    if data.is_dir():
        raise IsADirectoryError(f"--data {data}: expected a .npy token array or a text file, found a directory")
    if data.suffix not in (".npy", *TEXT_SUFFIXES):
        raise ValueError(f"expected a .npy token array or a text file ({', '.join(TEXT_SUFFIXES)}), got {data}")
    if not data.is_file():
        raise FileNotFoundError(f"validation data {data} does not exist")
    if tokenizer_dir is None and data.suffix != ".npy":
        raise ValueError(f"{data} is text: pass --tokenizer DIR (the checkpoint's config names none)")
    token_bytes = None
    if tokenizer_dir is not None:
        vocab, merges, special_tokens = read_tokenizer(tokenizer_dir)
        check_tokenizer(vocab, merges, special_tokens, model_vocab_size=vocab_size, record=record, where=tokenizer_dir)
        token_bytes = np.zeros(max(vocab) + 1, dtype=np.int64)
        for token_id, raw in vocab.items():
            token_bytes[token_id] = len(raw)
    if data.suffix == ".npy":  # memory-mapped; at least 2 tokens (one to predict), ids checked against the vocabulary
        return Split(load_training_tokens(str(data), "--data", context_length=1, vocab_size=vocab_size), token_bytes)
    tokenizer = Assignment.load().make_tokenizer(vocab, merges, special_tokens)
    with open(data, encoding="utf-8") as f:
        try:
            tokens = np.fromiter(tokenizer.encode_iterable(f), dtype=np.int64)
        except UnicodeDecodeError as error:  # it names neither the file nor the offset in it
            raise utf8_error(data, error) from None
    if len(tokens) < 2:
        raise ValueError(f"--data {data}: expected a text of at least 2 tokens (one to predict), got {len(tokens)}")
    if len(tokens) and (int(tokens.max()) >= vocab_size or int(tokens.min()) < 0):
        raise ValueError(f"the split's token ids must lie in [0, {vocab_size}), found up to {int(tokens.max())}")
    return Split(tokens, token_bytes)


# -------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalResult:
    """The loss over a whole split; `to_json()` is the command's one-line output."""

    checkpoint: str
    data: str
    tokens: int  # in the split
    predicted_tokens: int  # scored targets: tokens - 1
    loss: float  # nats per predicted token
    bits_per_byte: float | None
    predicted_bytes: int | None
    context_length: int
    stride: int
    seconds: float

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "perplexity": self.perplexity})


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    *,
    tokenizer: str | Path | None = None,
    config: str | Path | None = None,
    context_length: int | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> EvalResult:
    """Score `checkpoint` on every token of `data` (see the module docstring).

    `tokenizer` defaults to the `tokenizer_dir` of the checkpoint's config, `context_length` to the model's,
    `batch_size` (windows per forward pass) to `default_batch_size`.
    The model and the tokenizer are the importable `cs336_basics` package's (see `cs336_lab/assignment.py`).
    """
    t0 = time.monotonic()
    model, full_config = load_for_eval(checkpoint, config=config, device=device)
    spec = ModelSpec.from_run_config(full_config)
    model_context, vocab_size = spec.context_length, spec.vocab_size
    context_length = model_context if context_length is None else context_length
    if not 1 <= context_length <= model_context:
        raise ValueError(f"expected 1 <= --context-length <= the model's {model_context}, got {context_length}")
    batch_size = default_batch_size(context_length, vocab_size) if batch_size is None else batch_size
    if batch_size < 1:
        raise ValueError(f"expected a positive batch size, got {batch_size}")
    tokenizer_dir = find_tokenizer_dir(tokenizer, full_config, checkpoint)
    split = load_split(data, tokenizer_dir, vocab_size, full_config.get(RECORD_KEY))
    tokens = split.tokens
    windows = plan_windows(len(tokens), context_length, stride)
    nats, count = sum_token_losses(model, tokens, windows, batch_size=batch_size, device=device, progress=progress)
    num_bytes = predicted_bytes(tokens, windows, split.token_bytes) if split.token_bytes is not None else None
    return EvalResult(
        checkpoint=str(checkpoint),
        data=str(data),
        tokens=len(tokens),
        predicted_tokens=count,
        loss=nats / count,
        bits_per_byte=nats / math.log(2) / num_bytes if num_bytes else None,
        predicted_bytes=num_bytes,
        context_length=context_length,
        stride=context_length if stride is None else stride,
        seconds=round(time.monotonic() - t0, 3),
    )


# --------------------------------------------------------------------------------------------- CLI


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `cs336 evaluate`."""
    parser = subparsers.add_parser(
        "evaluate",
        help="the loss of a checkpoint over a whole split (nats/token, bits/byte)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint of `cs336 train`, or a plain dict + --config")
    parser.add_argument("--data", required=True, help="a text file (encoded with the tokenizer) or a .npy token array")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory (default: the config's tokenizer_dir)")
    parser.add_argument("--config", default=None, help="the model's config (TOML/JSON) for a checkpoint without one")
    parser.add_argument("--context-length", type=int, default=None, help="window length (default: the model's)")
    parser.add_argument("--stride", type=int, default=None, help="tokens between window starts (default: no overlap)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"windows per forward pass (default: {TOKENS_PER_BATCH} tokens' worth, fewer for a large vocabulary)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch (default: 1 or all cores, whichever is faster now: on a busy machine one thread "
        "was 5x faster)",
    )
    parser.add_argument(
        "--device", default="cpu", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps (default: %(default)s)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cs336_common.device import select_device
    from cs336_lab.threads import cpu_threads

    on_cpu = select_device(args.device).type == "cpu"
    with cpu_threads(args.threads) if on_cpu else contextlib.nullcontext():
        result = evaluate(
            args.checkpoint,
            args.data,
            tokenizer=args.tokenizer,
            config=args.config,
            context_length=args.context_length,
            stride=args.stride,
            batch_size=args.batch_size,
            device=args.device,
            progress=args.progress,
        )
    print(result.to_json())  # the command's output proper: one JSON line on stdout
    return 0


__all__ = [
    "EvalResult",
    "Split",
    "Window",
    "evaluate",
    "load_for_eval",
    "load_split",
    "plan_windows",
    "sum_token_losses",
    "default_batch_size",
    "add_subcommand",
]
