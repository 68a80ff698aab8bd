"""Load preference records from a file, a folder, a data set object, the hub or
the built-in task.

``source`` is one of:

- a local file: JSON (an array of rows), JSON Lines (one object per line), CSV or
  TSV (``.csv``, ``.tsv``), Parquet; gzip-compressed or not (rules in
  :mod:`mipo.data.files`);
- a folder written by ``datasets``' ``save_to_disk`` (``Dataset`` or
  ``DatasetDict``);
- ``builtin:arithmetic`` (optionally ``builtin:arithmetic?n=600&seed=0``), the
  generated task of :mod:`mipo.data.builtin`;
- a ``datasets.Dataset``, ``DatasetDict`` or ``IterableDataset`` object, or a
  list of dicts (Python API);
- a Hugging Face hub name, ``NAME`` or ``NAME?split=test&name=CONFIG&revision=REV
  &data_dir=DIR&data_files=A,B`` (the same options are keyword arguments); on an
  offline machine only a cached data set loads, anything else fails at once.

Each row goes through :func:`mipo.data.formats.record_from_row`, which detects the
format from its keys. Then the whole data set is checked at once: an optional
column (a weight) given on some rows must be given on all of them, so a missing
weight is found before any training step, not in the middle of an epoch.
Duplicated pairs and the row-level oddities of :mod:`mipo.data.formats` become
:class:`~mipo.errors.DataWarning` values, one per kind, in
:attr:`LoadedDataset.warnings`.
"""

import json
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final
from urllib.parse import parse_qsl

from mipo.data.builtin import BUILTIN_PREFIX, load_builtin
from mipo.data.columns import OPTIONAL_COLUMNS
from mipo.data.datasets_io import dataset_rows, hub_rows, is_dataset, list_rows
from mipo.data.errors import DataError, DataWarning
from mipo.data.files import DATA_SUFFIXES, Row, file_rows
from mipo.data.formats import record_from_row
from mipo.data.records import PreferenceRecord
from mipo.errors import split_location

Source = str | os.PathLike[str] | Sequence[Mapping[str, Any]] | Any
"""A spec string or path, a ``datasets`` object, or a list of dicts."""

HUB_OPTIONS = ("split", "name", "revision", "data_files", "data_dir")
"""Options of a hub spec (``NAME?split=...``) and keyword arguments of the loaders."""

_PATH_STARTS = ("/", "./", "../", "~", ".\\", "..\\")


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class LoadedDataset:
    """Records of one data set and the warnings about it.

    Args:
        records: the preference pairs, in file order (a seeded subset when
            ``max_examples`` was given).
        warnings: one :class:`~mipo.errors.DataWarning` per kind of suspicious
            data, each naming its first row and counting the others.
        label: how the data set is named in sources (the path as given, a hub
            name, ``<rows>`` for a list).
    """

    records: list[PreferenceRecord]
    warnings: tuple[DataWarning, ...]
    label: str


def load_records(
    source: Source,
    *,
    column_map: Mapping[str, str] | None = None,
    max_examples: int = 0,
    seed: int = 0,
    split: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
    data_dir: str | None = None,
) -> list[PreferenceRecord]:
    """Load every pair named by ``source`` as :class:`PreferenceRecord` objects.

    Warnings are dropped here; :func:`read_dataset` returns them and
    :func:`mipo.data.validate.validate_dataset` reports them.

    Args:
        source: see the module docstring.
        column_map: renames ``{column in the data: field mipo reads}`` before
            format detection, e.g. ``{"question": "prompt", "response_j":
            "chosen", "response_k": "rejected"}``
            (:func:`mipo.data.columns.parse_column_map` reads the command-line
            form ``prompt=question,chosen=response_j``).
        max_examples: keep at most this many pairs (0: all), chosen by a seeded
            random draw and returned in file order.
        seed: seeds the ``max_examples`` draw.
        split: the split of a ``DatasetDict`` (object or folder) or hub data set;
            default ``train``.
        name: the hub data set's configuration.
        revision: the hub data set's revision (branch, tag or commit).
        data_files: the hub data set's ``data_files``.
        data_dir: the hub data set's ``data_dir``.

    Raises:
        DataError: anything wrong with the data; the message names the file, the
            line (or row) and the field.
    """
    return read_dataset(
        source,
        column_map=column_map,
        max_examples=max_examples,
        seed=seed,
        split=split,
        name=name,
        revision=revision,
        data_files=data_files,
        data_dir=data_dir,
    ).records


