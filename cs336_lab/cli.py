"""The ``cs336`` command: one entry point, one sub-command per step of the pipeline.

    cs336 demo                                  # everything below, on the bundled synthetic corpus (CPU, < 5 min)
    cs336 make-corpus --out data/synthetic      # the synthetic children's stories
    cs336 download tinystories                  # or: owt
    cs336 train-bpe data/synthetic/train.txt --vocab-size 2048 --out runs/tok
    cs336 tokenize --tokenizer runs/tok data/synthetic/train.txt data/synthetic/valid.txt --out-dir runs/tok
    cs336 train --config configs/demo.toml      # every option also has a flag: cs336 train --help
    cs336 generate --checkpoint runs/demo/model/ckpt_latest.pt --prompt "Once upon a time"

Each module of ``COMMAND_MODULES`` registers its sub-commands with ``add_subcommand(subparsers)``, each
handler ``func(args) -> int`` returns the exit code. Exit codes: 0 success, 1 failure (e.g. the network, a
diverged run), 2 usage error or bad input, reported in one line without a traceback (``-v`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cs336_lab import __version__

logger = logging.getLogger("cs336_lab")

# Modules that provide sub-commands, in the order of `cs336 --help`.
COMMAND_MODULES: tuple[str, ...] = (
    "cs336_lab.demo",  # demo
    "cs336_lab.pipeline",  # train-bpe, tokenize
    "cs336_lab.corpus",  # make-corpus
    "cs336_lab.download",  # download
    "cs336_lab.train",  # train
    "cs336_lab.generate",  # generate
    "cs336_lab.evaluate",  # evaluate
    "cs336_lab.accounting",
    "cs336_lab.compare",  # compare
    "cs336_lab.sweep",  # sweep
    "cs336_grading.cli",  # the course staff's wing: grade (one or a batch), handout, autograder, similarity
    "cs336_grading.staff.handout",
    "cs336_grading.staff.autograder",
    "cs336_grading.staff.similarity_report",  # similarity
)
# Loggers whose level -v/-q set: the tools, the grading wing and the assignment.
LOGGERS = ("cs336_lab", "cs336_grading", "cs336_basics")

# Bad input: exit code 2 with one line. The OS errors of a path of the wrong kind are the user's too.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


class _Formatter(logging.Formatter):
    """``12:03:04 message`` for info, ``12:03:04 error: message`` for warnings and errors."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        record.message = record.getMessage()
        text = f"{self.formatTime(record, '%H:%M:%S')} {prefix}{record.message}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(verbosity: int = 0) -> None:
    """Log to stderr: ``verbosity`` -1 = warnings only, 0 = info, 1 = debug."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_cs336", False)]:
        root.removeHandler(old)
    handler._cs336 = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # third-party libraries stay quiet
    for name in LOGGERS:
        logging.getLogger(name).setLevel(level)


def _add_verbosity(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    # Sub-commands accept the flags too (`cs336 demo -v`); there they must not overwrite the top-level value.
    default = 0 if top_level else argparse.SUPPRESS
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=1, default=default,
                       help="debug logging, and tracebacks for errors")
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=-1, default=default,
                       help="warnings and errors only")


def build_parser() -> argparse.ArgumentParser:
    """The full ``cs336`` parser, with the sub-commands of every available module of ``COMMAND_MODULES``."""
    parser = argparse.ArgumentParser(
        prog="cs336", description="Train a Transformer language model from scratch: tokenizer, model, samples.",
        epilog="Run `cs336 COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_verbosity(parser, top_level=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_subcommand(subparsers)
    for sub in subparsers.choices.values():
        try:
            _add_verbosity(sub, top_level=False)
        except argparse.ArgumentError:  # the sub-command defines -v/-q itself
            pass
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the sub-command, return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on usage errors and 0 on --help/--version
        return int(exit_.code or 0)
    configure_logging(args.verbosity)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        logger.error("%s", err, exc_info=args.verbosity > 0)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except OSError as err:  # network and disk failures: not the user's input
        logger.error("%s", err, exc_info=args.verbosity > 0)
        return 1


if __name__ == "__main__":
    sys.exit(main())
