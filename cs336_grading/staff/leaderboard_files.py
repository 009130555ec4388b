"""Reading what a student submits for the leaderboard, as data only: a checkpoint's tensors and a tokenizer.

Everything here treats the files as hostile: the checkpoint is opened with `torch.load(weights_only=True)`
(tensors, numbers, strings, lists and dicts; nothing that runs code) after a size check, and the tokenizer
is parsed from JSON and text and checked to be a complete byte-level BPE whose ids fit the model's
embedding. The text is then encoded by tiktoken built from the submitted merges (see
`cs336_grading.expected.bpe.tiktoken_encoding`), never by the student's tokenizer code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cs336_common.gpt2_files import MERGES_FILE, VOCAB_FILE, check_byte_level_bpe, parse_merges, parse_vocab
from cs336_common.state_dict import strip_wrapper_prefixes
from cs336_grading.expected.bpe import tiktoken_encoding


class RuleError(ValueError):
    """The submission breaks a leaderboard rule or its files cannot be read; the message says which."""


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
MAX_TOKENIZER_FILE_BYTES = 64 << 20  # a 32k-token vocabulary takes well under 1 MB


def read_submitted_checkpoint(folder: Path, max_bytes: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state dict, the checkpoint's config or None) of the one checkpoint file in `folder`."""
    import torch

    found = sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    if len(found) != 1:
        raise RuleError(
            f"expected exactly one checkpoint ({'/'.join(CHECKPOINT_SUFFIXES)}) in leaderboard/, found {[p.name for p in found]}"
        )
    path = found[0]
    if path.stat().st_size > max_bytes:
        raise RuleError(f"the checkpoint has {path.stat().st_size:,} bytes, over the limit of {max_bytes:,}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # any failure to read is the submission's: a clear reason, no entry
        raise RuleError(f"cannot read {path.name} as a weights-only checkpoint: {str(e).splitlines()[0][:200]}") from e
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        state, config = payload["model"], payload.get("config")
    elif isinstance(payload, dict):
        state, config = payload, None
    else:
        raise RuleError(f"expected a dict in {path.name}, got {type(payload).__name__}")
    try:
        state = strip_wrapper_prefixes(state)
    except ValueError as e:
        raise RuleError(f"{path.name}: {e}") from e
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuleError(f"expected the model's state dict (names -> tensors) in {path.name}")
    return state, config if isinstance(config, dict) else None


def read_submitted_tokenizer(
    folder: Path, special_tokens: list[str] | None, vocab_rows: int
) -> tuple[Callable[[str], list[int]], dict[int, int]]:
    """(text -> ids, id -> byte length) for the tokenizer in `folder` (`vocab.json` + `merges.txt`)."""
    for name in (VOCAB_FILE, MERGES_FILE):
        if not (folder / name).is_file():
            raise RuleError(f"expected the tokenizer's {name} in leaderboard/, found none")
        if (size := (folder / name).stat().st_size) > MAX_TOKENIZER_FILE_BYTES:
            raise RuleError(
                f"the tokenizer's {name} has {size:,} bytes, over the limit of {MAX_TOKENIZER_FILE_BYTES:,}"
            )
    try:
        vocab, saved_specials = parse_vocab(_read_utf8(folder / VOCAB_FILE), f"leaderboard/{VOCAB_FILE}")
        merges = parse_merges(_read_utf8(folder / MERGES_FILE), f"leaderboard/{MERGES_FILE}")
    except ValueError as e:
        raise RuleError(f"cannot read the tokenizer: {e}") from e
    specials = list(special_tokens if special_tokens is not None else saved_specials or [])
    _check_vocab(vocab, merges, specials, vocab_rows)
    encoding, to_vocab = tiktoken_encoding(vocab, merges, specials)

    def encode(text: str) -> list[int]:
        return [to_vocab[i] for i in encoding.encode(text, allowed_special=set(specials), disallowed_special=())]

    return encode, {i: len(b) for i, b in vocab.items()}


def _check_vocab(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], specials: list[str], rows: int) -> None:
    if any(i < 0 or i >= rows for i in vocab):
        raise RuleError(f"expected token ids in [0, {rows}) (the embedding's rows), got up to {max(vocab)}")
    try:
        check_byte_level_bpe(vocab, merges, specials)
    except ValueError as e:
        raise RuleError(str(e)) from e


def _read_utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise RuleError(
            f"expected UTF-8 text in leaderboard/{path.name}, got an undecodable byte at offset {e.start}"
        ) from e
