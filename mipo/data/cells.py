"""Rows whose cells are all text (CSV, TSV) and how their number columns are read.

A CSV cell has no type, so the weight columns are parsed after the column map
has renamed the row (a column ``w`` mapped to ``chosen_weight`` is read as
weights): ``chosen_weight`` and the other per-token columns hold a JSON list
(``"[1.0, 0.5]"``), ``weight`` a number; an empty cell is an absent value. Every
other cell stays text.
"""

import json

from mipo.data.columns import EXAMPLE_WEIGHT_COLUMN, WEIGHT_COLUMNS
from mipo.data.errors import DataError

_LIST_COLUMNS = frozenset(WEIGHT_COLUMNS.values())


class TextCells(dict[str, str]):
    """A row read from a text table; :func:`typed_cells` converts its numbers."""


def typed_cells(row: dict[object, object], source: str) -> dict[object, object]:
    """``row`` with the weight columns parsed from text (rules above)."""
    out = dict(row)
    for name in (*_LIST_COLUMNS, EXAMPLE_WEIGHT_COLUMN):
        cell = out.get(name)
        if isinstance(cell, str):
            out[name] = _value(cell, name, source)
    return out


def _value(cell: str, name: str, source: str) -> object:
    if not cell.strip():
        return None
    if name == EXAMPLE_WEIGHT_COLUMN:
        try:
            return float(cell)
        except ValueError:
            raise DataError.at(
                source,
                f"must be a number, got {cell[:40]!r}",
                field=name,
                fix="write a number such as 0.5",
            ) from None
    try:
        value = json.loads(cell)
    except (json.JSONDecodeError, RecursionError):
        value = None
    if not isinstance(value, list):
        raise DataError.at(
            source,
            f"must be a JSON list of numbers, got {cell[:40]!r}",
            field=name,
            fix='write it as "[1.0, 0.5]" (quoted, so its commas stay in the cell)',
        )
    return value


__all__ = ["TextCells", "typed_cells"]
