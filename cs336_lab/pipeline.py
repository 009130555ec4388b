"""From text to token arrays, the first two steps of the pipeline: ``cs336 train-bpe`` and ``cs336 tokenize``.

    cs336 train-bpe data/train.txt --vocab-size 10000 --out data/tokenizer     # vocab.json + merges.txt
    cs336 tokenize --tokenizer data/tokenizer --out-dir data/tokens data/train.txt data/valid.txt

Training is the package's `train_bpe` and encoding its `Tokenizer` (through `cs336_lab/assignment.py`); the tokenizer
files are the tools' format (`tokenizer_files.py`) and the token arrays `.npy` files (`parallel_encode.py`).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# `--engine auto` encodes inputs smaller than this with our encoder: proving tiktoken's ids equal (the vocabulary's
# checks and a sample encoded both ways, about a second for a 50,000-token vocabulary) would cost more than it saves.
ENGINE_MIN_BYTES = 16 << 20
# The sample on which tiktoken's ids are proven equal to ours before it encodes the inputs.
SAMPLE_BYTES = 1 << 20

EOT = "<|endoftext|>"


def train_tokenizer(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    vocab_size: int,
    special_tokens: Sequence[str] = (EOT,),
    num_workers: int | None = None,
    show_progress: bool = False,
) -> tuple[int, int]:
    """Train a BPE tokenizer on a text file and save it in ``out_dir``; returns (vocab size, merges)."""
    from cs336_common.atomic import prepare_directory
    from cs336_lab.assignment import Assignment
    from cs336_lab.progress import on_terminal
    from cs336_lab.tokenizer_files import save_tokenizer

    _check_text_file(input_path, "training text")
    if Path(input_path).stat().st_size == 0:
        raise ValueError(f"training text {input_path}: expected some text to learn merges from, got an empty file")
    if num_workers is not None and num_workers < 1:
        raise ValueError(f"--num-workers must be >= 1 (or left out: all cores), got {num_workers}")
    prepare_directory(out_dir, "--out")
    size_mb, start = Path(input_path).stat().st_size / 1e6, time.perf_counter()
    logger.info("training a %d-token BPE tokenizer on %s (%.1f MB)", vocab_size, input_path, size_mb)
    bars = show_progress and on_terminal()  # the package's bars redraw lines: a redirected log gets these lines
    vocab, merges = Assignment.load().run_train_bpe(
        str(input_path), vocab_size, list(special_tokens), num_workers=num_workers, show_progress=bars
    )
    save_tokenizer(vocab, merges, out_dir, special_tokens=tuple(special_tokens))
    elapsed = time.perf_counter() - start
    logger.info("tokenizer: %d tokens, %d merges in %.1f s -> %s", len(vocab), len(merges), elapsed, out_dir)
    if len(vocab) < vocab_size:
        logger.warning(
            "asked for %d tokens, got %d: the text has no more pairs to merge (a larger corpus gives more)",
            vocab_size,
            len(vocab),
        )
    return len(vocab), len(merges)


def tokenize_files(
    tokenizer_dir: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    num_workers: int | None = None,
    show_progress: bool = False,
    overwrite: bool = False,
    engine: str = "auto",
) -> dict[Path, int]:
    """Encode each text file to ``out_dir/<stem>.npy``; returns {output: number of tokens}.

    Refused before any work: two inputs with one stem (``a/train.txt``, ``b/train.txt``: the second would replace
    the first), and, unless `overwrite`, an output that already exists. `engine` (see `tiktoken_engine.py`):
    "auto" encodes with tiktoken where it is proven to give the tokenizer's ids and with the tokenizer itself
    otherwise (one log line says why), "tiktoken" refuses (`ValueError`) where it does not apply, "ours" is
    the tokenizer alone.
    """
    from cs336_common.atomic import prepare_directory
    from cs336_lab.assignment import Assignment
    from cs336_lab.parallel_encode import encode_file
    from cs336_lab.tokenizer_files import read_tokenizer

    for path in inputs:
        _check_text_file(path, "input text")
    outputs = _token_files(inputs, Path(out_dir), overwrite=overwrite)
    vocab, merges, specials = read_tokenizer(tokenizer_dir)
    tokenizer = Assignment.load().make_tokenizer(vocab, merges, specials)
    fast = _choose_engine(engine, tokenizer, (vocab, merges, specials), inputs)
    prepare_directory(out_dir, "--out-dir")
    counts = {}
    for path, output in zip(inputs, outputs):
        counts[output] = encode_file(
            path, output, tokenizer, num_workers=num_workers, show_progress=show_progress, engine=fast
        )
        logger.info("%s: %d tokens -> %s", path, counts[output], output)
    return counts


def _choose_engine(choice: str, tokenizer: Any, files: tuple[Any, Any, list[str]], inputs: Sequence[str | Path]) -> Any:
    """tiktoken's `Encoding` where it applies (proven on the inputs' first megabyte), else None (our encoder)."""
    from cs336_lab.assignment import Assignment
    from cs336_lab.tiktoken_engine import ENGINES, EngineUnavailable, choose_engine

    if choice not in ENGINES:
        raise ValueError(f"--engine must be one of {', '.join(ENGINES)}, got {choice!r}")
    if choice != "ours" and not Assignment.load().has_chunking:
        why = "the package has no chunking extras (find_chunk_boundaries, read_chunk_text, worker_context)"
        if choice == "tiktoken":
            raise EngineUnavailable(f"--engine tiktoken does not apply: {why}")
        logger.info("tokenize engine: ours (the from-scratch encoder), as tiktoken would not do: %s", why)
        return None
    total = sum(Path(path).stat().st_size for path in inputs)
    if choice == "auto" and total < ENGINE_MIN_BYTES:
        logger.info("tokenize engine: ours (%.1f MB of text: tiktoken's set-up would not pay)", total / 1e6)
        return None
    return choose_engine(choice, tokenizer, *files, _sample(inputs, SAMPLE_BYTES))


def _sample(inputs: Sequence[str | Path], num_bytes: int) -> str:
    """The first `num_bytes` of the inputs together (an equal share of each), as text."""
    parts = []
    for path in inputs:
        with open(path, "rb") as f:
            parts.append(f.read(max(num_bytes // len(inputs), 1)).decode("utf-8", errors="ignore"))
    return "".join(parts)


def _token_files(inputs: Sequence[str | Path], out_dir: Path, *, overwrite: bool) -> list[Path]:
    """``out_dir/<stem>.npy`` for each input; `FileExistsError` for a shared stem or (unless `overwrite`) an
    existing file."""
    outputs = [out_dir / (Path(path).stem + ".npy") for path in inputs]
    for output in dict.fromkeys(outputs):
        sources = [str(path) for path, other in zip(inputs, outputs) if other == output]
        if len(sources) > 1:
            raise FileExistsError(
                f"expected input files with distinct names, got {' and '.join(sources)}, which "
                f"would all be written to {output}; tokenize them into separate --out-dir folders"
            )
    existing = [str(output) for output in outputs if output.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"--out-dir {out_dir} already holds {', '.join(existing)}: pass --overwrite to replace "
            "them, or choose another --out-dir"
        )
    return outputs


def _check_text_file(path: str | Path, what: str) -> None:
    """`FileNotFoundError` naming what was expected and what is there instead."""
    if not Path(path).is_file():
        found = "a directory" if Path(path).is_dir() else "nothing"
        raise FileNotFoundError(f"{what} {path}: expected a text file, found {found}")


# -------------------------------------------------------------------------------------------------- CLI


def _run_train_bpe(args: argparse.Namespace) -> int:
    train_tokenizer(
        args.input,
        args.out,
        vocab_size=args.vocab_size,
        special_tokens=args.special_token or [EOT],
        num_workers=args.num_workers,
        show_progress=not args.no_progress,
    )
    return 0


def _run_tokenize(args: argparse.Namespace) -> int:
    tokenize_files(
        args.tokenizer,
        args.inputs,
        args.out_dir,
        num_workers=args.num_workers,
        show_progress=not args.no_progress,
        overwrite=args.overwrite,
        engine=args.engine,
    )
    return 0


def add_subcommand(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train-bpe`` and ``tokenize``."""
    p = subparsers.add_parser("train-bpe", help="train a byte-level BPE tokenizer on a text file")
    p.add_argument("input", type=Path, help="training text (documents separated by <|endoftext|>)")
    p.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, bytes and special tokens included")
    p.add_argument("--out", type=Path, required=True, help="directory for the tokenizer files")
    p.add_argument(
        "--special-token", action="append", default=None, help=f"a special token; repeat for several (default: {EOT})"
    )
    p.add_argument("--num-workers", type=int, default=None, help="processes for pre-tokenization (default: all cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_train_bpe)
    _add_tokenize(subparsers)


def _add_tokenize(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tokenize", help="encode text files to .npy token arrays")
    p.add_argument("inputs", type=Path, nargs="+", help="text files; each becomes OUT_DIR/<stem>.npy")
    p.add_argument("--tokenizer", type=Path, required=True, help="a directory written by `cs336 train-bpe`")
    p.add_argument("--out-dir", type=Path, required=True, help="directory for the .npy files")
    p.add_argument("--overwrite", action="store_true", help="replace .npy files that already exist in OUT_DIR")
    p.add_argument("--num-workers", type=int, default=None, help="encoding processes (default: all cores)")
    p.add_argument(
        "--engine",
        choices=("auto", "tiktoken", "ours"),
        default="auto",
        help="auto (default): tiktoken where it is proven to give the tokenizer's ids (from 16 MB of text), else "
        "ours; tiktoken: refuse where it does not apply; ours: the from-scratch tokenizer alone",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run_tokenize)
