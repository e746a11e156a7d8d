"""What the command modules share: the dataclass-backed sub-command and small argparse types."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from refineseg.utils.config import add_dataclass_arguments

Handler = Callable[[argparse.Namespace], int | None]


def dataclass_command(
    sub, name: str, help_text: str, cls: type, handler: Handler, positional: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    """A sub-command whose flags are the fields of the config dataclass ``cls`` (plus ``--config FILE``)."""
    p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
    for field_name in positional:
        p.add_argument(field_name, nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--config", metavar="FILE", help="YAML file of options; flags given here override it")
    add_dataclass_arguments(p, cls, skip=positional)
    p.set_defaults(handler=handler)
    return p


def count(text: str) -> int:
    """An argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def side(text: str) -> int:
    """An argparse type: a picture side in pixels, >= 16."""
    value = int(text)
    if value < 16:
        raise argparse.ArgumentTypeError(f"must be >= 16 px, got {value}")
    return value
