"""``python -m refineseg`` is the ``refineseg`` command (also under ``torchrun``)."""

from refineseg.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
