"""The saved form of a trained tokenizer: `vocab.json` + `merges.txt` in one directory (the tools' format).

`cs336 train-bpe` writes it, `cs336 tokenize`, `cs336 generate` and the trainer (bits per byte) read it, and
`load_tokenizer` turns it into the assignment's `Tokenizer(vocab, merges, special_tokens)`, whoever wrote
the package: the format belongs to the tools, not to any one implementation.

- `vocab.json`: `{"format": "cs336-bpe", "version": 1, "special_tokens": [...], "vocab": {"<id>": "<token>"}}`.
  Token bytes are shown with GPT-2's byte-to-unicode table: every byte is one printable character (the
  printable ASCII and Latin-1 bytes stand for themselves, the others are shifted to U+0100 and up, so a
  space is `Ġ` and a newline `Ċ`). The file is unambiguous and still readable: b" the" is `Ġthe`.
- `merges.txt`: the line `#version: cs336-bpe 1`, then one merge a line, in learned order: the two tokens
  in the same notation separated by one space (the notation has no spaces of its own).

GPT-2's own `vocab.json` (token -> id) and `merges.txt` are read too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

from cs336_lab.atomic import atomic_write_text

__all__ = ["save_tokenizer", "read_tokenizer", "load_tokenizer", "bytes_to_unicode", "VOCAB_FILE", "MERGES_FILE"]

FORMAT_NAME = "cs336-bpe"
FORMAT_VERSION = 1
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"

Vocab = dict[int, bytes]
Merges = list[tuple[bytes, bytes]]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to one printable unicode character.

    >>> table = bytes_to_unicode()
    >>> table[ord("a")], table[ord(" ")], table[ord("\\n")]
    ('a', 'Ġ', 'Ċ')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


@lru_cache(maxsize=1)
def _unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _to_text(token: bytes) -> str:
    table = bytes_to_unicode()
    return "".join([table[b] for b in token])


def _from_text(text: str, where: str) -> bytes:
    inverse = _unicode_to_bytes()
    try:
        return bytes([inverse[c] for c in text])
    except KeyError as e:
        raise ValueError(f"{where}: token {text!r} contains {e.args[0]!r}, expected only characters of the "
                         "byte-to-unicode table") from None


def save_tokenizer(vocab: Vocab, merges: Merges, directory: str | os.PathLike, special_tokens: Iterable[str] = ()) -> None:
    """Write `vocab.json` and `merges.txt` into `directory` (created if needed); each write is atomic."""
    directory = Path(directory)
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "special_tokens": list(special_tokens),
        "vocab": {str(i): _to_text(vocab[i]) for i in sorted(vocab)},
    }
    atomic_write_text(directory / VOCAB_FILE, json.dumps(payload, ensure_ascii=False, indent=1) + "\n")
    lines = [f"#version: {FORMAT_NAME} {FORMAT_VERSION}"]
    lines += [f"{_to_text(left)} {_to_text(right)}" for left, right in merges]
    atomic_write_text(directory / MERGES_FILE, "\n".join(lines) + "\n")


def read_tokenizer(directory: str | os.PathLike) -> tuple[Vocab, Merges, list[str]]:
    """Read what `save_tokenizer` wrote: `(vocab, merges, special_tokens)`."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "a file" if directory.exists() else "nothing"
        raise FileNotFoundError(f"tokenizer directory {str(directory)!r}: expected a directory holding "
                                f"{VOCAB_FILE} and {MERGES_FILE}, found {what}")
    vocab, special_tokens = _read_vocab(directory / VOCAB_FILE)
    return vocab, _read_merges(directory / MERGES_FILE), special_tokens or []


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The package's `Tokenizer` for the files in `directory` (see `cs336_lab/assignment.py`)."""
    from cs336_lab.assignment import Assignment

    return Assignment.load().make_tokenizer(*read_tokenizer(directory))


def _read_vocab(path: Path) -> tuple[Vocab, list[str] | None]:
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: expected a JSON vocabulary, got unreadable JSON ({err}); truncated?") from None
    if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: expected {FORMAT_NAME} version {FORMAT_VERSION}, got {data.get('version')!r}")
        vocab = {int(i): _from_text(token, str(path)) for i, token in data["vocab"].items()}
        return vocab, list(data.get("special_tokens", []))
    if isinstance(data, dict) and all(isinstance(v, int) for v in data.values()):  # GPT-2: token -> id
        return {i: _from_text(token, str(path)) for token, i in data.items()}, None
    raise ValueError(f"{path}: expected a {FORMAT_NAME} vocabulary or a GPT-2 vocab.json (token -> id)")


def _read_merges(path: Path) -> Merges:
    if not path.is_file():
        raise FileNotFoundError(f"merges file {str(path)!r} does not exist")
    merges = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected two tokens separated by one space, got {line!r}")
        merges.append((_from_text(parts[0], f"{path}:{number}"), _from_text(parts[1], f"{path}:{number}")))
    return merges
