"""One-line errors for the ``bnn`` command: a config or data mistake ends in one ``error:`` line.

jsonargparse reports a bad value with the parser's whole usage, and a class that refuses its
arguments with a dump of every field of its namespace; the sentence that says what to fix is
somewhere in the middle. :func:`one_line_error` finds it:

- a parse error (unknown key, wrong type, unknown class path, missing config file) becomes
  ``<key>: <what is wrong> (see bnn <subcommand> --help)``;
- an error raised by this package (its messages name the key or path and the fix), a missing
  file or a Lightning ``MisconfigurationException`` becomes its own message; a failed dataset
  download says to point ``data.init_args.root`` at the data on disk.

Anything else (a bug) keeps its traceback. ``bnn ... --verbose`` shows everything, as before.
"""

from __future__ import annotations

import os
import re
import sys
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.error import URLError

from lightning.fabric.utilities.exceptions import MisconfigurationException

import bnn_lightning
from bnn_lightning.callbacks.guard import NonFiniteLossError
from bnn_lightning.data.images import CorruptImageError

__all__ = ["VERBOSE_FLAG", "one_line_error", "run_reporting_errors"]

VERBOSE_FLAG = "--verbose"
"""Command-line flag that keeps jsonargparse's full report and every traceback."""

_PACKAGE = str(Path(bnn_lightning.__file__).parent)
_JSONARGPARSE = f"{os.sep}jsonargparse{os.sep}"
_OURS = (ValueError, OSError, CorruptImageError, NonFiniteLossError)
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
_NOISE = re.compile(
    r"^(Does not validate against any of the Union subtypes|Subtypes:|Errors:|Given value type:"
    r"|- Expected a <class 'NoneType'>)"
)


def _raised_in(err: BaseException) -> str:
    """The file of the innermost frame of ``err``'s traceback ('' without one)."""
    tb: TracebackType | None = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename if tb is not None else ""


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or during, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _is_user_error(err: BaseException) -> bool:
    if isinstance(err, (MisconfigurationException, *_PATH_ERRORS)):
        return True
    if type(err).__module__.startswith("bnn_lightning."):  # CorruptImageError, CheckpointError...
        return True
    return isinstance(err, _OURS) and _raised_in(err).startswith(_PACKAGE)


def _message(err: BaseException) -> str:
    """``err``'s sentence; a DataLoader worker's error carries its traceback: the last line."""
    message = str(err)
    if "Original Traceback" in message:
        last = message.strip().splitlines()[-1]
        message = last.split(": ", 1)[1] if ": " in last else last
    return message


def _condense(message: str) -> str:
    """jsonargparse's multi-line report as one line (the type lists and long values dropped)."""
    parts: list[str] = []
    for line in (raw.strip() for raw in message.splitlines()):
        if not line or _NOISE.match(line):
            continue
        line = re.sub(r"^- ", "", line)
        line = re.sub(r"Expected a <class '(\w+)'>", r"expected \1", line)
        if line.startswith("Given value: "):
            value = line.removeprefix("Given value: ")
            if len(value) > 60:
                continue
            line = f"got {value}"
        if parts and not parts[-1].endswith(":"):
            parts[-1] += ";"
        parts.append(line)
    return re.sub(r"\s+", " ", " ".join(parts)).strip()


def one_line_error(err: BaseException, subcommand: str | None = None) -> str | None:
    """The one line to print for ``err``, or None when it should keep its traceback.

    Args:
        err: The exception that ended the command.
        subcommand: The ``bnn`` subcommand, for the ``--help`` hint of parse errors.
    """
    chain = _chain(err)
    for inner in chain:  # the sentence of the code that refused the value, if it is ours
        if isinstance(inner, URLError):
            return (
                f"A download failed ({inner.reason}); check the network, or point "
                "data.init_args.root at the dataset on disk."
            )
        if _JSONARGPARSE not in _raised_in(inner) and not isinstance(inner, ArgumentError):
            if _is_user_error(inner):
                return _condense(_message(inner))
            return None
    if not isinstance(err, ArgumentError):
        return None
    message, prefix = str(err), ""
    key = re.match(r'Parser key "([^"]+)":\s*', message)
    if key is not None:
        message, prefix = message[key.end() :], f"{key.group(1)}: "
    hint = f"bnn {subcommand} --help" if subcommand else "bnn --help"
    return f"{prefix}{_condense(message)} (see {hint})"


def _in_process(argv: list[str], args: list[str] | None) -> list[str] | None:
    """``argv`` for an in-process call; None reads ``sys.argv`` (LightningCLI warns about both)."""
    if args is None:
        sys.argv[1:] = argv
        return None
    return argv


def run_reporting_errors(
    cli: Callable[..., Any], args: list[str] | None, subcommands: Sequence[str]
) -> None:
    """``cli(args=...)``, ending a mistake with one ``error:`` line (exit 2 for a parse error, 1
    otherwise); with :data:`VERBOSE_FLAG` among the arguments, exactly as ``cli`` reports it.

    Args:
        cli: A LightningCLI class.
        args: The command line without the program (None reads ``sys.argv``).
        subcommands: Its subcommands (jsonargparse's own exit is switched off for each).
    """
    argv = sys.argv[1:] if args is None else list(args)
    if VERBOSE_FLAG in argv:
        argv.remove(VERBOSE_FLAG)
        cli(args=_in_process(argv, args))
        return
    quiet = {"exit_on_error": False, **{name: {"exit_on_error": False} for name in subcommands}}
    try:
        cli(args=_in_process(argv, args), parser_kwargs=quiet)
    except Exception as err:
        message = one_line_error(err, next((a for a in argv if a in subcommands), None))
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2 if isinstance(err, ArgumentError) else 1) from None
