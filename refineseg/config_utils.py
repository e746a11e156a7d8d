"""Dataclass configs mapped 1:1 to command-line flags and YAML files.

A field ``batch_size`` is the flag ``--batch-size`` and the YAML key ``batch_size``. Precedence:
dataclass default < ``--config FILE`` < explicit command-line flags.
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


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one flag per field of ``cls``; help text from ``field.metadata["help"]``.

    Defaults are left as ``None`` (argparse.SUPPRESS) so that only flags the user typed
    override the YAML config.
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
        if base is bool:
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
