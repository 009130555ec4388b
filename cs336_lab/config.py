"""Map frozen config dataclasses onto command-line flags and TOML/JSON config files.

Precedence, lowest first: the dataclass defaults < the values of ``--config FILE`` < flags given explicitly.

    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, TrainConfig)          # --config FILE, --d-model N, --compile/--no-compile ...
    config = config_from_args(TrainConfig, parser.parse_args())
    save_config(config, out_dir / "config.json")          # the run's final config, beside its outputs

Flags are the field names with ``-`` for ``_``. Booleans get ``--flag/--no-flag``; ``Literal`` fields get
choices; ``X | None`` fields also accept the word ``none``; tuples take several values (``--betas 0.9 0.95``).
A field whose type is itself a dataclass is *nested*: its fields become ``--<field>.<sub-field>`` flags
(``--model.d-model 512``) and, in a config file, a table (TOML ``[model]`` or a JSON object). A nested field
with ``metadata={"flatten": True}`` gives its sub-fields plain flags (``--d-model 512``), and a config file
may also give them as top-level keys (``d_model = 512``, the form of configs written before the nesting) or
dotted keys (``"model.d_model"``); `nest_flat_keys` moves them into the table.
Config files use the field names as keys; an unknown key or a value of the wrong type is a clear error.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import operator
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from cs336_common.atomic import atomic_write_text

T = TypeVar("T")

CONFIG_DEST = "config"


class _Unset:
    """Sentinel default of every generated flag: "not given on the command line"."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


# --------------------------------------------------------------------------------------------- types


def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass (handles ``from __future__ import annotations``)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """``int | None`` -> ``(int, True)``; ``int`` -> ``(int, False)``.

    >>> _strip_optional(int | None)
    (<class 'int'>, True)
    """
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        optional = len(args) < len(get_args(tp))
        return (args[0] if len(args) == 1 else functools.reduce(operator.or_, args)), optional
    return tp, False


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    base, optional = _strip_optional(tp)
    if get_origin(base) is Literal:
        name = "one of " + ", ".join(repr(a) for a in get_args(base))
    elif get_origin(base) is tuple:
        name = "tuple[" + ", ".join(_type_name(a) if a is not ... else "..." for a in get_args(base)) + "]"
    elif get_origin(base) is list:
        name = f"list[{_type_name(get_args(base)[0])}]"
    else:
        name = getattr(base, "__name__", str(base))
    return f"{name} or None" if optional else name


