"""Which tokenizer goes with a checkpoint: where to find it from anywhere, and a check that it is the right one.

    record = tokenizer_record(config.tokenizer_dir)      # the trainer, into the checkpoint's extra["tokenizer"]
    directory = find_tokenizer_dir(args.tokenizer, config, checkpoint)       # `cs336 generate` / `evaluate`
    vocab, merges, special = read_tokenizer(directory)
    check_tokenizer(vocab, merges, special, model_vocab_size=..., record=record, where=directory)

- **Paths.** The trainer stores the checkpoint's path settings absolute (`absolute_paths`), so a checkpoint
  works from any folder. An older checkpoint's relative `tokenizer_dir` is tried from the current folder and
  from the checkpoint's folder; the error names every path tried.
- **Fingerprint.** The checkpoint records the SHA-256 of its tokenizer's content (`tokenizer_fingerprint`:
  the vocabulary, the merges and the special tokens, not the files' bytes). A tokenizer with that fingerprint
  is the one the model was trained with. Any other must at least have the model's vocabulary size (else
  `ValueError`, naming both sizes: generating prints garbage and bits per byte are wrong); one of the right
  size with another fingerprint is used with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cs336_lab.tokenizer_files import Merges, Vocab, read_tokenizer

logger = logging.getLogger(__name__)

PATH_FIELDS = ("train_data", "valid_data", "tokenizer_dir", "out_dir")  # a run's settings that are paths
RECORD_KEY = "tokenizer"  # the key of the record in a checkpoint's `extra` and in the loaders' config dicts

__all__ = [
    "PATH_FIELDS",
    "RECORD_KEY",
    "absolute_paths",
    "tokenizer_fingerprint",
    "tokenizer_record",
    "find_tokenizer_dir",
    "check_tokenizer",
]


def absolute_paths(settings: Mapping[str, Any]) -> dict[str, Any]:
    """`settings` with every non-empty path field (`PATH_FIELDS`) made absolute (from the current folder)."""
    return {k: os.path.abspath(v) if k in PATH_FIELDS and isinstance(v, str) and v else v for k, v in settings.items()}


def tokenizer_fingerprint(vocab: Vocab, merges: Merges, special_tokens: list[str]) -> str:
    """The SHA-256 (hex) of a tokenizer's content: equal for the same vocabulary, merges and special tokens.

    >>> tokenizer_fingerprint({0: b"a"}, [], []) == tokenizer_fingerprint({0: b"a"}, [], [])
    True
    """
    digest = hashlib.sha256()
    for token_id in sorted(vocab):
        digest.update(b"v%d:%s\n" % (token_id, vocab[token_id].hex().encode()))
    for left, right in merges:
        digest.update(b"m%s %s\n" % (left.hex().encode(), right.hex().encode()))
    for token in special_tokens:
        digest.update(b"s%s\n" % token.encode("utf-8").hex().encode())
    return digest.hexdigest()


def _vocab_size(vocab: Vocab) -> int:
    return max(vocab, default=-1) + 1


def tokenizer_record(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """What a checkpoint remembers of its tokenizer: absolute path, vocabulary size and fingerprint."""
    vocab, merges, special_tokens = read_tokenizer(directory)
    return {
        "dir": os.path.abspath(directory),
        "vocab_size": _vocab_size(vocab),
        "fingerprint": tokenizer_fingerprint(vocab, merges, special_tokens),
    }


def find_tokenizer_dir(
    given: str | os.PathLike[str] | None, config: Mapping[str, Any], checkpoint: str | os.PathLike[str]
) -> Path | None:
    """The tokenizer directory for a checkpoint: `given` (a --tokenizer flag), else the one its config records.

    A recorded relative path (older checkpoints) is tried from the current folder, then from the checkpoint's.
    """
    if given is not None:
        return Path(given)
    recorded = config.get("tokenizer_dir")
    if not recorded:
        return None
    tried = (
        [Path(recorded)]
        if Path(recorded).is_absolute()
        else [Path.cwd() / recorded, Path(checkpoint).resolve().parent / recorded]
    )
    for candidate in tried:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"tokenizer_dir {recorded!r} recorded in checkpoint {checkpoint}: expected a tokenizer "
        f"directory, found none at {' or '.join(map(str, dict.fromkeys(tried)))}; pass --tokenizer DIR"
    )


def check_tokenizer(
    vocab: Vocab,
    merges: Merges,
    special_tokens: list[str],
    *,
    model_vocab_size: int,
    record: Mapping[str, Any] | None,
    where: str | os.PathLike[str],
) -> None:
    """`ValueError` when the tokenizer at `where` cannot be the model's; a warning when it is another one."""
    fingerprint = tokenizer_fingerprint(vocab, merges, special_tokens)
    trained_with = record.get("fingerprint") if isinstance(record, Mapping) else None
    if fingerprint == trained_with:
        return
    size = _vocab_size(vocab)
    if size != model_vocab_size:
        raise ValueError(
            f"tokenizer {where} does not fit the model: expected a vocabulary of the model's "
            f"{model_vocab_size} tokens, got {size}; pass the tokenizer the model was trained with "
            "(--tokenizer DIR)"
        )
    if trained_with is not None:
        logger.warning(
            "tokenizer %s is not the one the model was trained with (%s, fingerprint %s..., this one "
            "%s...); its vocabulary has the same size, so it is used",
            where,
            record.get("dir"),
            trained_with[:12],
            fingerprint[:12],
        )
