"""The saved form of a trained tokenizer: `vocab.json` + `merges.txt` in one directory (the tools' format).

`cs336 train-bpe` writes it, `cs336 tokenize`, `cs336 generate` and the trainer (bits per byte) read it, and
`load_tokenizer` turns it into the assignment's `Tokenizer(vocab, merges, special_tokens)`, whoever wrote
the package: the format belongs to the tools, not to any one implementation. The files themselves (GPT-2's
byte-to-unicode notation, the versioned `cs336-bpe` form, GPT-2's own files) are `cs336_common/gpt2_files.py`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cs336_common.atomic import atomic_write_text
from cs336_common.gpt2_files import (
    MERGES_FILE,
    VOCAB_FILE,
    Merges,
    Vocab,
    merges_to_text,
    read_merges,
    read_vocab,
    vocab_to_json,
)

__all__ = ["save_tokenizer", "read_tokenizer", "load_tokenizer", "VOCAB_FILE", "MERGES_FILE"]


def save_tokenizer(
    vocab: Vocab, merges: Merges, directory: str | os.PathLike, special_tokens: Iterable[str] = ()
) -> None:
    """Write `vocab.json` and `merges.txt` into `directory` (created if needed); each write is atomic."""
    directory = Path(directory)
    atomic_write_text(directory / VOCAB_FILE, vocab_to_json(vocab, special_tokens))
    atomic_write_text(directory / MERGES_FILE, merges_to_text(merges))


def read_tokenizer(directory: str | os.PathLike) -> tuple[Vocab, Merges, list[str]]:
    """Read what `save_tokenizer` wrote: `(vocab, merges, special_tokens)`."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "a file" if directory.exists() else "nothing"
        raise FileNotFoundError(
            f"tokenizer directory {str(directory)!r}: expected a directory holding "
            f"{VOCAB_FILE} and {MERGES_FILE}, found {what}"
        )
    vocab, special_tokens = read_vocab(directory / VOCAB_FILE)
    return vocab, read_merges(directory / MERGES_FILE), special_tokens or []


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The package's `Tokenizer` for the files in `directory` (see `cs336_lab/assignment.py`)."""
    from cs336_lab.assignment import Assignment

    return Assignment.load().make_tokenizer(*read_tokenizer(directory))