def read_dataset(
    source: Source,
    *,
    column_map: Mapping[str, str] | None = None,
    max_examples: int = 0,
    seed: int = 0,
    split: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
    data_dir: str | None = None,
) -> LoadedDataset:
    """:func:`load_records` that also returns the warnings (arguments alike)."""
    if max_examples < 0:
        raise ValueError(f"load_records: max_examples must be >= 0, got {max_examples}")
    hub = {
        "split": split,
        "name": name,
        "revision": revision,
        "data_files": data_files,
        "data_dir": data_dir,
    }
    notes: list[DataWarning] = []
    label = _label(source)
    if isinstance(source, str) and source.startswith(BUILTIN_PREFIX):
        _no_options(label, hub)
        if column_map:
            raise DataError(
                "a column map does not apply to built-in tasks",
                file=label,
                fix="drop the column map",
            )
        records = load_builtin(source)
    else:
        records = _records(_rows(source, label, hub), column_map, notes.append)
    if not records:
        raise DataError(
            "no preference pairs found",
            file=label,
            fix="give at least one row with chosen and rejected responses",
        )
    check_columns(records)
    notes.extend(_duplicates(records))
    if 0 < max_examples < len(records):
        keep = sorted(random.Random(seed).sample(range(len(records)), max_examples))
        records = [records[i] for i in keep]
    return LoadedDataset(records=records, warnings=merge_warnings(notes), label=label)


def _records(
    rows: Iterator[Row],
    column_map: Mapping[str, str] | None,
    warn: Callable[[DataWarning], None],
) -> list[PreferenceRecord]:
    records = []
    for number, (where, row) in enumerate(rows):
        try:
            records.append(
                record_from_row(row, source=where, column_map=column_map, warn=warn)
            )
        except DataError:
            if number == 0:
                _not_a_container(where, row)
            raise
    return records


def _not_a_container(source: str, row: object) -> None:
    """Explain a first row that is an object wrapping the rows (``{"train": [...]}``)."""
    if not isinstance(row, dict):
        return
    wrapped = sorted(
        str(key)
        for key, value in row.items()
        if isinstance(value, list)
        and value
        and all(isinstance(v, dict) for v in value)
        and not {"role", "content", "from", "value"} & value[0].keys()
    )
    if wrapped:
        raise DataError.at(
            source,
            f"this row is an object whose {', '.join(map(repr, wrapped[:3]))} holds "
            "a list of objects: the rows seem to be wrapped in it",
            fix="put the rows in a top-level JSON array, or one object per line",
        )


