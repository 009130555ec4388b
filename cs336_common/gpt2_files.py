"""GPT-2's tokenizer files: the byte <-> unicode table, and `vocab.json` + `merges.txt` read, written and checked.

GPT-2 shows every byte as one printable character: the printable ASCII and Latin-1 bytes stand for
themselves, the 68 others are shifted to U+0100 and up, so a space is `Ġ` and a newline `Ċ`. A token's bytes
become a string with no spaces and no control characters, which is what both files store.

- `vocab.json`, this project's form: `{"format": "cs336-bpe", "version": 1, "special_tokens": [...],
  "vocab": {"<id>": "<token>"}}`; GPT-2's own form (`{"<token>": id}`) is read too.
- `merges.txt`: an optional `#version` line, then one merge a line in learned order: the two tokens
  separated by one space.

The parsers take text and a `where` (a file name) so that a caller that reads its files its own way (the
grader, with size caps) gets the same checks and messages; a malformed line is named as `FILE:LINE`.

    atomic_write_text("tok/vocab.json", vocab_to_json(vocab, special_tokens=["<|endoftext|>"]))
    vocab, specials = read_vocab("tok/vocab.json")
    merges = read_merges("tok/merges.txt")
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

FORMAT_NAME = "cs336-bpe"
FORMAT_VERSION = 1
VOCAB_FILE = "vocab.json"
MERGES_FILE = "merges.txt"

Vocab = dict[int, bytes]
Merges = list[tuple[bytes, bytes]]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from each byte to the one printable character that stands for it.

    >>> table = bytes_to_unicode()
    >>> table[ord("a")], table[ord(" ")], table[ord("\\n")], table[0], table[255]
    ('a', 'Ġ', 'Ċ', 'Ā', 'ÿ')
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):  # the others, in byte order, from U+0100 on
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return dict(sorted(table.items()))


@lru_cache(maxsize=1)
def unicode_to_bytes() -> dict[str, int]:
    """The inverse of `bytes_to_unicode`: each stand-in character back to its byte."""
    return {c: b for b, c in bytes_to_unicode().items()}


def token_to_text(token: bytes) -> str:
    """A token's bytes in GPT-2's notation.

    >>> token_to_text(b" the\\n")
    'ĠtheĊ'
    """
    table = bytes_to_unicode()
    return "".join([table[b] for b in token])


def text_to_token(text: str, where: str = "token") -> bytes:
    """A token written in GPT-2's notation back to bytes; `ValueError` naming `where` for a foreign character.

    >>> text_to_token("Ġthe")
    b' the'
    """
    inverse = unicode_to_bytes()
    try:
        return bytes([inverse[c] for c in text])
    except KeyError as e:
        raise ValueError(
            f"{where}: token {text!r} contains {e.args[0]!r}, expected only characters of GPT-2's byte-to-unicode table"
        ) from None


# ------------------------------------------------------------------------------------------ vocab.json
def vocab_to_json(vocab: Vocab, special_tokens: Iterable[str] = ()) -> str:
    """`vocab.json` in this project's form (ids in order, one token a line)."""
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "special_tokens": list(special_tokens),
        "vocab": {str(i): token_to_text(vocab[i]) for i in sorted(vocab)},
    }
    return json.dumps(payload, ensure_ascii=False, indent=1) + "\n"


