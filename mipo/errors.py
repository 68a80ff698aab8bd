"""Exceptions with one clear message each, and the warning about suspicious data."""

import re
from collections.abc import Sequence


class BatchError(ValueError):
    """A :class:`~mipo.batch.PairBatch` is malformed or lacks a field the objective
    needs. The message names the field (``chosen.reference_logps``, ...)."""


class CompositionError(ValueError):
    """An :class:`~mipo.objective.Objective` was composed from parts that cannot work
    together. Raised at construction, never in the middle of training."""


class NonFiniteLossError(FloatingPointError):
    """The loss (or one of its parts) is NaN or infinite. The message says which."""


class TrainingStopped(RuntimeError):
    """A training run stopped on its own, with one line saying why (too many
    consecutive non-finite steps, non-finite weights refused by a checkpoint)."""


class ConfigError(ValueError):
    """A setting, a command-line argument, a config file or a recipe is wrong.
    The message names the key (``--train.max_grad_norm: ...``) or the file."""


class RunLockedError(ConfigError):
    """Another process is writing the run directory (it holds the run's lock)."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after finishing its current optimiser
    step and writing a checkpoint; the message gives the command that resumes it.

    Args:
        message: the one-line report.
        run_dir: the run directory.
        step: the optimiser step the checkpoint holds.
    """

    def __init__(self, message: str, *, run_dir: object = None, step: int = 0) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.step = step


_LOCATION = re.compile(r"(?P<file>.+?):(?P<line>\d+)(?::(?P<column>\d+))?")


def _where(file: str | None, line: int | None, column: int | None) -> str:
    if file is None:
        return ""
    if line is None:
        return file
    return f"{file}:{line}" if column is None else f"{file}:{line}:{column}"


def _render(
    where: str, field: str | None, problem: str, fix: str | None, extra: str = ""
) -> str:
    head = f"{where}: " if where else ""
    if field is not None:
        head += f"field '{field}': "
    return head + problem + extra + (f"; {fix}" if fix else "")


def split_location(source: str) -> tuple[str, int | None, int | None]:
    """``"FILE:LINE[:COLUMN]"`` -> ``(FILE, LINE, COLUMN)``; anything else is a file
    (or a label such as ``builtin:arithmetic[3]``) without a line."""
    match = _LOCATION.fullmatch(source)
    if match is None:
        return source, None, None
    column = match["column"]
    return match["file"], int(match["line"]), None if column is None else int(column)


class DataError(ValueError):
    """Bad input data, in one line: ``FILE:LINE: field 'x': what is wrong; how to fix``.

    ``LINE`` is the line the row starts on in a text file (JSON, JSON Lines, CSV;
    a ``:COLUMN`` follows when several rows of a JSON array start on one line) and
    the 1-based row number in tables without lines (Parquet, Arrow folders,
    in-memory data sets and lists). Every part is also an attribute, so callers
    can report it their own way.

    Args:
        problem: what is wrong (the whole message when nothing else is given, the
            form older callers use: ``DataError("spec: text")``).
        file: the file, folder or data set label.
        line: the line (or row) number, 1-based.
        column: the column within the line, 1-based.
        field: the offending field (``chosen``, ``chosen[0].role``, ...).
        fix: how to fix it.
    """

    def __init__(
        self,
        problem: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        self.fix = fix
        super().__init__(_render(_where(file, line, column), field, problem, fix))

    @classmethod
    def at(
        cls,
        source: str,
        problem: str,
        *,
        field: str | None = None,
        fix: str | None = None,
    ) -> "DataError":
        """The error for the row whose ``source`` is ``"FILE:LINE[:COLUMN]"``."""
        file, line, column = split_location(source)
        return cls(problem, file=file, line=line, column=column, field=field, fix=fix)

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_error, (
            self.problem,
            self.file,
            self.line,
            self.column,
            self.field,
            self.fix,
        )


def _rebuild_error(
    problem: str,
    file: str | None,
    line: int | None,
    column: int | None,
    field: str | None,
    fix: str | None,
) -> DataError:
    return DataError(problem, file=file, line=line, column=column, field=field, fix=fix)


class DataWarning(UserWarning):
    """Suspicious but usable data, one line per kind of problem and data set.

    The message reads like a :class:`DataError`, at the first row concerned; when
    more rows share the problem it says how many and where the next ones are.

    Args:
        kind: a short stable name of the problem (``blank-response``,
            ``duplicate``, ``hh-marker``, ``empty-prompt``, ``eval-overlap``).
        problem: what is suspicious.
        file, line, column, field, fix: as in :class:`DataError` (first row).
        others: the sources (``FILE:LINE``) of further rows with the same problem.
    """

    def __init__(
        self,
        kind: str,
        problem: str,
        *,
        file: str | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
        fix: str | None = None,
        others: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.problem = problem
        self.file = file
        self.line = line
        self.column = column
        self.field = field
        self.fix = fix
        self.others = tuple(others)
        super().__init__(
            _render(_where(file, line, column), field, problem, fix, self._count_text())
        )

    @property
    def count(self) -> int:
        """How many rows share the problem."""
        return 1 + len(self.others)

    @classmethod
    def at(
        cls,
        kind: str,
        source: str,
        problem: str,
        *,
        field: str | None = None,
        fix: str | None = None,
        others: Sequence[str] = (),
    ) -> "DataWarning":
        """The warning for the row whose ``source`` is ``"FILE:LINE[:COLUMN]"``."""
        file, line, column = split_location(source)
        return cls(
            kind,
            problem,
            file=file,
            line=line,
            column=column,
            field=field,
            fix=fix,
            others=others,
        )

    def _count_text(self, shown: int = 4) -> str:
        if not self.others:
            return ""
        names = [self._short(source) for source in self.others[:shown]]
        rest = len(self.others) - len(names)
        listed = ", ".join(names) + (f" and {rest} more" if rest else "")
        return f" ({self.count} rows; also {listed})"

    def _short(self, source: str) -> str:
        file, line, column = split_location(source)
        if file != self.file or line is None:
            return source
        return f"line {line}" if column is None else f"line {line}:{column}"

    def __reduce__(self) -> tuple[object, ...]:
        return _rebuild_warning, (
            self.kind,
            self.problem,
            self.file,
            self.line,
            self.column,
            self.field,
            self.fix,
            self.others,
        )


def _rebuild_warning(
    kind: str,
    problem: str,
    file: str | None,
    line: int | None,
    column: int | None,
    field: str | None,
    fix: str | None,
    others: tuple[str, ...],
) -> DataWarning:
    return DataWarning(
        kind,
        problem,
        file=file,
        line=line,
        column=column,
        field=field,
        fix=fix,
        others=others,
    )


__all__ = [
    "BatchError",
    "CompositionError",
    "ConfigError",
    "DataError",
    "DataWarning",
    "NonFiniteLossError",
    "RunLockedError",
    "TrainingInterrupted",
    "TrainingStopped",
    "split_location",
]
