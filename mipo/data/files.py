"""Read the rows of a local data file or folder, each with its ``FILE:LINE``.

What a path holds is told from its bytes where the bytes can tell:

- gzip (magic ``1f 8b``) is decompressed first, whatever the name says; a
  truncated or corrupt archive is a :class:`DataError` naming the file;
- Parquet (magic ``PAR1``) is read as a table: one row per table row, numbered
  from 1;
- a name ending in ``.csv`` or ``.tsv`` (before any ``.gz``) is read as a table
  with a header line; cells are text, the weight columns hold JSON lists
  (``[1.0, 0.5]``) and ``weight`` a number, an empty cell is an absent value;
- anything else is JSON: a single array of rows (``.json`` style) or a sequence
  of objects (JSON Lines, one per line, or pretty-printed one after another),
  told apart by the content, not the extension;
- a folder written by ``datasets``' ``save_to_disk`` (a ``Dataset``, or a
  ``DatasetDict`` whose ``split`` is chosen) is loaded with ``datasets``; any
  other folder is an error that lists the data files inside it.

Text is UTF-8; a byte-order mark at the start is skipped, UTF-16/32 and invalid
UTF-8 are errors naming the line and column.
"""

import bisect
import csv
import gzip
import io
import json
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

from mipo.data.cells import TextCells
from mipo.data.errors import DataError

Row = tuple[str, object]
"""``(source, row)``: where the row is (``FILE:LINE``) and the parsed row."""

DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".tsv", ".gz", ".arrow")
"""Suffixes that mark a spec as a local path (even one that does not exist)."""

_UTF8_BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = {
    b"\xff\xfe\x00\x00": "UTF-32",
    b"\x00\x00\xfe\xff": "UTF-32",
    b"\xff\xfe": "UTF-16",
    b"\xfe\xff": "UTF-16",
}
_READABLE = "JSON, JSON Lines, CSV/TSV (.csv, .tsv), Parquet or a save_to_disk folder"
_NOT_SPACE = re.compile(r"\S")


def file_rows(path: Path, label: str, *, split: str | None = None) -> Iterator[Row]:
    """Every row of the file or folder ``path``; ``label`` names it in sources."""
    if path.is_dir():
        yield from _folder_rows(path, label, split)
        return
    if split is not None:
        raise DataError(
            "a split applies to a save_to_disk folder or a hub data set, not a file",
            file=label,
            fix="drop the split option",
        )
    data = _read_bytes(path, label)
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, label)
    name = path.name.lower().removesuffix(".gz")
    if data[:4] == b"PAR1":
        yield from _parquet_rows(data, label)
    elif name.endswith(".parquet"):
        raise DataError(
            "is not a Parquet file (it does not start with the PAR1 magic bytes)",
            file=label,
            fix="write it with pandas' to_parquet or pyarrow, or fix the extension",
        )
    elif name.endswith((".csv", ".tsv")):
        delimiter = "\t" if name.endswith(".tsv") else ","
        yield from _csv_rows(_text(data, label), label, delimiter)
    else:
        yield from _json_rows(_text(data, label), label)


