"""Tokenizer benchmarks: BPE training beside HuggingFace `tokenizers`, encoding beside tiktoken.

Rows (all in one run, ours and the peer interleaved):

- training a 10,000-token vocabulary on `../shared/data/pydocs/train.txt` (10.6 MB) against the Rust
  `tokenizers.trainers.BpeTrainer` (byte-level pre-tokenizer, the same special token), goal <= 1x its time;
- training a 500-token vocabulary on a ~130 KB corpus, goal <= 1.5x;
- single-process `Tokenizer.encode` of the first 3 MB against `tiktoken` (one thread) with GPT-2's vocabulary,
  goal >= 0.6x its throughput (a fresh tokenizer per timed run, so our pre-token cache starts cold);
- `cs336 tokenize` of the same 3 MB (`tokenize_files`, engine auto, all cores, writing the `.npy`) against
  tiktoken single-threaded, goal >= 1x.

Without `../shared/data`, the bundled corpus `tests/fixtures/bpe_corpus_medium.txt` (repeated for the
larger figures) and a vocabulary trained on it stand in. `quick=True` uses smaller inputs (a smoke run).
Run alone with `python -m bench.bench_tokenizer [--quick]`.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO_ROOT, SHARED_DATA, format_table, make_row, median, time_interleaved, tokenize
from cs336_basics.bpe_trainer import train_bpe
from cs336_basics.pretokenize import GPT2_PATTERN, last_safe_cut
from cs336_basics.tokenizer import Tokenizer
from cs336_lab.tokenizer_files import save_tokenizer

ENDOFTEXT = "<|endoftext|>"
PYDOCS = SHARED_DATA / "pydocs" / "train.txt"
GPT2 = SHARED_DATA / "gpt2"
BUNDLED = REPO_ROOT / "tests" / "fixtures" / "bpe_corpus_medium.txt"


def _hf_train(path: Path, vocab_size: int) -> Any:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    tokenizer = HFTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[ENDOFTEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train([str(path)], trainer)
    return tokenizer


def _tiktoken_for(tokenizer: Tokenizer) -> tuple[Any, np.ndarray]:
    """tiktoken with the same tokens (rank = merge order, bytes first, the same regex and special token),
    and the table from its ids (its ranks) to ours."""
    import tiktoken

    ranks = {bytes([b]): b for b in range(256)}
    for left, right in tokenizer.merges:
        ranks.setdefault(left + right, len(ranks))
    encoding = tiktoken.Encoding(
        "bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={ENDOFTEXT: len(ranks)}
    )
    rank_to_id = np.zeros(len(ranks) + 1, dtype=np.int64)
    for token, rank in ranks.items():
        rank_to_id[rank] = tokenizer.token_to_id(token)
    rank_to_id[len(ranks)] = tokenizer.token_to_id(ENDOFTEXT)
    return encoding, rank_to_id


def _cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished child processes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _timed(fns: dict[str, Any], repeats: int, warmup: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall seconds (interleaved runs) and median CPU seconds of each function.

    On a shared machine the wall-clock ratio moves with the load; CPU seconds say how much work each side
    did, which the load does not change (but they cannot show a parallel speed-up).
    """
    cpu: dict[str, list[float]] = {name: [] for name in fns}

    def with_cpu(name: str) -> Any:
        def call() -> None:
            start = _cpu_seconds()
            fns[name]()
            cpu[name].append(_cpu_seconds() - start)

        return call

    wall = time_interleaved({name: with_cpu(name) for name in fns}, repeats=repeats, warmup=warmup)
    return {k: median(v) for k, v in wall.items()}, {k: median(v[warmup:]) for k, v in cpu.items()}


def _prefix_file(source: Path, directory: Path, num_bytes: int, name: str) -> Path:
    """The first ~`num_bytes` of `source` (cut at a safe place), repeated if `source` is shorter."""
    text = source.read_text(encoding="utf-8")
    while len(text.encode("utf-8")) < num_bytes:
        text += ENDOFTEXT + text
    text = text.encode("utf-8")[:num_bytes].decode("utf-8", errors="ignore")
    cut = last_safe_cut(text)
    path = directory / name
    path.write_text(text[: cut if cut > 0 else len(text)], encoding="utf-8")
    return path


def _training_row(path: Path, vocab_size: int, goal: str, repeats: int, label: str) -> dict[str, Any]:
    size_mb = path.stat().st_size / 1e6
    wall, cpu = _timed(
        {"ours": lambda: train_bpe(path, vocab_size, [ENDOFTEXT]), "hf": lambda: _hf_train(path, vocab_size)},
        repeats=repeats,
        warmup=0,
    )
    return make_row(
        f"train BPE, {vocab_size} vocab, {label} ({size_mb:.2f} MB)",
        "HF tokenizers BpeTrainer (Rust, byte-level)",
        wall["ours"],
        wall["hf"],
        "s",
        goal=goal,
        notes=f"median of {repeats}; CPU s ours {cpu['ours']:.2f} vs HF {cpu['hf']:.2f}; {_cores()} cores",
    )


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _load_encoder() -> tuple[Tokenizer, str]:
    if (GPT2 / "gpt2_vocab.json").exists():
        tok = Tokenizer.from_files(GPT2 / "gpt2_vocab.json", GPT2 / "gpt2_merges.txt", [ENDOFTEXT])
        return tok, "GPT-2 vocabulary (50,257)"
    vocab, merges = train_bpe(BUNDLED, 2000, [ENDOFTEXT])
    return Tokenizer(vocab, merges, [ENDOFTEXT]), "2,000-token vocabulary trained on the bundled corpus"