def _label(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    if is_dataset(source):
        return f"<{type(source).__name__}>"
    return "<rows>"


def _no_options(label: str, options: Mapping[str, object], allowed: str = "") -> None:
    for key, value in options.items():
        if value is not None and key != allowed:
            raise DataError(
                f"option '{key}' applies to hub data sets only",
                file=label,
                fix=f"drop '{key}'",
            )


def _rows(source: Source, label: str, hub: dict[str, Any]) -> Iterator[Row]:
    if is_dataset(source):
        _no_options(label, hub, allowed="split")
        return dataset_rows(source, label, split=hub["split"])
    if isinstance(source, list | tuple):
        _no_options(label, hub)
        return list_rows(source, label)
    if not isinstance(source, str | os.PathLike):
        raise DataError(
            f"cannot read preference data from a {type(source).__name__}",
            file=label,
            fix="pass a path, builtin:NAME, a hub name, a datasets.Dataset or "
            "DatasetDict, or a list of dicts",
        )
    if not label.strip():
        raise DataError(
            "the data set name is empty",
            file=repr(label),
            fix="pass a file, a folder, builtin:NAME or a hub name",
        )
    path = Path(label).expanduser()
    if _exists(path):
        _no_options(label, hub, allowed="split")
        return file_rows(path, label, split=hub["split"])
    if (
        isinstance(source, os.PathLike)
        or label.partition("?")[0].lower().endswith(DATA_SUFFIXES)
        or label.startswith(_PATH_STARTS)
    ):
        raise DataError(
            "no such file or folder",
            file=label,
            fix="check the path (data files end in "
            f"{', '.join(DATA_SUFFIXES)}; hub names look like ORG/NAME)",
        )
    name, options = _hub_spec(label, hub)
    return hub_rows(name, **options)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # a name too long, an embedded NUL byte
        return False


def _hub_spec(spec: str, given: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``NAME?key=value&...`` -> ``(NAME, options)``; keyword options must not
    repeat the spec's."""
    name, _, query = spec.partition("?")
    options = {
        "split": given["split"],
        "config": given["name"],
        "revision": given["revision"],
        "data_files": given["data_files"],
        "data_dir": given["data_dir"],
    }
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in HUB_OPTIONS:
            raise DataError(
                f"unknown option '{key}'",
                file=spec,
                fix=f"use {', '.join(HUB_OPTIONS)}",
            )
        target = "config" if key == "name" else key
        if options[target] is not None:
            raise DataError(
                f"option '{key}' is given twice (in the spec and as an argument)",
                file=spec,
                fix="give it once",
            )
        options[target] = value.split(",") if key == "data_files" else value
    return name, options


def check_columns(records: Sequence[PreferenceRecord]) -> None:
    """Refuse an optional column (a weight) that some rows give and others lack.

    Raises:
        DataError: at the first row that lacks it, with how many rows have it.
    """
    for attribute, column in OPTIONAL_COLUMNS.items():
        missing = [r for r in records if getattr(r, attribute) is None]
        if 0 < len(missing) < len(records):
            raise DataError.at(
                missing[0].source,
                f"missing on this row, but {len(records) - len(missing)} of "
                f"{len(records)} rows have it ({len(missing)} lack it)",
                field=column,
                fix="give it on every row or on none",
            )


def _pair_key(record: PreferenceRecord) -> str:
    return json.dumps(
        [record.prompt, record.chosen, record.rejected], ensure_ascii=False
    )


def _duplicates(records: Sequence[PreferenceRecord]) -> Iterator[DataWarning]:
    first: dict[str, str] = {}
    for record in records:
        key = _pair_key(record)
        if key in first:
            yield DataWarning.at(
                "duplicate",
                record.source,
                "the same pair (prompt, chosen and rejected) as "
                + _near(first[key], record.source),
                fix="drop repeated pairs unless the repetition is meant as a weight",
            )
        else:
            first[key] = record.source


def _near(source: str, here: str) -> str:
    """``source``, shortened to ``line N`` when it is in the same file as ``here``."""
    file, line, column = split_location(source)
    if line is None or file != split_location(here)[0]:
        return source
    return f"line {line}" + ("" if column is None else f":{column}")


def merge_warnings(notes: Sequence[DataWarning]) -> tuple[DataWarning, ...]:
    """One warning per kind: the first row's, counting the rows after it."""
    groups: dict[str, list[DataWarning]] = {}
    for note in notes:
        groups.setdefault(note.kind, []).append(note)
    merged = []
    for kind, group in groups.items():
        head = group[0]
        others = [
            source for note in group[1:] for source in (_source(note), *note.others)
        ]
        merged.append(
            DataWarning(
                kind,
                head.problem,
                file=head.file,
                line=head.line,
                column=head.column,
                field=head.field,
                fix=head.fix,
                others=[*head.others, *others],
            )
        )
    return tuple(merged)


def _source(note: DataWarning) -> str:
    parts = [note.file or ""]
    parts += [str(n) for n in (note.line, note.column) if n is not None]
    return ":".join(parts)


__all__ = [
    "HUB_OPTIONS",
    "LoadedDataset",
    "check_columns",
    "load_records",
    "merge_warnings",
    "read_dataset",
]
