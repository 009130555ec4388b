"""The `cs336` command: sub-command assembly, exit codes, logging, and the train-bpe/tokenize steps."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from cs336_lab import cli
from cs336_lab.cli import build_parser, main
from cs336_lab.corpus import write_corpus

OWN_COMMANDS = ["demo", "train-bpe", "tokenize", "make-corpus", "download"]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), num_train=60, num_valid=10, seed=1)


def test_help_lists_the_sub_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in [*OWN_COMMANDS, "train", "generate"]:
        assert command in out


@pytest.mark.parametrize("command", OWN_COMMANDS + ["train", "generate"])
def test_every_sub_command_has_help_and_takes_verbosity_flags(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "--quiet" in out and "--verbose" in out


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2  # a sub-command is required
    assert main(["no-such-command"]) == 2
    assert main(["make-corpus", "--num-train", "many"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert "cs336" in capsys.readouterr().out


def test_bad_input_is_one_line_without_traceback(tmp_path, capsys):
    missing = tmp_path / "missing.txt"
    assert main(["train-bpe", str(missing), "--vocab-size", "300", "--out", str(tmp_path / "tok")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(missing) in err and "error:" in err
    assert len(err.strip().splitlines()) == 1
    # -v shows the traceback, for debugging
    assert main(["-v", "train-bpe", str(missing), "--vocab-size", "300", "--out", str(tmp_path / "tok")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_bad_value_from_a_library_function_exits_2(tmp_path, capsys):
    assert main(["make-corpus", "--out", str(tmp_path), "--num-train", "0"]) == 2
    assert "num_train must be a positive int, got 0" in capsys.readouterr().err


def test_make_corpus(tmp_path):
    assert main(["-q", "make-corpus", "--out", str(tmp_path), "--num-train", "5", "--num-valid", "2"]) == 0
    assert (tmp_path / "train.txt").read_text().count("<|endoftext|>") == 5
    assert (tmp_path / "valid.txt").read_text().count("<|endoftext|>") == 2


def test_train_bpe_then_tokenize(small_corpus, tmp_path):
    from cs336_lab.tokenizer_files import load_tokenizer

    tok_dir, out_dir = tmp_path / "tok", tmp_path / "tokens"
    assert (
        main(
            [
                "-q",
                "train-bpe",
                str(small_corpus.train),
                "--vocab-size",
                "400",
                "--out",
                str(tok_dir),
                "--num-workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    tokenizer = load_tokenizer(tok_dir)
    assert 300 < tokenizer.vocab_size <= 400
    assert (
        main(
            [
                "-q",
                "tokenize",
                str(small_corpus.train),
                str(small_corpus.valid),
                "--tokenizer",
                str(tok_dir),
                "--out-dir",
                str(out_dir),
                "--num-workers",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    for text_file in (small_corpus.train, small_corpus.valid):
        ids = np.load(out_dir / (text_file.stem + ".npy"))
        assert ids.dtype == np.uint16 and ids.ndim == 1
        assert tokenizer.decode(ids.tolist()) == text_file.read_text()
    eot = tokenizer.token_to_id("<|endoftext|>")
    assert (np.load(out_dir / "valid.npy") == eot).sum() == 10


def test_tokenize_missing_input(tmp_path, capsys):
    assert main(["tokenize", str(tmp_path / "a.txt"), "--tokenizer", str(tmp_path), "--out-dir", str(tmp_path)]) == 2
    assert "a.txt" in capsys.readouterr().err


def test_a_command_module_with_a_broken_import_is_an_error(monkeypatch, tmp_path):
    # a module that exists but fails to import one of ITS dependencies is a real error, not skipped
    (tmp_path / "cs336_broken_for_test.py").write_text("import cs336_dependency_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", {"broken": ("cs336_broken_for_test", "a broken command", None)})
    with pytest.raises(ModuleNotFoundError, match="cs336_dependency_that_does_not_exist"):
        build_parser()


def test_a_missing_command_module_is_an_error(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", {"later": ("cs336_basics.not_written_yet", "a missing command", None)})
    with pytest.raises(ModuleNotFoundError):
        build_parser()


def test_the_command_table_matches_the_commands() -> None:
    """`cli.COMMANDS` (what `cs336 --help` lists without importing anything) names each command's own module and
    repeats its help line: built in full, the parser has the same commands, lines and order."""
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    listed = {choice.dest: choice.help for choice in action._choices_actions}
    assert listed == {command: help_line for command, (_, help_line, _) in cli.COMMANDS.items()}
    assert list(action.choices) == list(cli.COMMANDS)
    light = build_parser([])
    light_action = next(a for a in light._actions if isinstance(a, argparse._SubParsersAction))
    assert {c.dest: c.help for c in light_action._choices_actions} == listed