def parse_vocab(text: str, where: str = VOCAB_FILE) -> tuple[Vocab, list[str] | None]:
    """(vocabulary, special tokens) of a `vocab.json` in either form; GPT-2's form names no special tokens (None)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: expected a JSON vocabulary, got unreadable JSON ({err}); truncated?") from None
    if isinstance(data, dict) and data.get("format") == FORMAT_NAME:
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(f"{where}: expected {FORMAT_NAME} version {FORMAT_VERSION}, got {data.get('version')!r}")
        entries, specials = data.get("vocab"), data.get("special_tokens", [])
        if not isinstance(entries, dict) or not isinstance(specials, list) or not all(map(_is_str, specials)):
            raise ValueError(f"{where}: expected 'vocab' (id -> token) and 'special_tokens' (a list of strings)")
        pairs = [(_id(i, where), token) for i, token in entries.items()]
    elif isinstance(data, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
        pairs, specials = [(i, token) for token, i in data.items()], None  # GPT-2: token -> id
    else:
        raise ValueError(f"{where}: expected a {FORMAT_NAME} vocabulary or a GPT-2 vocab.json (token -> id)")
    if not all(_is_str(token) for _, token in pairs):
        raise ValueError(f"{where}: expected every token to be a string")
    return {i: text_to_token(token, where) for i, token in pairs}, specials


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _id(key: str, where: str) -> int:
    try:
        return int(key)
    except ValueError:
        raise ValueError(f"{where}: expected integer token ids, got {key!r}") from None


# ------------------------------------------------------------------------------------------ merges.txt
def merges_to_text(merges: Merges, header: bool = True) -> str:
    """`merges.txt`: the `#version` line (unless `header=False`), then one merge a line.

    >>> print(merges_to_text([(b" ", b"t"), (b" t", b"he")]), end="")
    #version: cs336-bpe 1
    Ġ t
    Ġt he
    """
    lines = [f"#version: {FORMAT_NAME} {FORMAT_VERSION}"] if header else []
    lines += [f"{token_to_text(left)} {token_to_text(right)}" for left, right in merges]
    return "".join(line + "\n" for line in lines)


def parse_merges(text: str, where: str = MERGES_FILE) -> Merges:
    """The merges of a `merges.txt` (ours or GPT-2's); `ValueError` naming `where:LINE` for a malformed line."""
    merges = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{where}:{number}: expected two tokens separated by one space, got {line[:80]!r}")
        merges.append((text_to_token(parts[0], f"{where}:{number}"), text_to_token(parts[1], f"{where}:{number}")))
    return merges


# ------------------------------------------------------------------------------------------ files
def read_vocab(path: str | os.PathLike[str]) -> tuple[Vocab, list[str] | None]:
    """`parse_vocab` of the file at `path`."""
    return parse_vocab(_read_text(Path(path), "vocabulary"), str(path))


def read_merges(path: str | os.PathLike[str]) -> Merges:
    """`parse_merges` of the file at `path`."""
    return parse_merges(_read_text(Path(path), "merges"), str(path))


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {str(path)!r} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: expected UTF-8 text, got an undecodable byte at offset {err.start}") from None


# ------------------------------------------------------------------------------------------ checks
def check_byte_level_bpe(vocab: Vocab, merges: Merges, special_tokens: Iterable[str] = ()) -> None:
    """`ValueError` unless `vocab` and `merges` make a complete byte-level BPE: all 256 bytes, distinct
    tokens, every merge joining two known tokens into a known one, every special token in the vocabulary."""
    if len(merges) > len(vocab):
        raise ValueError(f"expected at most one merge per token, got {len(merges)} merges for {len(vocab)} tokens")
    if len(set(vocab.values())) != len(vocab):
        raise ValueError("the vocabulary holds the same bytes under two ids")
    known = set(vocab.values())
    if missing := [b for b in range(256) if bytes([b]) not in known]:
        raise ValueError(
            f"a byte-level BPE vocabulary needs all 256 bytes; missing {len(missing)} (e.g. {missing[:3]})"
        )
    if bad := [m for m in merges if m[0] not in known or m[1] not in known or m[0] + m[1] not in known]:
        raise ValueError(f"merge {bad[0]!r} uses or makes a token that is not in the vocabulary")
    if absent := [t for t in special_tokens if t.encode("utf-8") not in known]:
        raise ValueError(f"special token(s) {absent} are not in the vocabulary")


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MERGES_FILE",
    "VOCAB_FILE",
    "Merges",
    "Vocab",
    "bytes_to_unicode",
    "check_byte_level_bpe",
    "merges_to_text",
    "parse_merges",
    "parse_vocab",
    "read_merges",
    "read_vocab",
    "text_to_token",
    "token_to_text",
    "unicode_to_bytes",
    "vocab_to_json",
]
