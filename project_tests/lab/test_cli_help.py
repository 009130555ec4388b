"""Issue 23, "the CLI explains itself": every option of every sub-command has a sentence of help that shows its
default, every option with a fixed set of values lists them, and `cs336 --help`/`--version` answer fast."""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import time
import typing
from typing import Literal

import pytest

from cs336_common.model_spec import ModelSpec
from cs336_lab.cli import COMMANDS, build_parser
from cs336_lab.train_config import TrainConfig

_SKIPPED = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _sub_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _problems(name: str, sub: argparse.ArgumentParser) -> list[str]:
    """What is missing from the help of each option of ``sub``."""
    problems = []
    text = sub.format_help()
    for action in sub._actions:
        if isinstance(action, _SKIPPED):
            continue
        label = f"cs336 {name} {'/'.join(action.option_strings) or action.dest}"
        help_ = action.help if action.help not in (None, argparse.SUPPRESS) else ""
        sentence = re.sub(r"\((default|required)[^)]*\)|%\(default\)s", "", help_)
        if len(re.findall(r"[A-Za-z]{2,}", sentence)) < 2:
            problems.append(f"{label}: no sentence of help ({help_!r})")
            continue
        takes_value = action.nargs != 0
        default = action.default
        shows_default = "%(default)" in help_ or "default" in help_.lower()
        if action.option_strings and takes_value and default not in (None, argparse.SUPPRESS, []) and not shows_default:
            problems.append(f"{label}: default {default!r} not shown")
        for choice in action.choices or ():
            if choice is not None and str(choice) not in text:
                problems.append(f"{label}: choice {choice!r} not listed")
    return problems


def test_every_option_of_every_sub_command_explains_itself() -> None:
    subs = _sub_parsers()
    assert set(subs) == set(COMMANDS)
    problems = [p for name, sub in subs.items() for p in _problems(name, sub)]
    assert not problems, f"{len(problems)} options explain themselves badly:\n" + "\n".join(problems)


def _literal_fields(cls: type, prefix: str = "") -> dict[str, tuple]:
    hints = typing.get_type_hints(cls)
    out: dict[str, tuple] = {}
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_literal_fields(tp, prefix if f.metadata.get("flatten") else f"{prefix}{f.name}-"))
        elif typing.get_origin(tp) is Literal:
            out["--" + prefix + f.name.replace("_", "-")] = typing.get_args(tp)
    return out


def test_train_options_with_a_fixed_set_of_values_list_their_choices() -> None:
    train = _sub_parsers()["train"]
    literals = _literal_fields(TrainConfig)
    assert {"--init", "--norm-position", "--ffn-type", "--precision"} <= set(literals)
    assert _literal_fields(ModelSpec)
    actions = {s: a for a in train._actions for s in a.option_strings}
    text = " ".join(train.format_help().split())
    for flag, values in literals.items():
        assert set(values) <= set(actions[flag].choices or ()), flag
        for value in values:
            assert value in text, (flag, value)
        entry = text[text.index(flag) :]
        assert "choices" in entry[: entry.index("default")] or "{" in entry[:200], flag


def test_a_sub_command_help_shows_sentences_and_defaults() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "cs336_lab.cli", "train", "--help"], capture_output=True, text=True, timeout=120
    ).stdout
    flat = " ".join(out.split())
    assert "--warmup-steps" in flat and "--lr-max" in flat
    assert "(default: 0.001)" in flat  # --lr-max
    assert "xavier_normal" in flat and "kaiming_uniform" in flat  # --init's choices


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_version_and_help_are_fast_and_do_not_import_torch(argv: list[str]) -> None:
    code = (
        "import sys, time; t = time.perf_counter(); from cs336_lab.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', 'NUMPY' if 'numpy' in sys.modules else '')"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert "NO-TORCH" in done.stdout, done.stdout[-300:]
    assert elapsed < 3.0, f"cs336 {argv[0]} took {elapsed:.2f} s"
    assert "cs336" in done.stdout
