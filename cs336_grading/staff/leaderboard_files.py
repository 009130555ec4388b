"""Reading what a student submits for the leaderboard, as data only: a checkpoint's tensors and a tokenizer.

Everything here treats the files as hostile: the checkpoint is opened with `torch.load(weights_only=True)`
(tensors, numbers, strings, lists and dicts; nothing that runs code) after a size check, and the tokenizer
is parsed from JSON and text and checked to be a complete byte-level BPE whose ids fit the model's
embedding. The text is then encoded by tiktoken built from the submitted merges (see
`cs336_grading.expected.bpe.tiktoken_encoding`), never by the student's tokenizer code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cs336_grading.expected.bpe import gpt2_byte_decoder, tiktoken_encoding


class RuleError(ValueError):
    """The submission breaks a leaderboard rule or its files cannot be read; the message says which."""


_COMPILED_PREFIX = "_orig_mod."
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
MAX_TOKENIZER_FILE_BYTES = 64 << 20  # a 32k-token vocabulary takes well under 1 MB


def read_submitted_checkpoint(folder: Path, max_bytes: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(state dict, the checkpoint's config or None) of the one checkpoint file in `folder`."""
    import torch

    found = sorted(p for p in folder.iterdir() if p.suffix in CHECKPOINT_SUFFIXES and p.is_file())
    if len(found) != 1:
        raise RuleError(f"expected exactly one checkpoint ({'/'.join(CHECKPOINT_SUFFIXES)}) in leaderboard/, found {[p.name for p in found]}")
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
    state = {str(k).removeprefix(_COMPILED_PREFIX): v for k, v in state.items()}
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RuleError(f"expected the model's state dict (names -> tensors) in {path.name}")
    return state, config if isinstance(config, dict) else None


def read_submitted_tokenizer(
    folder: Path, special_tokens: list[str] | None, vocab_rows: int
) -> tuple[Callable[[str], list[int]], dict[int, int]]:
    """(text -> ids, id -> byte length) for the tokenizer in `folder` (`vocab.json` + `merges.txt`)."""
    for name in ("vocab.json", "merges.txt"):
        if not (folder / name).is_file():
            raise RuleError(f"expected the tokenizer's {name} in leaderboard/, found none")
        if (size := (folder / name).stat().st_size) > MAX_TOKENIZER_FILE_BYTES:
            raise RuleError(f"the tokenizer's {name} has {size:,} bytes, over the limit of {MAX_TOKENIZER_FILE_BYTES:,}")
    decoder = gpt2_byte_decoder()

    def to_bytes(token: str) -> bytes:
        try:
            return bytes(decoder[c] for c in token)
        except KeyError as e:
            raise RuleError(f"token {token!r} is not in GPT-2's byte-to-unicode notation") from e

    try:
        data = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("format") == "cs336-bpe":
            raw = {int(i): t for i, t in data["vocab"].items()}
            saved_specials = list(data.get("special_tokens", []))
        elif isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):
            raw, saved_specials = {i: t for t, i in data.items()}, []
        else:
            raise ValueError("neither this project's format nor GPT-2's token -> id")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise RuleError(f"cannot read leaderboard/vocab.json: {e}") from e
    vocab = {i: to_bytes(t) for i, t in raw.items()}
    merges = []
    for line in (folder / "merges.txt").read_text(encoding="utf-8", errors="replace").splitlines():
        if line and not line.startswith("#version"):
            parts = line.split(" ")
            if len(parts) != 2:
                raise RuleError(f"expected two tokens a line in merges.txt, got {line[:80]!r}")
            merges.append((to_bytes(parts[0]), to_bytes(parts[1])))
    specials = list(special_tokens if special_tokens is not None else saved_specials)
    _check_vocab(vocab, merges, specials, vocab_rows)
    encoding, to_vocab = tiktoken_encoding(vocab, merges, specials)

    def encode(text: str) -> list[int]:
        return [to_vocab[i] for i in encoding.encode(text, allowed_special=set(specials), disallowed_special=())]

    return encode, {i: len(b) for i, b in vocab.items()}


def _check_vocab(vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], specials: list[str], rows: int) -> None:
    if any(i < 0 or i >= rows for i in vocab):
        raise RuleError(f"expected token ids in [0, {rows}) (the embedding's rows), got up to {max(vocab)}")
    if len(merges) > len(vocab):
        raise RuleError(f"expected at most one merge per token, got {len(merges)} merges for {len(vocab)} tokens")
    if len(set(vocab.values())) != len(vocab):
        raise RuleError("the vocabulary holds the same bytes under two ids")
    known = set(vocab.values())
    if missing := [b for b in range(256) if bytes([b]) not in known]:
        raise RuleError(f"a byte-level BPE vocabulary needs all 256 bytes; missing {len(missing)} (e.g. {missing[:3]})")
    if bad := [m for m in merges if m[0] not in known or m[1] not in known or m[0] + m[1] not in known]:
        raise RuleError(f"merge {bad[0]!r} uses or makes a token that is not in the vocabulary")
    if absent := [t for t in specials if t.encode("utf-8") not in known]:
        raise RuleError(f"special token(s) {absent} are not in the vocabulary")