# Scalar field type -> (the Python types a config file may give for it, the conversion to the field's type).
_SCALARS: dict[Any, tuple[tuple[type, ...], Any]] = {
    bool: ((bool,), bool),
    int: ((int,), int),
    float: ((int, float), float),
    str: ((str,), str),
    Path: ((str, os.PathLike), Path),
}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check a value read from a config file against a field type; return it in the field's type.

    >>> _coerce(3, float, "lr"), _coerce([0.9, 0.95], tuple[float, float], "betas")
    (3.0, (0.9, 0.95))
    """
    base, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise TypeError(f"{where}: expected {_type_name(tp)}, got None")

    def bad() -> TypeError:
        return TypeError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")

    origin = get_origin(base)
    if origin is Literal:
        choices = get_args(base)
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            raise ValueError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value
    if origin is tuple or origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        args = get_args(base)
        if origin is list:
            return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is ...:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise TypeError(f"{where}: expected {len(args)} values ({_type_name(tp)}), got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if _is_dataclass_type(base):
        if isinstance(value, base):
            return value
        if not isinstance(value, Mapping):
            raise bad()
        return _validate(base, value, where=f"{where}.")  # stays a dict until `_construct`
    if base is Any:
        return value
    if base not in _SCALARS:
        raise TypeError(f"{where}: unsupported field type {_type_name(tp)}")  # a programming error, not user input
    accepted, convert = _SCALARS[base]
    if not isinstance(value, accepted) or (base is not bool and isinstance(value, bool)):
        raise bad()
    return convert(value)


def _flattened_fields(cls: type) -> dict[str, type]:
    """The nested fields of ``cls`` marked ``metadata={"flatten": True}``: name -> their dataclass type."""
    hints = _field_types(cls)
    flattened = {f.name for f in dataclasses.fields(cls) if f.init and f.metadata.get("flatten")}
    return {
        name: _strip_optional(hints[name])[0]
        for name in flattened
        if _is_dataclass_type(_strip_optional(hints[name])[0])
    }


def nest_flat_keys(cls: type, data: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
    """``data`` with the flattened sub-fields of ``cls`` given as top-level keys (``d_model``) or dotted keys
    (``model.d_model``) moved into their table (``model``); a key given both ways is an error.

    For `TrainConfig`: ``{"lr_max": 0.1, "d_model": 16}`` -> ``{"lr_max": 0.1, "model": {"d_model": 16}}``.
    """
    if not isinstance(data, Mapping):
        return data  # type: ignore[return-value]  # _validate names the error
    out, own = dict(data), set(_field_types(cls))
    for name, sub in _flattened_fields(cls).items():
        table = out.get(name)
        table = dict(table) if isinstance(table, Mapping) else table
        sub_names = set(_field_types(sub))
        for key in list(out):
            inner = key[len(name) + 1 :] if key.startswith(name + ".") else (key if key not in own else None)
            if inner is None or inner not in sub_names:
                continue
            table = {} if table is None else table
            if not isinstance(table, dict):
                raise TypeError(f"{where}{name}: expected a table of {sub.__name__} fields, got {table!r}")
            if inner in table:
                raise ValueError(f"{where}{key} is given twice: as a key and in the [{where}{name}] table")
            table[inner] = out.pop(key)
        if table is not None:
            out[name] = table
    return out


def merge_config_data(cls: type, *layers: Mapping[str, Any]) -> dict[str, Any]:
    """The raw config tables ``layers`` (lowest first) merged key by key, flat keys nested first (see above)."""
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, nest_flat_keys(cls, layer))
    return merged


def _validate(cls: type, data: Mapping[str, Any], *, where: str = "") -> dict[str, Any]:
    """Check the keys and value types of a (nested) mapping against ``cls``; nested tables stay dicts."""
    if not isinstance(data, Mapping):
        raise TypeError(f"{where or cls.__name__}: expected a table of {cls.__name__} fields, got {data!r}")
    data = nest_flat_keys(cls, data, where=where)
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(where + k for k in unknown)} for {cls.__name__}; "
            f"valid keys: {', '.join(sorted(hints))}"
        )
    return {k: _coerce(v, hints[k], where + k) for k, v in data.items()}


def _construct(cls: type[T], values: Mapping[str, Any]) -> T:
    hints = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        base, _ = _strip_optional(hints[key])
        kwargs[key] = _construct(base, value) if _is_dataclass_type(base) and isinstance(value, Mapping) else value
    return cls(**kwargs)


def from_dict(cls: type[T], data: Mapping[str, Any], *, where: str = "") -> T:
    """Build a config dataclass from a mapping of field names (as read from TOML/JSON), checking every key.

    >>> @dataclasses.dataclass(frozen=True)
    ... class C:
    ...     lr: float = 1e-3
    >>> from_dict(C, {"lr": 1})
    C(lr=1.0)
    """
    return _construct(cls, _validate(cls, data, where=where))


# ------------------------------------------------------------------------------------------- files


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``.toml`` or ``.json`` config file into a dict (no checking against a dataclass yet)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"config file {path}: expected a .toml or .json file, found a directory")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path}: expected UTF-8 text, got {err.reason} at byte {err.start}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif path.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            raise ValueError(f"config file {path}: expected a .toml or .json suffix, got {path.suffix!r}")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"config file {path} is not valid {path.suffix[1:].upper()}: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path}: expected a table/object at top level, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | os.PathLike[str]) -> T:
    """Defaults of ``cls`` overridden by the keys of a TOML/JSON file."""
    try:
        return from_dict(cls, read_config_file(path))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{path}: {err}") from None


def to_jsonable(obj: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, paths -> strings (recursively).

    >>> to_jsonable({"out": Path("runs"), "betas": (0.9, 0.95)})
    {'out': 'runs', 'betas': [0.9, 0.95]}
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


def save_config(obj: Any, path: str | os.PathLike[str]) -> None:
    """Save a config dataclass (or dict) as indented JSON, atomically; ``load_config`` reads it back."""
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


# ---------------------------------------------------------------------------------------- argparse


def _flag(prefix: str, name: str) -> str:
    return "--" + prefix + name.replace("_", "-")


def _parse_scalar(tp: Any, optional: bool) -> Any:
    """An argparse ``type=`` callable for a scalar field (``none`` means None for optional fields)."""
    base = tp

    def convert(text: str) -> Any:
        if optional and text.strip().lower() in ("none", "null"):
            return None
        if base is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        if base is Any:
            return text
        try:
            return base(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_type_name(base)}, got {text!r}") from None

    convert.__name__ = _type_name(base)  # argparse names the type in its error message
    return convert


def _help_text(f: dataclasses.Field) -> str:
    """A flag's help: the field's ``metadata["help"]`` followed by its default."""
    if f.default is not dataclasses.MISSING:
        default_text = f"default: {to_jsonable(f.default)!r}"
    elif f.default_factory is not dataclasses.MISSING:
        default_text = f"default: {to_jsonable(f.default_factory())!r}"
    else:
        default_text = "required"
    help_text = f.metadata.get("help", "")
    help_text = f"{help_text} ({default_text})" if help_text else f"({default_text})"
    return help_text.replace("%", "%%")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    prefix: str = "",
    add_config_flag: bool = True,
    dest_prefix: str | None = None,
) -> None:
    """Add one flag per field of the dataclass ``cls`` (plus ``--config FILE`` at top level).

    Flags default to a sentinel, so ``config_from_args`` can tell "given" from "not given" and let a config
    file sit between the dataclass defaults and the command line. Help text comes from
    ``field(metadata={"help": ...})`` when present, followed by the default value.
    """
    if add_config_flag and not prefix:
        parser.add_argument(
            "--config",
            dest=CONFIG_DEST,
            metavar="FILE",
            default=None,
            help="TOML or JSON file of option values (keys are the option names with '_'); "
            "flags given explicitly override it",
        )
    hints = _field_types(cls)
    dest_prefix = prefix if dest_prefix is None else dest_prefix
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        base, optional = _strip_optional(tp)
        dest = dest_prefix.replace("-", "_") + f.name
        flag = _flag(prefix, f.name)
        if _is_dataclass_type(base):
            flag_prefix = prefix if f.metadata.get("flatten") else f"{prefix}{f.name}."
            add_dataclass_arguments(
                parser, base, prefix=flag_prefix, add_config_flag=False, dest_prefix=f"{dest_prefix}{f.name}."
            )
            continue
        kwargs: dict[str, Any] = {"dest": dest, "default": UNSET, "help": _help_text(f)}
        _add_field_flag(parser, flag, base, optional, kwargs)


def _add_field_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    base: Any,
    optional: bool,
    kwargs: dict[str, Any],
) -> None:
    """One field's flag, shaped by its type: a bool switch, a choice of a `Literal`, a tuple/list, a scalar."""
    origin = get_origin(base)
    if base is bool and not optional:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif origin is Literal:
        choices = list(get_args(base))
        parser.add_argument(
            flag,
            type=_parse_scalar(type(choices[0]), optional),
            choices=choices + ([None] if optional else []),
            metavar="{" + ",".join(map(str, choices)) + "}",
            **kwargs,
        )
    elif origin in (tuple, list):
        args = get_args(base)
        variadic = origin is list or (len(args) == 2 and args[1] is ...)
        parser.add_argument(
            flag,
            type=_parse_scalar(args[0], False),
            nargs="*" if variadic else len(args),
            metavar=_type_name(args[0]).upper(),
            **kwargs,
        )
    else:
        metavar = "PATH" if base is Path else _type_name(base).upper()
        parser.add_argument(flag, type=_parse_scalar(base, optional), metavar=metavar, **kwargs)


