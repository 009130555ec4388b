"""The ``cs336`` command: one entry point, one sub-command per step of the pipeline.

    cs336 demo                                  # everything below, on the bundled synthetic corpus (CPU, < 5 min)
    cs336 make-corpus --out data/synthetic      # the synthetic children's stories
    cs336 download tinystories                  # or: owt
    cs336 train-bpe data/synthetic/train.txt --vocab-size 2048 --out runs/tok
    cs336 tokenize --tokenizer runs/tok data/synthetic/train.txt data/synthetic/valid.txt --out-dir runs/tok
    cs336 train --config configs/demo.toml      # every option also has a flag: cs336 train --help
    cs336 generate --checkpoint runs/demo/model/ckpt_latest.pt --prompt "Once upon a time"

Each module of ``COMMANDS`` registers its sub-commands with ``add_subcommand(subparsers)``, each handler
``func(args) -> int`` returns the exit code; ``cs336 COMMAND`` imports only the module of COMMAND. Exit codes
(`cs336_lab/errors.py`): 0 success, 1 failure (e.g. the network, a diverged run), 2 usage error, bad input or
a missing extra, reported in one line without a traceback (``-v`` shows it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Iterable, Sequence

from cs336_lab import __version__
from cs336_lab.errors import USER_ERRORS, extra_of, missing_modules, needs_extra

logger = logging.getLogger("cs336_lab")

# Every sub-command: name -> (the module that defines it with `add_subcommand`, its line in `cs336 --help`, the
# extra of pyproject.toml it needs or None). `cs336 COMMAND` imports that one module only, so `cs336 --help`
# imports none of them, and a command that needs an extra says so (exit 2, one line) instead of a traceback.
COMMANDS: dict[str, tuple[str, str, str | None]] = {
    "demo": ("cs336_lab.demo", "the whole pipeline on the synthetic corpus (CPU, < 5 min)", None),
    "train-bpe": ("cs336_lab.pipeline", "train a byte-level BPE tokenizer on a text file", None),
    "tokenize": ("cs336_lab.pipeline", "encode text files to .npy token arrays", None),
    "make-corpus": ("cs336_lab.corpus", "generate the synthetic children's-stories corpus (offline)", None),
    "download": ("cs336_lab.download", "download TinyStories or the OpenWebText sample (resumable)", None),
    "train": ("cs336_lab.train", "train a Transformer LM on .npy token arrays", None),
    "generate": ("cs336_lab.generate", "complete prompts with a trained checkpoint", None),
    "evaluate": ("cs336_lab.evaluate", "the loss of a checkpoint over a whole split (nats/token, bits/byte)", None),
    "accounting": ("cs336_lab.accounting", "parameters, FLOPs and training memory of a model config or preset", None),
    "compare": ("cs336_lab.compare", "overlay the loss curves of several runs, with a table", None),
    "sweep": ("cs336_lab.sweep", "train a grid of configs one by one, then compare them", None),
    # the course staff's wing: grade (one or a batch), handout, autograder, similarity
    "grade": (
        "cs336_grading.cli",
        "grade a student submission (directory or .zip) against the pristine tests",
        "grading",
    ),
    "handout": (
        "cs336_grading.staff.handout",
        "build the student starter kit (tests, fixtures, stub adapters, empty package)",
        "grading",
    ),
    "autograder": ("cs336_grading.staff.autograder", "build the Gradescope autograder zip", "grading"),
    "similarity": ("cs336_grading.staff.similarity_report", "find similar submissions in a batch (course staff)", None),
}
# Loggers whose level -v/-q set: the tools, the grading wing and the assignment.
LOGGERS = ("cs336_lab", "cs336_grading", "cs336_basics")


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
    group.add_argument(
        "-v",
        "--verbose",
        dest="verbosity",
        action="store_const",
        const=1,
        default=default,
        help="debug logging, and tracebacks for errors",
    )
    group.add_argument(
        "-q",
        "--quiet",
        dest="verbosity",
        action="store_const",
        const=-1,
        default=default,
        help="warnings and errors only",
    )


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``cs336`` parser: the sub-commands named in ``commands`` in full (default: all of ``COMMANDS``), the
    others as their line in ``cs336 --help`` only (their modules are not imported)."""
    wanted = set(COMMANDS) if commands is None else set(commands)
    parser = argparse.ArgumentParser(
        prog="cs336",
        description="Train a Transformer language model from scratch: tokenizer, model, samples.",
        epilog="Run `cs336 COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_verbosity(parser, top_level=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in dict.fromkeys(module for command, (module, _, _) in COMMANDS.items() if command in wanted):
        importlib.import_module(name).add_subcommand(subparsers)
    for command, (_, help_line, _) in COMMANDS.items():
        if command not in subparsers.choices:
            subparsers.add_parser(command, help=help_line, add_help=False)
    for sub in subparsers.choices.values():
        try:
            _add_verbosity(sub, top_level=False)
        except argparse.ArgumentError:  # the sub-command defines -v/-q itself
            pass
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv``: its first word that is not an option (the top level takes no values)."""
    return next((word for word in argv if not word.startswith("-") and word in COMMANDS), None)


def _run(args: argparse.Namespace) -> int:
    """Run the handler of ``args.command``: exit 2 with one line if an extra it needs is not installed."""
    extra = COMMANDS[args.command][2]
    if extra is not None and missing_modules(extra):
        print(needs_extra(args.command, extra), file=sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except ModuleNotFoundError as err:  # an optional module reached at run time (e.g. `--wandb` without wandb)
        if (extra := extra_of(err.name or "")) is None:
            raise
        print(needs_extra(args.command, extra), file=sys.stderr)
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the sub-command, return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    parser = build_parser([] if command is None else [command])
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse exits 2 on usage errors and 0 on --help/--version
        return int(exit_.code or 0)
    configure_logging(args.verbosity)
    try:
        return _run(args)
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
