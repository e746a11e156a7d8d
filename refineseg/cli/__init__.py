"""The ``refineseg`` command (:mod:`refineseg.cli.app`): one module per sub-command, each with a
``register(subparsers)``; the library never imports this package."""
