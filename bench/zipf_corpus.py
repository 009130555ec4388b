"""A TinyStories-sized corpus made offline: documents of Zipf-distributed pseudo-words, for the scale benchmarks.

    python -m bench.zipf_corpus OUT.txt --mb 256

Why not the synthetic stories of `cs336_lab.corpus`: they are assembled from fixed word lists (a few hundred
words), so their distinct pre-tokens stop growing after the first megabyte and a scale benchmark on them never
exercises what grows with real text: the pre-token table (memory) and the merge phase. Real corpora follow
Zipf's law (the r-th most frequent word has frequency ∝ 1/r^s, s ≈ 1.1) and hence Heaps' law (distinct words
grow like size^β, β ≈ 0.5-0.7). This generator samples words from a Zipf law over a fixed lexicon of
pronounceable pseudo-words (syllables drawn at random, 1-4 of them, so lengths and byte pairs look like
English words), with sentence capitals, commas, full stops and documents of 100-400 words separated by
`\\n<|endoftext|>\\n` like TinyStories. Deterministic: the same seed gives the same bytes.

NOTE: the lexicon (`LEXICON_SIZE` = 50,000 words, our assumption for the order of magnitude of TinyStories'
distinct words: simple vocabulary plus names; not measured, the real data set is not on this machine) caps
the distinct pre-tokens, as a real language's vocabulary does. By 0.25 GB nearly all of it has appeared, so
at larger sizes the pre-token table stays flat while the text grows: exactly the regime where streaming
pre-token counting must keep memory flat.
"""

from __future__ import annotations

import argparse
import functools
import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from cs336_common.atomic import atomic_open

EOT = "<|endoftext|>"
LEXICON_SIZE = 50_000
ZIPF_EXPONENT = 1.1
_ONSETS = (
    "",
    "b",
    "c",
    "d",
    "f",
    "g",
    "h",
    "j",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "t",
    "v",
    "w",
    "y",
    "z",
    "br",
    "ch",
    "cl",
    "dr",
    "fl",
    "gr",
    "pl",
    "sh",
    "st",
    "th",
    "tr",
    "wh",
)
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "oo", "ou", "y")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck", "ll")


@functools.lru_cache(maxsize=4)
def make_lexicon(size: int = LEXICON_SIZE, seed: int = 0) -> np.ndarray:
    """`size` distinct pseudo-words, most frequent first (shorter words get the lower ranks, as in English).

    Cached: do not modify the returned array.
    """
    rng = np.random.default_rng(seed)
    words: dict[str, None] = {}
    while len(words) < size:
        n = 4 * (size - len(words)) // 3 + 16
        syllables = rng.choice([1, 2, 3, 4], size=n, p=[0.35, 0.35, 0.2, 0.1])
        onset = rng.integers(0, len(_ONSETS), size=(n, 4))
        nucleus = rng.integers(0, len(_NUCLEI), size=(n, 4))
        coda = rng.integers(0, len(_CODAS), size=(n, 4))
        for i in range(n):
            word = "".join(
                _ONSETS[onset[i, j]] + _NUCLEI[nucleus[i, j]] + _CODAS[coda[i, j]] for j in range(syllables[i])
            )
            words.setdefault(word)
            if len(words) == size:
                break
    ordered = sorted(words, key=len)  # stable: random order within a length
    return np.array(ordered, dtype=object)


def _zipf_cdf(size: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _document(rng: np.random.Generator, lexicon: np.ndarray, cdf: np.ndarray) -> str:
    """100-400 words in sentences of 4-16 words: capitalised, commas now and then, a full stop at the end."""
    n_words = int(rng.integers(100, 401))
    words = lexicon[np.searchsorted(cdf, rng.random(n_words))].tolist()
    sentences, i = [], 0
    while i < n_words:
        length = int(rng.integers(4, 17))
        sentence = words[i : i + length]
        if len(sentence) > 5 and rng.random() < 0.4:
            sentence[2] += ","
        sentence[0] = sentence[0].capitalize()
        sentences.append(" ".join(sentence) + ".")
        i += length
    return " ".join(sentences)


def write_zipf_corpus(path: str | os.PathLike[str], num_bytes: int, *, seed: int = 0) -> Path:
    """Write about `num_bytes` of documents (whole documents, so a little more) to `path`, atomically."""
    return write_zipf_corpora({Path(path): num_bytes}, seed=seed)[0]


def write_zipf_corpora(sizes: dict[Path, int], *, seed: int = 0) -> list[Path]:
    """Several sizes of the same corpus in one pass: each file is byte for byte what `write_zipf_corpus(path,
    num_bytes, seed=seed)` writes (the stream is the same; a smaller file is a prefix of a larger one), but
    the documents are generated once, for the largest. Returns the paths in the order given."""
    if not sizes:
        raise ValueError("no corpus to write: expected at least one path and size")
    bad = {str(p): n for p, n in sizes.items() if n <= 0}
    if bad:
        raise ValueError(f"num_bytes must be positive, got {bad}")
    lexicon = make_lexicon(seed=seed)
    cdf = _zipf_cdf(len(lexicon), ZIPF_EXPONENT)
    rng = np.random.default_rng(seed + 1)
    written = 0
    with ExitStack() as stack:
        files = [
            (stack.enter_context(atomic_open(p, "w", encoding="utf-8", newline="\n")), n) for p, n in sizes.items()
        ]
        while written < max(sizes.values()):
            batch = "".join(_document(rng, lexicon, cdf) + f"\n{EOT}\n" for _ in range(200))
            for f, num_bytes in files:
                if written < num_bytes:
                    f.write(batch)
            written += len(batch)  # ASCII: characters = bytes
    return list(sizes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.zipf_corpus", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--mb", type=float, required=True, help="size in MB (10^6 bytes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_zipf_corpus(args.out, int(args.mb * 1e6), seed=args.seed)


if __name__ == "__main__":
    main()
