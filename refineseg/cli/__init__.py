"""The ``refineseg`` command: one module per subcommand; the library never imports this package."""

from refineseg.cli.app import build_parser, main

__all__ = ["main", "build_parser"]
