"""One measured job of the scale benchmarks, run in a fresh process so that its peak memory is its own.

    python -m bench.scale_job bpe-ours CORPUS VOCAB_SIZE [SAVE.pkl]
    python -m bench.scale_job bpe-hf CORPUS VOCAB_SIZE
    python -m bench.scale_job encode-ours CORPUS TOKENIZER.pkl OUT.npy   # `cs336 tokenize` (writes OUT's folder)
    python -m bench.scale_job encode-tiktoken CORPUS TOKENIZER.pkl

Prints one JSON line: the job's own wall seconds (imports excluded) and what it produced. `bench.bench_scale`
samples the resident memory of the whole process tree (workers included) while it runs.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

EOT = "<|endoftext|>"
_STREAM_BYTES = 16 << 20


def _bpe_ours(corpus: str, vocab_size: str, save: str | None = None) -> dict[str, Any]:
    from cs336_basics.bpe_trainer import train_bpe

    start = time.perf_counter()
    vocab, merges = train_bpe(corpus, int(vocab_size), [EOT])
    seconds = time.perf_counter() - start
    if save:
        Path(save).write_bytes(pickle.dumps((vocab, merges)))
    return {"seconds": seconds, "vocab": len(vocab)}


def _bpe_hf(corpus: str, vocab_size: str) -> dict[str, Any]:
    from bench.bench_tokenizer import _hf_train

    start = time.perf_counter()
    tokenizer = _hf_train(Path(corpus), int(vocab_size))
    return {"seconds": time.perf_counter() - start, "vocab": tokenizer.get_vocab_size()}


def _load(tokenizer_pkl: str) -> Any:
    from cs336_basics.tokenizer import Tokenizer

    vocab, merges = pickle.loads(Path(tokenizer_pkl).read_bytes())
    return Tokenizer(vocab, merges, [EOT])


def _encode_ours(corpus: str, tokenizer_pkl: str, out: str) -> dict[str, Any]:
    """`cs336 tokenize CORPUS` into the folder of OUT (the tokenizer saved as `cs336 train-bpe` does, untimed)."""
    from cs336_lab.tokenizer_files import save_tokenizer

    vocab, merges = pickle.loads(Path(tokenizer_pkl).read_bytes())
    tokenizer_dir = Path(out).parent / "tokenizer"
    save_tokenizer(vocab, merges, tokenizer_dir, special_tokens=[EOT])
    start = time.perf_counter()
    from bench.common import tokenize

    tokens, engine = tokenize(tokenizer_dir, corpus, Path(out).parent)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "engine": engine}


def _encode_tiktoken(corpus: str, tokenizer_pkl: str) -> dict[str, Any]:
    """tiktoken (one thread) over the file in ~16 MB pieces cut after a document separator (the whole file's
    ids as one Python list would need ~28 bytes per token: gigabytes at these sizes)."""
    from bench.bench_tokenizer import _tiktoken_for

    encoding, _ = _tiktoken_for(_load(tokenizer_pkl))
    start = time.perf_counter()
    tokens, rest = 0, b""
    with open(corpus, "rb") as f:
        while block := f.read(_STREAM_BYTES):
            block = rest + block
            cut = block.rfind(EOT.encode())
            cut = len(block) if cut < 0 else cut + len(EOT)
            tokens += len(encoding.encode(block[:cut].decode("utf-8"), allowed_special="all"))
            rest = block[cut:]
    if rest:
        tokens += len(encoding.encode(rest.decode("utf-8"), allowed_special="all"))
    return {"seconds": time.perf_counter() - start, "tokens": tokens}


JOBS = {"bpe-ours": _bpe_ours, "bpe-hf": _bpe_hf, "encode-ours": _encode_ours, "encode-tiktoken": _encode_tiktoken}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in JOBS:
        print(f"usage: python -m bench.scale_job {{{','.join(JOBS)}}} ARGS...", file=sys.stderr)
        return 2
    print(json.dumps(JOBS[argv[0]](*argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
