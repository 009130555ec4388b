"""Oracle for the tokenizer area: an obviously correct BPE trainer, tiktoken-backed encoders, corpora.

Nothing here imports `cs336_basics`. The trainer recounts every pair on every merge (slow, but each step
can be checked by eye); encoding is delegated to tiktoken, built from a vocabulary and its merges. The
corpora are generated from fixed seeds, so `make snapshots` writes the same bytes every time.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path

import regex

from cs336_common.gpt2_files import merges_to_text
from cs336_grading.expected.bpe import (  # noqa: F401  (re-exported for make_snapshots and the bench)
    GPT2_PATTERN,
    naive_train_bpe,
    tiktoken_encoding,
)
from tests.cases import ENDOFTEXT, SHARED_DATA  # noqa: F401


def run_train_bpe(input_path: str | os.PathLike, vocab_size: int, special_tokens: list[str], **kwargs):
    """Oracle adapter: the naive trainer on the file's text."""
    text = Path(input_path).read_bytes().decode("utf-8")  # no newline translation: the file's own bytes
    return naive_train_bpe(text, vocab_size, special_tokens)


class TiktokenTokenizer:
    """The oracle's tokenizer: tiktoken for encoding, a table lookup for decoding."""

    def __init__(self, vocab: dict[int, bytes], merges: list[tuple[bytes, bytes]], special_tokens=None) -> None:
        self.vocab = dict(vocab)
        self.special_tokens = list(dict.fromkeys(special_tokens or ()))
        known = set(self.vocab.values())
        for token in self.special_tokens:
            if token.encode("utf-8") not in known:
                self.vocab[max(self.vocab) + 1] = token.encode("utf-8")
        self.encoding, to_vocab = tiktoken_encoding(self.vocab, merges, self.special_tokens)
        self._to_vocab = [to_vocab[r] for r in range(len(to_vocab))]

    def encode(self, text: str) -> list[int]:
        table = self._to_vocab
        return [table[r] for r in self.encoding.encode(text, allowed_special="all", disallowed_special=())]

    def encode_iterable(self, iterable: Iterable[str]) -> Iterator[int]:
        # Hold text back until the last "non-space then space": no pre-token spans it and no special token
        # does either (we refuse special tokens containing whitespace, which the tests never use).
        assert not any(regex.search(r"\s", t) for t in self.special_tokens)
        buffer = ""
        for chunk in iterable:
            buffer += chunk
            if len(buffer) < 4096:
                continue
            match = regex.search(r"(?r)\S\s", buffer)
            if match is not None:
                yield from self.encode(buffer[: match.start() + 1])
                buffer = buffer[match.start() + 1 :]
        yield from self.encode(buffer)

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")


def get_tokenizer(vocab, merges, special_tokens=None) -> TiktokenTokenizer:
    """Oracle adapter."""
    return TiktokenTokenizer(vocab, merges, special_tokens)


# ------------------------------------------------------------------------------------------ corpora
_WORDS = (
    "the a of and to in is was he she it they we you said once upon time little big happy sad dog cat "
    "bird tree house river mountain school friend mother father played jumped ran looked saw found "
    "wanted loved happily quickly slowly very really lower lowest newer newest widest don't can't "
    "it's I'm we're they've she'll you'd café naïve résumé Zürich façade Ελλάδα Москва 東京 北京 "
    "こんにちは 안녕하세요 😀 🚀 👍🏽 ∑ π √2 — … “quoted” «guillemets»"
).split()
_CODE = [
    "def add(x, y):\n    return x + y\n",
    "for i in range(10):\n\tprint(i ** 2)  # squares\n",
    "if (a && b) { return -1; }\n",
    "class Node:\n    def __init__(self):\n        self.next = None\n\n\n",
    "x = [1, 2, 3]  ;  y = {'k': 3.14e-10}\n",
    "    \n   \n\n",
]


def _generated_text(seed: int, num_docs: int, words_per_doc: tuple[int, int], separator: str) -> str:
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        parts = []
        for _ in range(rng.randint(*words_per_doc)):
            r = rng.random()
            if r < 0.04:
                parts.append(rng.choice(_CODE))
            elif r < 0.08:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 7))))
            elif r < 0.12:
                parts.append(rng.choice([".", ",", "!", "?", "\n", "\n\n", "  ", " - ", ": "]))
            else:
                word = rng.choice(_WORDS)
                parts.append(word.capitalize() if rng.random() < 0.1 else word)
        docs.append(" ".join(parts).strip())
    return separator.join(docs)


def corpus_small() -> bytes:
    """~9 KB of mixed text, code and unicode, documents separated by `<|endoftext|>`."""
    return (_generated_text(seed=1, num_docs=12, words_per_doc=(60, 160), separator=ENDOFTEXT) + "\n").encode()


def corpus_medium() -> bytes:
    """~130 KB of the same kind of text (the speed benchmark's small corpus when no data is present)."""
    return (_generated_text(seed=2, num_docs=90, words_per_doc=(100, 300), separator=ENDOFTEXT) + "\n").encode()


def small_merges() -> bytes:
    """The naive trainer's 400 merges on `bpe_corpus_small.txt` (with `<|endoftext|>`)."""
    _, merges = naive_train_bpe(corpus_small().decode("utf-8"), 256 + 400 + 1, [ENDOFTEXT])
    return merges_to_text(merges, header=False).encode("utf-8")


FIXTURE_FILES = {
    "bpe_corpus_small.txt": corpus_small,
    "bpe_corpus_medium.txt": corpus_medium,
    "bpe_small_merges.txt": small_merges,
}
