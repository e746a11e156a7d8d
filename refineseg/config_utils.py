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
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import RefineSegError, file_error

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
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
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
                parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_const",
                                    const=False, default=argparse.SUPPRESS, help=f"set {f.name} to false")
        elif base is bool:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(base) in (list, tuple):
            item = typing.get_args(base)[0]
            parser.add_argument(_flag(f.name), nargs="+", type=item, default=argparse.SUPPRESS,
                                help=help_text, metavar=f.name.upper())
        else:
            parser.add_argument(_flag(f.name), type=base, default=argparse.SUPPRESS, help=help_text,
                                choices=choices, metavar=None if choices else f.name.upper())


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise file_error(RefineSegError, path, "config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise file_error(RefineSegError, path, f"invalid YAML ({str(e).splitlines()[0]})")
    if not isinstance(data, dict):
        raise file_error(RefineSegError, path, "expected a mapping of option names to values")
    return data


def build_config(cls: type[T], args: argparse.Namespace, config_file: str | None = None) -> T:
    """Merge ``cls`` defaults, the YAML file and the command-line flags into a ``cls``."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file:
        data = load_yaml(config_file)
        unknown = sorted(set(data) - names)
        if unknown:
            raise file_error(RefineSegError, config_file, f"unknown option(s): {', '.join(unknown)}")
        values.update(data)
    values.update({k: v for k, v in vars(args).items() if k in names})
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise RefineSegError(f"{config_file or 'command line'}: {e}")


def save_yaml(config: Any, path: str | os.PathLike) -> None:
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
