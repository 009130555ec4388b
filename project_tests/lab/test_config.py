"""Config dataclasses <-> flags and TOML/JSON files: precedence, types, errors, atomic saves."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Literal

import pytest

from cs336_lab.config import (
    add_dataclass_arguments,
    config_from_args,
    from_dict,
    load_config,
    save_config,
)


@dataclasses.dataclass(frozen=True)
class Inner:
    d_model: int = 64
    d_ff: int | None = None
    norm: Literal["pre", "post"] = "pre"


@dataclasses.dataclass(frozen=True)
class Outer:
    lr: float = dataclasses.field(default=1e-3, metadata={"help": "peak learning rate"})
    steps: int = 10
    name: str = "run"
    out: Path = Path("runs")
    betas: tuple[float, float] = (0.9, 0.999)
    compile: bool = False
    tags: tuple[str, ...] = ()
    model: Inner = dataclasses.field(default_factory=Inner)


@pytest.fixture
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_dataclass_arguments(p, Outer)
    return p


def parse(parser: argparse.ArgumentParser, *argv: str) -> Outer:
    return config_from_args(Outer, parser.parse_args(list(argv)))


def test_defaults_when_nothing_is_given(parser):
    assert parse(parser) == Outer()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--lr", "3e-4"], {"lr": 3e-4}),
        (["--steps", "7", "--name", "x"], {"steps": 7, "name": "x"}),
        (["--out", "a/b"], {"out": Path("a/b")}),
        (["--betas", "0.8", "0.95"], {"betas": (0.8, 0.95)}),
        (["--compile"], {"compile": True}),
        (["--no-compile"], {"compile": False}),
        (["--tags", "a", "b", "c"], {"tags": ("a", "b", "c")}),
        (["--model.d-model", "128", "--model.norm", "post"], {"model": Inner(d_model=128, norm="post")}),
        (["--model.d-ff", "256"], {"model": Inner(d_ff=256)}),
        (["--model.d-ff", "none"], {"model": Inner(d_ff=None)}),
    ],
    ids=[
        "float",
        "int-str",
        "path",
        "tuple",
        "bool-on",
        "bool-off",
        "variadic",
        "nested-literal",
        "optional",
        "optional-none",
    ],
)
def test_flags_set_fields(parser, argv, expected):
    assert parse(parser, *argv) == dataclasses.replace(Outer(), **expected)


def test_help_shows_metadata_and_default(parser):
    text = parser.format_help()
    assert "peak learning rate (default: 0.001)" in text
    assert "--compile, --no-compile" in text
    assert "{pre,post}" in text


@pytest.mark.parametrize(
    "argv", [["--steps", "x"], ["--model.norm", "mid"], ["--betas", "0.9"]], ids=["bad-int", "bad-choice", "too-few"]
)
def test_bad_flags_are_usage_errors(parser, argv):
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        parser.parse_args(argv)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_precedence_defaults_file_flags(parser, tmp_path, suffix):
    path = tmp_path / f"c{suffix}"
    if suffix == ".toml":
        path.write_text('lr = 1\nname = "file"\nbetas = [0.5, 0.6]\n[model]\nd_model = 32\nd_ff = 96\n')
    else:
        data = {"lr": 1, "name": "file", "betas": [0.5, 0.6], "model": {"d_model": 32, "d_ff": 96}}
        path.write_text(json.dumps(data))
    config = parse(parser, "--config", str(path), "--name", "flag", "--model.d-ff", "none")
    # file beats defaults (lr, betas, d_model); flags beat the file (name, d_ff); untouched fields keep defaults
    assert config == Outer(lr=1.0, name="flag", betas=(0.5, 0.6), model=Inner(d_model=32, d_ff=None))
    assert isinstance(config.lr, float)


@pytest.mark.parametrize(
    "text, error, words",
    [
        ("lrr = 1\n", ValueError, ["lrr", "valid keys", "lr"]),
        ('lr = "fast"\n', TypeError, ["lr", "float", "str"]),
        ("steps = 1.5\n", TypeError, ["steps", "int", "float"]),
        ("compile = 1\n", TypeError, ["compile", "bool", "int"]),
        ("betas = [0.9]\n", TypeError, ["betas", "2 values", "1"]),
        ('[model]\nnorm = "mid"\n', ValueError, ["model.norm", "'pre'", "'mid'"]),
        ("[model]\nwidth = 3\n", ValueError, ["model.width", "d_model"]),
        ("model = 3\n", TypeError, ["model", "Inner", "int"]),
    ],
    ids=[
        "unknown-key",
        "str-for-float",
        "float-for-int",
        "int-for-bool",
        "tuple-length",
        "bad-literal",
        "nested-unknown",
        "scalar-for-table",
    ],
)
def test_bad_config_files_name_key_expected_and_actual(parser, tmp_path, text, error, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(error) as info:
        parse(parser, "--config", str(path))
    for word in [str(path), *words]:
        assert word in str(info.value)


def test_missing_or_malformed_file(parser, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        parse(parser, "--config", str(tmp_path / "nope.toml"))
    (tmp_path / "broken.toml").write_text("lr = = 1\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        parse(parser, "--config", str(tmp_path / "broken.toml"))
    (tmp_path / "c.yaml").write_text("lr: 1\n")
    with pytest.raises(ValueError, match=r"\.toml or \.json"):
        parse(parser, "--config", str(tmp_path / "c.yaml"))


def test_save_then_load_round_trip(tmp_path):
    config = Outer(lr=0.5, out=Path("x/y"), betas=(0.1, 0.2), tags=("a",), model=Inner(d_ff=None, norm="post"))
    path = tmp_path / "sub" / "config.json"
    save_config(config, path)
    assert json.loads(path.read_text())["model"] == {"d_model": 64, "d_ff": None, "norm": "post"}
    assert load_config(Outer, path) == config
    assert [p.name for p in path.parent.iterdir()] == ["config.json"]  # no temporary file left behind


def test_save_is_atomic_on_failure(tmp_path):
    path = tmp_path / "config.json"
    save_config(Outer(), path)
    before = path.read_text()
    with pytest.raises(TypeError):
        save_config({"bad": object()}, path)  # not JSON-serialisable
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_from_dict_accepts_int_for_float_and_rejects_bool_for_int():
    assert from_dict(Outer, {"lr": 2}).lr == 2.0
    with pytest.raises(TypeError, match="steps"):
        from_dict(Outer, {"steps": True})


def test_required_fields_can_come_from_flags(tmp_path):
    @dataclasses.dataclass(frozen=True)
    class Needs:
        data: str
        n: int = 1

    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Needs)
    (tmp_path / "c.toml").write_text("n = 3\n")
    assert config_from_args(Needs, p.parse_args(["--config", str(tmp_path / "c.toml"), "--data", "d"])) == Needs("d", 3)


@pytest.mark.parametrize("module", ["config", "corpus", "download"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"cs336_lab.{module}"))
    assert result.attempted > 0 and result.failed == 0