def run(quick: bool = False) -> list[dict[str, Any]]:
    have_data = PYDOCS.exists()
    big_source = PYDOCS if have_data else BUNDLED
    big_label = "pydocs train" if have_data else "bundled corpus, repeated"
    with tempfile.TemporaryDirectory(prefix="bench_tokenizer_") as tmp:
        workdir = Path(tmp)
        rows = _training_rows(quick, have_data, big_source, big_label, workdir)
        tokenizer, vocab_label = _load_encoder()
        encoding, rank_to_id = _tiktoken_for(tokenizer)
        sample_path = _prefix_file(big_source, workdir, 300_000 if quick else 3_000_000, "sample.txt")
        rows.append(_encode_row(tokenizer, vocab_label, encoding, sample_path, repeats=3 if not quick else 2))
        rows.append(_encode_file_row(tokenizer, encoding, rank_to_id, sample_path, workdir / "ids.npy"))
    return rows


def _training_rows(
    quick: bool, have_data: bool, big_source: Path, big_label: str, workdir: Path
) -> list[dict[str, Any]]:
    if quick:
        big = _prefix_file(big_source, workdir, 1_000_000, "big.txt")
    else:
        big = PYDOCS if have_data else _prefix_file(BUNDLED, workdir, 10_000_000, "big.txt")
    small = _prefix_file(big_source, workdir, 130_000, "small.txt")
    return [
        _training_row(big, 10_000 if not quick else 2_000, "<= 1", 1, big_label),
        _training_row(small, 500, "<= 1.5", 5 if not quick else 2, big_label + " prefix"),
    ]


def _encode_row(tokenizer: Any, vocab_label: str, encoding: Any, sample_path: Path, repeats: int) -> dict[str, Any]:
    sample = sample_path.read_bytes().decode("utf-8")  # no newline translation: the bytes encode_file sees
    # A fresh tokenizer for each timed run (built beforehand): the pre-token cache starts cold.
    fresh = [Tokenizer(tokenizer.vocab, tokenizer.merges, [ENDOFTEXT]) for _ in range(repeats + 1)]
    ours_ids: list[int] = []

    def ours_encode() -> None:
        ours_ids[:] = fresh.pop().encode(sample)

    times, cpu = _timed(
        {"ours": ours_encode, "tiktoken": lambda: encoding.encode(sample, allowed_special="all")},
        repeats=repeats,
        warmup=1,
    )
    n_bytes = len(sample.encode("utf-8"))
    warm = tokenizer.encode(sample)  # fills the cache
    start = time.perf_counter()
    tokenizer.encode(sample)
    warm_rate = n_bytes / (time.perf_counter() - start)
    assert warm == ours_ids, "cold and warm encodings differ"
    return make_row(
        f"encode, one process, {vocab_label} ({n_bytes / 1e6:.1f} MB)",
        "tiktoken, one thread",
        n_bytes / times["ours"],
        n_bytes / times["tiktoken"],
        "bytes/s",
        goal=">= 0.6",
        notes=f"fresh tokenizer (cold pre-token cache); warm cache: {warm_rate / 1e6:.2f} MB/s; "
        f"CPU s ours {cpu['ours']:.2f} vs tiktoken {cpu['tiktoken']:.2f}",
    )


def _encode_file_row(
    tokenizer: Any, encoding: Any, rank_to_id: np.ndarray, sample_path: Path, out: Path
) -> dict[str, Any]:
    sample = sample_path.read_bytes().decode("utf-8")
    n_bytes = len(sample.encode("utf-8"))
    tokenizer_dir = out.parent / "tokenizer"
    save_tokenizer(tokenizer.vocab, tokenizer.merges, tokenizer_dir, special_tokens=[ENDOFTEXT])
    out_dir, engine = out.parent / "tokens", []
    expected: list[int] = []
    times, cpu = _timed(
        {
            "ours": lambda: engine.append(tokenize(tokenizer_dir, sample_path, out_dir)[1]),
            "tiktoken": lambda: expected.extend(encoding.encode(sample, allowed_special="all")),
        },
        repeats=1,
        warmup=0,
    )
    # tiktoken's ids are its ranks: map them to our ids before comparing.
    ids = np.load(out_dir / f"{sample_path.stem}.npy")
    same = np.array_equal(ids, rank_to_id[np.asarray(expected, dtype=np.int64)])
    return make_row(
        f"cs336 tokenize a file to .npy, {_cores()} processes ({n_bytes / 1e6:.1f} MB)",
        "tiktoken, one thread, in memory",
        n_bytes / times["ours"],
        n_bytes / times["tiktoken"],
        "bytes/s",
        goal=">= 1",
        notes=f"ours: `cs336 tokenize` (reads the tokenizer files and the text, writes the .npy; {engine[-1]}); "
        f"CPU s ours {cpu['ours']:.2f} (all processes) vs tiktoken {cpu['tiktoken']:.2f}"
        + f"; ids identical to tiktoken's: {'yes' if same else 'NO'}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs (a smoke run)")
    args = parser.parse_args()
    print(format_table(run(quick=args.quick)))


if __name__ == "__main__":
    main()
