"""Command-line entry point (placeholder until the CLI issue lands)."""

from __future__ import annotations

import sys

from bnn_lightning import __version__


def main(args: list[str] | None = None) -> None:
    """Print the version and usage."""
    argv = sys.argv[1:] if args is None else args
    print(f"bnn-lightning {__version__}")
    if argv and argv[0] not in ("-h", "--help", "--version"):
        raise SystemExit(f"Unknown command {argv[0]!r}.")