def _explicit_values(cls: type, args: argparse.Namespace, prefix: str = "") -> dict[str, Any]:
    """The flags the user actually gave, as a (nested) dict of field values."""
    out: dict[str, Any] = {}
    hints = _field_types(cls)
    for name, tp in hints.items():
        base, _ = _strip_optional(tp)
        if _is_dataclass_type(base):
            sub = _explicit_values(base, args, prefix=f"{prefix}{name}.")
            if sub:
                out[name] = sub
            continue
        value = getattr(args, prefix + name, UNSET)
        if value is not UNSET:
            out[name] = value
    return out


def _merge(low: dict[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict update: tables merge key by key, other values are replaced.

    >>> _merge({"a": 1, "m": {"x": 1, "y": 2}}, {"m": {"y": 3}})
    {'a': 1, 'm': {'x': 1, 'y': 3}}
    """
    merged = dict(low)
    for key, value in high.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from defaults < ``--config FILE`` < explicit flags (see the module docstring).

    Raises ``ValueError``/``TypeError`` (naming the key, expected and actual) for bad files or values and
    ``FileNotFoundError`` for a missing config file.
    """
    data: dict[str, Any] = {}
    config_path = getattr(args, CONFIG_DEST, None)
    if config_path:
        try:  # check the file on its own first so that its errors name it
            data = _validate(cls, read_config_file(config_path))
        except (TypeError, ValueError) as err:
            raise type(err)(err if str(config_path) in str(err) else f"{config_path}: {err}") from None
    data = _merge(data, _explicit_values(cls, args))
    return from_dict(cls, data)