def _read_bytes(path: Path, label: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(
            f"cannot read the file ({error.strerror or error})",
            file=label,
            fix="check the path and its permissions",
        ) from None


def _gunzip(data: bytes, label: str) -> bytes:
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as error:
        raise DataError(
            f"truncated or corrupt gzip data ({error})",
            file=label,
            fix="download or compress the file again",
        ) from None


def _text(data: bytes, label: str) -> str:
    for bom, encoding in _WIDE_BOMS.items():
        if data.startswith(bom) and not data.startswith(_UTF8_BOM):
            raise DataError(
                f"the file is {encoding} encoded",
                file=label,
                line=1,
                fix="save it as UTF-8",
            )
    data = data.removeprefix(_UTF8_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(
            f"invalid UTF-8 (byte 0x{data[error.start]:02x}: {error.reason})",
            file=label,
            line=line,
            column=column,
            fix="save the file as UTF-8",
        ) from None


class _Lines:
    """Offsets -> 1-based line and column numbers of one text."""

    def __init__(self, text: str) -> None:
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line(self, offset: int) -> int:
        return bisect.bisect_right(self.starts, offset)

    def column(self, offset: int) -> int:
        return offset - self.starts[self.line(offset) - 1] + 1


def _skip_space(text: str, position: int) -> int:
    match = _NOT_SPACE.search(text, position)
    return len(text) if match is None else match.start()


def _invalid_json(error: json.JSONDecodeError, label: str) -> DataError:
    return DataError(
        f"invalid JSON ({error.msg})",
        file=label,
        line=error.lineno,
        column=error.colno,
        fix="fix the JSON syntax there",
    )


def _json_rows(text: str, label: str) -> Iterator[Row]:
    start = _skip_space(text, 0)
    if start == len(text):
        raise DataError(
            "the file is empty",
            file=label,
            fix=f"give preference pairs as {_READABLE}",
        )
    first = text[start]
    if first == "[":
        yield from _array_rows(text, start, label)
    elif first == "{":
        yield from _object_rows(text, label)
    else:
        lines = _Lines(text)
        raise DataError(
            f"not JSON rows (the file starts with {text[start : start + 12]!r})",
            file=label,
            line=lines.line(start),
            column=lines.column(start),
            fix=f"give preference pairs as {_READABLE}",
        )


def _array_rows(text: str, start: int, label: str) -> Iterator[Row]:
    """The elements of one JSON array, each at the line (and, when several share
    a line, the column) where it starts."""
    decoder = json.JSONDecoder()
    lines = _Lines(text)
    found: list[tuple[int, object]] = []
    position = _skip_space(text, start + 1)
    try:
        if position < len(text) and text[position] == "]":
            position += 1
        else:
            while True:
                value, end = decoder.raw_decode(text, position)
                found.append((position, value))
                position = _skip_space(text, end)
                if position < len(text) and text[position] == "]":
                    position += 1
                    break
                if position >= len(text) or text[position] != ",":
                    raise json.JSONDecodeError(
                        "Expecting ',' delimiter or ']'", text, position
                    )
                position = _skip_space(text, position + 1)
    except json.JSONDecodeError as error:
        raise _invalid_json(error, label) from None
    except RecursionError:
        raise DataError(
            "JSON nested too deeply", file=label, fix="flatten the rows"
        ) from None
    rest = _skip_space(text, position)
    if rest < len(text):
        raise DataError(
            "extra data after the JSON array",
            file=label,
            line=lines.line(rest),
            column=lines.column(rest),
            fix="keep one array of rows per file, or write one object per line "
            "(JSON Lines)",
        )
    row_lines = [lines.line(offset) for offset, _ in found]
    crowded = {n for n in row_lines if row_lines.count(n) > 1} if found else set()
    for (offset, value), line in zip(found, row_lines, strict=True):
        column = f":{lines.column(offset)}" if line in crowded else ""
        yield f"{label}:{line}{column}", value


def _object_rows(text: str, label: str) -> Iterator[Row]:
    """JSON Lines (one value per line); if the first line is not a value on its
    own, JSON values one after another (pretty-printed objects)."""
    split = text.splitlines()
    first = next(i for i, line in enumerate(split) if line.strip())
    try:
        json.loads(split[first])
    except (json.JSONDecodeError, RecursionError):
        yield from _concatenated_rows(text, label)
        return
    for number, line in enumerate(split, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(
                f"invalid JSON ({error.msg})",
                file=label,
                line=number,
                column=error.colno,
                fix="fix the JSON syntax there (JSON Lines: one object per line)",
            ) from None
        except RecursionError:
            raise DataError(
                "JSON nested too deeply", file=label, line=number, fix="flatten the row"
            ) from None
        yield f"{label}:{number}", value


def _concatenated_rows(text: str, label: str) -> Iterator[Row]:
    decoder = json.JSONDecoder()
    lines = _Lines(text)
    position = _skip_space(text, 0)
    found = []
    try:
        while position < len(text):
            value, end = decoder.raw_decode(text, position)
            found.append((f"{label}:{lines.line(position)}", value))
            position = _skip_space(text, end)
    except json.JSONDecodeError as error:
        raise _invalid_json(error, label) from None
    except RecursionError:
        raise DataError(
            "JSON nested too deeply", file=label, fix="flatten the rows"
        ) from None
    yield from found


def _csv_rows(text: str, label: str, delimiter: str) -> Iterator[Row]:
    limit = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            header = next(reader, None)
        except csv.Error as error:
            raise DataError(
                f"unreadable header ({error})", file=label, line=1, fix="fix the header"
            ) from None
        if not header or not any(cell.strip() for cell in header):
            raise DataError(
                "no header line",
                file=label,
                line=1,
                fix="start the file with the column names, e.g. prompt,chosen,rejected",
            )
        names = [cell.strip() for cell in header]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise DataError(
                f"the header names {', '.join(map(repr, twice))} more than once",
                file=label,
                line=1,
                fix="give every column its own name",
            )
        rows = []
        while True:
            line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as error:
                raise DataError(
                    f"unreadable row ({error})",
                    file=label,
                    line=reader.line_num,
                    fix="fix the quoting there",
                ) from None
            if not any(cells):
                continue
            source = f"{label}:{line}"
            if len(cells) != len(names):
                raise DataError.at(
                    source,
                    f"the row has {len(cells)} cells but the header has "
                    f"{len(names)} columns",
                    fix="quote cells that contain the delimiter or line breaks",
                )
            rows.append((source, TextCells(zip(names, cells, strict=True))))
    finally:
        csv.field_size_limit(limit)
    yield from rows


def _parquet_rows(data: bytes, label: str) -> Iterator[Row]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            "reading Parquet needs the 'pyarrow' package",
            file=label,
            fix="pip install pyarrow (it comes with datasets)",
        ) from None
    try:
        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    except (pa.ArrowException, OSError, ValueError, TypeError) as error:
        raise DataError(
            f"unreadable Parquet ({str(error).splitlines()[0] if str(error) else type(error).__name__})",
            file=label,
            fix="write it again with pandas' to_parquet or pyarrow",
        ) from None
    for number, row in enumerate(rows, start=1):
        yield f"{label}:{number}", row


_DATASET_MARKERS = ("dataset_info.json", "state.json")
_DATASET_DICT_MARKER = "dataset_dict.json"


def _folder_rows(path: Path, label: str, split: str | None) -> Iterator[Row]:
    is_dict = (path / _DATASET_DICT_MARKER).is_file()
    if not is_dict and not all((path / m).is_file() for m in _DATASET_MARKERS):
        found = sorted(
            p.name
            for p in path.iterdir()
            if p.is_file() and p.name.lower().endswith(DATA_SUFFIXES)
        )
        inside = f" (data files inside: {', '.join(found[:5])})" if found else ""
        raise DataError(
            f"is a folder, not a data file, and not one written by datasets' "
            f"save_to_disk{inside}",
            file=label,
            fix="pass one data file, or a folder written by save_to_disk",
        )
    from mipo.data.datasets_io import dataset_rows, load_from_disk

    loaded = load_from_disk(path, label)
    if is_dict:
        yield from dataset_rows(loaded, label, split=split)
    else:
        if split is not None:
            raise DataError(
                f"the folder holds one Dataset, not a DatasetDict, so split {split!r} "
                "does not apply",
                file=label,
                fix="drop the split option",
            )
        yield from dataset_rows(loaded, label)


__all__ = ["DATA_SUFFIXES", "Row", "file_rows"]
