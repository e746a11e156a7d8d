"""Dataclass configs mapped 1:1 to command-line flags and YAML files.

A field ``batch_size`` is the flag ``--batch-size`` and the YAML key ``batch_size``. Precedence:
dataclass default < ``--config FILE`` < explicit command-line flags.

The flag follows the field's type (``bool`` -> ``--x/--no-x``, ``list[int]`` -> ``--x 1 2``, ...).
A field can spell out its own parsing with the argparse keywords ``nargs``, ``const``, ``type``
and ``metavar`` in its metadata, e.g. an optional value: ``--resume`` (``const``) or
``--resume auto`` (parsed by ``type``); a field whose type admits ``bool`` also gets ``--no-x``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from refineseg.errors import ConfigError, RefineSegError, file_error
from refineseg.utils.files import write_text

T = TypeVar("T")


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with a default and its CLI help (lists get a fresh copy per instance)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, **metadata})
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def required(help: str, **metadata: Any) -> Any:
    """A dataclass field without a default: a required option."""
    return dataclasses.field(metadata={"help": help, **metadata})


# Field metadata keys passed through to ``argparse.add_argument`` (see the module docstring).
ARGPARSE_KEYS = ("nargs", "const", "type", "metavar")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def bool_or_str(text: str) -> bool | str:
    """A flag value: true/yes/on and false/no/off (any case) as YAML reads them, other words unchanged.

    Meant for fields such as ``resume: bool | Literal["auto"]``; the dataclass validates the result,
    so a bad word becomes the same one-line error from the command line as from YAML.
    """
    word = text.strip().lower()
    if word in ("true", "yes", "on"):
        return True
    if word in ("false", "no", "off"):
        return False
    return text


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls``; help text from ``field.metadata["help"]``.

    Defaults are left as ``None`` (argparse.SUPPRESS) so that only flags the user typed
    override the YAML config. Metadata keys in ``ARGPARSE_KEYS`` replace the type-based flag.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        help_text = f.metadata.get("help", "")
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        )
        help_text = f"{help_text} (default: {default})" if default not in (None, "", []) else help_text
        origin = typing.get_origin(kind)
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        base = args[0] if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args else kind
        choices = f.metadata.get("choices")
        custom = {key: f.metadata[key] for key in ARGPARSE_KEYS if key in f.metadata}
        if custom:  # the field says how to parse it, e.g. an optional value
            if "type" not in custom and base in (int, float, str):
                custom["type"] = base
            parser.add_argument(_flag(f.name), default=argparse.SUPPRESS, help=help_text, choices=choices, **custom)
            if bool in args or kind is bool:
                parser.add_argument(
                    "--no-" + f.name.replace("_", "-"),
                    dest=f.name,
                    action="store_const",
                    const=False,
                    default=argparse.SUPPRESS,
                    help=f"set {f.name} to false",
                )
        elif base is bool:
            parser.add_argument(
                _flag(f.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        elif typing.get_origin(base) in (list, tuple):
            item = typing.get_args(base)[0]
            parser.add_argument(
                _flag(f.name), nargs="+", type=item, default=argparse.SUPPRESS, help=help_text, metavar=f.name.upper()
            )
        else:
            parser.add_argument(
                _flag(f.name),
                type=base,
                default=argparse.SUPPRESS,
                help=help_text,
                choices=choices,
                metavar=None if choices else f.name.upper(),
            )


class RefusedYAML(yaml.constructor.ConstructorError):
    """Well-formed YAML that a config may not hold: a repeated key, a non-finite number."""


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping and a non-finite number
    (``.nan``, ``.inf``) as a mapping's value or list item, each naming the key and its line."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """The mapping, after checking its keys for repeats and its values for NaN / infinity."""
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *base``: overriding merged keys is fine
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise RefusedYAML(
                        None, None, f"duplicate key {key!r} (first on line {seen[key]})", key_node.start_mark
                    )
                seen[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: the base class reports it
                continue
            bad = self._non_finite(value_node)
            if bad is not None:
                raise RefusedYAML(None, None, f"{key}: {bad.value} is not a finite number", bad.start_mark)
        return super().construct_mapping(node, deep=deep)

    def _non_finite(self, node: yaml.Node) -> yaml.ScalarNode | None:
        """The first float scalar in ``node`` (a scalar or a list, nested) that is NaN or infinite."""
        if isinstance(node, yaml.SequenceNode):
            return next((bad for item in node.value if (bad := self._non_finite(item)) is not None), None)
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:float":
            value = self.construct_object(node)
            return None if math.isfinite(value) else node
        return None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A PyYAML error on one line: ``line L, column C: <problem>`` when PyYAML knows where."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = " ".join(str(getattr(error, "problem", None) or error).split())
    context = getattr(error, "context", None)
    if context and getattr(error, "problem", None):
        problem = f"{problem} ({context})"
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def read_yaml(path: str | os.PathLike, what: str = "config file") -> Any:
    """The YAML document of ``path`` read with :class:`StrictLoader`; ``None`` for an empty file.

    Every problem is a one-line :class:`~refineseg.errors.ConfigError` naming the file (and the line:
    syntax errors, duplicate keys, ``.nan`` / ``.inf`` values); a missing file is ``"<what> not found"``.
    """
    path = Path(path)
    if not path.is_file():
        raise file_error(RefineSegError, path, f"{what} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise file_error(ConfigError, path, f"cannot read it ({' '.join(str(e).split())})") from None
    try:
        return yaml.load(text, Loader=StrictLoader)
    except RefusedYAML as e:
        raise file_error(ConfigError, path, _yaml_problem(e)) from None
    except yaml.YAMLError as e:
        raise file_error(ConfigError, path, f"invalid YAML: {_yaml_problem(e)}") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML config file as a mapping of option names to values ({} when empty); see :func:`read_yaml`."""
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise file_error(ConfigError, path, "expected a mapping of option names to values")
    return data


_NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _describe(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        words = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(words + (["null"] if type(None) in args else []))
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return _TYPE_WORDS.get(kind, getattr(kind, "__name__", str(kind)))


def _coerce(value: Any, kind: Any) -> Any:
    """``value`` as type ``kind`` (bool, int, float, str, list[...], Optional, Literal, unions).

    Strict: an int field rejects 10.7 and "many", a bool field accepts only true/false (not the
    string "no"), a str field rejects numbers. Floats also accept numbers written as text, since
    YAML 1.1 reads ``1e-3`` as a string. Raises ValueError on a mismatch.
    """
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return value
    if origin is typing.Literal:
        if value in args and not isinstance(value, bool):
            return value
    elif origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arm in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arm)
            except ValueError:
                pass
    elif origin in (list, tuple):
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(item, args[0]) for item in items]
    elif kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if (isinstance(value, (int, float)) and not isinstance(value, bool)) or (
            isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip())
        ):
            if not math.isfinite(float(value)):  # .nan, .inf, 1e999
                raise ValueError(f"expected a finite number, got {value!r}")
            return float(value)
    elif kind is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ValueError(f"expected {_describe(kind)}, got {value!r}")


def check_value(field: dataclasses.Field, kind: Any, value: Any) -> Any:
    """``value`` checked against ``field``'s type, ``choices`` and ``min``/``max`` metadata (ValueError)."""
    value = _coerce(value, kind)
    choices = field.metadata.get("choices")
    low, high = field.metadata.get("min"), field.metadata.get("max")
    for item in value if isinstance(value, list) else [value]:
        if item is None:
            continue
        if choices is not None and item not in choices:
            raise ValueError(f"expected one of {', '.join(map(str, choices))}, got {item!r}")
        if low is not None and isinstance(item, (int, float)) and item < low:
            raise ValueError(f"must be >= {low}, got {item!r}")
        if high is not None and isinstance(item, (int, float)) and item > high:
            raise ValueError(f"must be <= {high}, got {item!r}")
    return value


def check_bounds(config: Any) -> None:
    """Check a dataclass instance's values against its fields' ``choices``/``min``/``max`` (ValueError).

    Called from ``__post_init__`` so that configs built in Python get the same range checks.
    """
    for f in dataclasses.fields(config):
        if any(key in f.metadata for key in ("choices", "min", "max")):
            try:
                check_value(f, Any, getattr(config, f.name))
            except ValueError as e:
                raise ValueError(f"{f.name}: {e}") from None


def check_values(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """Each of ``values`` checked against its field of dataclass ``cls`` (see :func:`check_value`).

    Errors are one-line :class:`~refineseg.errors.ConfigError` naming ``source`` and the key.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s): {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    checked = {}
    for key, value in values.items():
        try:
            checked[key] = check_value(fields[key], hints[key], value)
        except ValueError as e:
            raise ConfigError(f"{source}: {key}: {e}") from None
    return checked


def config_from_values(cls: type[T], values: dict[str, Any], source: str) -> T:
    """Build ``cls`` from plain values (a YAML mapping, parsed flags), every value type-checked."""
    checked = check_values(cls, values, source)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in checked and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: missing required option(s): {', '.join(_flag(m) for m in missing)}")
    try:
        return cls(**checked)
    except (TypeError, ValueError) as e:  # the dataclass's own checks (ranges between fields)
        raise ConfigError(f"{source}: {e}") from None


def build_config(cls: type[T], args: argparse.Namespace, config_file: str | None = None) -> T:
    """Merge ``cls`` defaults, the YAML file and the command-line flags into a ``cls``, type-checked.

    Each value is checked where it comes from, so an error names the file or the command line.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    values = check_values(cls, load_yaml(config_file), config_file) if config_file else {}
    flags = check_values(cls, {k: v for k, v in vars(args).items() if k in names}, "command line")
    source = f"{config_file} + command line" if config_file and flags else (config_file or "command line")
    return config_from_values(cls, {**values, **flags}, source)


def save_yaml(config: Any, path: str | os.PathLike) -> None:
    write_text(path, yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
