"""How every mipo command ends: one error style, one set of exit codes.

Every entry point (``python -m mipo.train``, ``mipo.eval``, ``mipo.weights``,
``mipo.pictures``, ``mipo.dice``, ``mipo.compare``, ``mipo.site``, ``mipo.docs``
and the ``mipo`` console command) runs its body through :func:`run_command`.
A failure becomes one line on stderr and an exit status:

* ``mipo: error: FILE:LINE: field 'x': what is wrong; how to fix it`` (data), or
  ``mipo: error: --train.key: ...`` (settings), exit **2** for a usage, data,
  config or recipe error (:func:`exit_code`);
* ``mipo: error: ...`` exit **1** for a failure at run time (a run stopped by
  its non-finite policy, a disk error);
* ``mipo: interrupted ...`` exit **130** on Ctrl-C or SIGTERM.

No traceback is printed unless ``--debug`` is on the command line (every entry
point accepts it) or ``MIPO_DEBUG=1`` is set; then the exception propagates.
An unexpected exception (a bug) also gets one line, exit 1, with the hint to
rerun with ``--debug``.
"""

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from mipo.errors import (
    BatchError,
    CompositionError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    TrainingStopped,
)

DEBUG_FLAG = "--debug"
"""The flag that shows tracebacks; every entry point accepts it."""

DEBUG_ENV = "MIPO_DEBUG"
"""The environment variable that does the same (``MIPO_DEBUG=1``)."""

USAGE = 2
"""Exit status of a usage, data, config or recipe error."""

RUNTIME = 1
"""Exit status of a failure at run time."""

INTERRUPTED = 130
"""Exit status after SIGINT or SIGTERM (128 + SIGINT, as shells report Ctrl-C)."""

USAGE_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    BatchError,
    CompositionError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    ImportError,
    SyntaxError,
    ValueError,
)
"""Errors in what the user gave (exit 2). ``ValueError`` covers the library's
checks of arguments; run-time errors are listed first in :func:`exit_code`."""

RUNTIME_ERRORS: tuple[type[BaseException], ...] = (
    TrainingStopped,
    NonFiniteLossError,
    OSError,
    MemoryError,
    RuntimeError,
)
"""Failures while the work runs (exit 1)."""


CONFIG_PREFIX = "TrainConfig."
"""How the library names a setting (``TrainConfig.batch_size``); a command
names it as its key (``--train.batch_size``)."""


class UsageError(ConfigError):
    """A command line that does not parse (an argparse error, a missing value)."""


RUN_TIME_MARK = "_mipo_run_time"
"""Attribute set on an exception raised once training has started."""


def mark_run_time(error: BaseException) -> None:
    """Record that ``error`` was raised while the work ran (after every check):
    whatever its type, it exits 1, since a run directory may hold results."""
    try:
        setattr(error, RUN_TIME_MARK, True)
    except AttributeError:  # an exception type without a __dict__
        pass


def debugging(argv: Sequence[str]) -> bool:
    """True when ``--debug`` is in ``argv`` or ``MIPO_DEBUG`` is set (not ``0``)."""
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def exit_code(error: BaseException) -> int:
    """The exit status for ``error``: 130 interrupted; 1 for an error raised
    once training started (:func:`mark_run_time`) or a run-time failure; 2 for a
    usage, data or config error; 1 for anything else."""
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED
    if getattr(error, RUN_TIME_MARK, False):
        return RUNTIME
    if isinstance(error, RUNTIME_ERRORS) and not isinstance(error, USAGE_ERRORS):
        return RUNTIME
    if isinstance(error, USAGE_ERRORS):
        return USAGE
    return RUNTIME


def error_line(error: BaseException) -> str:
    """The one line :func:`run_command` prints for ``error``."""
    if isinstance(error, KeyboardInterrupt):
        text = str(error) or (
            "stopped at once; a run directory keeps its last checkpoint, which "
            "python -m mipo.train --resume RUN_DIR continues"
        )
        return f"mipo: interrupted: {text}"
    if isinstance(error, SyntaxError) and error.filename:
        return (
            f"mipo: error: {error.filename}:{error.lineno}: {error.msg}; fix the "
            "syntax of the file"
        )
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"mipo: error: {error.filename}: {error.strerror}"
    unexpected = not isinstance(error, RUNTIME_ERRORS + USAGE_ERRORS)
    if exit_code(error) == RUNTIME and unexpected:
        return (
            f"mipo: error: internal error ({type(error).__name__}: {error}); rerun "
            f"with {DEBUG_FLAG} for the traceback and report it"
        )
    text = " ".join(str(error).split()) or type(error).__name__
    if text.startswith(CONFIG_PREFIX):  # the settings are --train.* keys here
        text = "--train." + text.removeprefix(CONFIG_PREFIX)
    return f"mipo: error: {text}"


def run_command(body: Callable[[list[str]], int | None], argv: Sequence[str]) -> None:
    """Run ``body`` on ``argv`` without ``--debug``; turn its exceptions into one
    line and an exit status (``SystemExit`` passes through; with ``--debug`` or
    ``MIPO_DEBUG=1`` exceptions propagate with their traceback)."""
    args = list(argv)
    debug = debugging(args)
    try:
        code = body([arg for arg in args if arg != DEBUG_FLAG])
    except SystemExit:
        raise
    except BaseException as error:
        if debug:
            raise
        print(error_line(error), file=sys.stderr, flush=True)
        raise SystemExit(exit_code(error)) from None
    if code:
        raise SystemExit(code)


def print_warning(warning: Warning | str) -> None:
    """Print ``mipo: warning: ...`` on stderr (data warnings, notes on a run)."""
    print(f"mipo: warning: {warning}", file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    """Raise :class:`UsageError` (for a command body's own argument checks)."""
    raise UsageError(message)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse`` whose errors raise :class:`UsageError` (so they print in the
    common style, exit 2) and whose help lists ``--debug``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.add_argument(
            DEBUG_FLAG,
            action="store_true",
            help=f"show the traceback of an error (also {DEBUG_ENV}=1)",
        )

    def error(self, message: str) -> NoReturn:
        text = message.removeprefix("argument ")
        raise UsageError(f"{text}; see {self.prog} --help")


__all__ = [
    "DEBUG_ENV",
    "DEBUG_FLAG",
    "INTERRUPTED",
    "RUNTIME",
    "USAGE",
    "ArgumentParser",
    "UsageError",
    "debugging",
    "error_line",
    "exit_code",
    "fail",
    "mark_run_time",
    "print_warning",
    "run_command",
]
