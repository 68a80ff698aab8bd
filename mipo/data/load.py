"""Load preference records from a file, the built-in task or a hub dataset.

``spec`` is one of:

- a local ``.json`` file (a JSON array of rows), or a ``.jsonl`` file (one JSON
  object per line, blank lines skipped), either optionally gzip-compressed
  (``.json.gz``, ``.jsonl.gz``; gzip is recognised by its magic bytes);
- ``builtin:arithmetic`` (optionally ``builtin:arithmetic?n=600&seed=0``), the
  generated task of :mod:`mipo.data.builtin`;
- a Hugging Face dataset name, only where the ``datasets`` package is installed and
  the hub is reachable (never in tests; the project's machines are offline).

Each row goes through :func:`mipo.data.formats.record_from_row`, which detects the
format from its keys. Errors name the file and the line (JSON lines, 1-based) or
index (JSON array, 0-based).
"""

import gzip
import json
import random
from collections.abc import Iterator, Mapping
from pathlib import Path

from mipo.data.builtin import BUILTIN_PREFIX, load_builtin
from mipo.data.errors import DataError
from mipo.data.formats import record_from_row
from mipo.data.records import PreferenceRecord

_FILE_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


def load_records(
    spec: str,
    *,
    column_map: dict[str, str] | None = None,
    max_examples: int = 0,
    seed: int = 0,
) -> list[PreferenceRecord]:
    """Load every pair named by ``spec`` as :class:`PreferenceRecord` objects.

    Args:
        spec: a file path, ``builtin:NAME[?key=value&...]`` or a hub dataset name.
        column_map: renames row keys before format detection, e.g.
            ``{"question": "prompt", "response_j": "chosen", "response_k":
            "rejected"}``.
        max_examples: keep at most this many pairs (0: all), chosen by a seeded
            random draw and returned in file order.
        seed: seeds the ``max_examples`` draw.

    Raises:
        DataError: a missing file, unreadable JSON or a malformed row (the message
            names file, line or index, and field).
    """
    if max_examples < 0:
        raise ValueError(f"load_records: max_examples must be >= 0, got {max_examples}")
    if spec.startswith(BUILTIN_PREFIX):
        records = load_builtin(spec)
        if column_map:
            raise DataError(f"{spec}: column_map does not apply to built-in tasks")
    else:
        path = Path(spec).expanduser()
        if path.is_file():
            records = [
                record_from_row(row, source=source, column_map=column_map)
                for source, row in _rows(path)
            ]
        elif path.suffix in (".json", ".jsonl", ".gz") or path.exists():
            raise DataError(
                f"{spec}: no such file (expected a file ending in "
                f"{', '.join(_FILE_SUFFIXES)})"
            )
        else:
            records = _from_hub(spec, column_map)
    if not records:
        raise DataError(f"{spec}: no preference pairs found")
    if 0 < max_examples < len(records):
        keep = sorted(random.Random(seed).sample(range(len(records)), max_examples))
        records = [records[i] for i in keep]
    return records


def _rows(path: Path) -> Iterator[tuple[str, object]]:
    """Yield ``(source, row)`` for every row of a JSON or JSON-lines file."""
    with path.open("rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if compressed else open
    name = path.name.removesuffix(".gz")
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            if name.endswith(".jsonl"):
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise DataError(
                            f"{path}:{number}: invalid JSON ({error.msg}, "
                            f"column {error.colno})"
                        ) from None
                    yield f"{path.name}:{number}", row
                return
            if not name.endswith(".json"):
                raise DataError(
                    f"{path}: unknown file type (expected {', '.join(_FILE_SUFFIXES)})"
                )
            try:
                document = json.load(handle)
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}: invalid JSON ({error.msg}, line {error.lineno}, "
                    f"column {error.colno})"
                ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    if not isinstance(document, list):
        raise DataError(
            f"{path}: a .json file must hold a JSON array of rows, "
            f"got {type(document).__name__} (use .jsonl for one object per line)"
        )
    for index, row in enumerate(document):
        yield f"{path.name}[{index}]", row


def _from_hub(
    spec: str, column_map: Mapping[str, str] | None
) -> list[PreferenceRecord]:
    try:
        import datasets  # optional; not a dependency of mipo
    except ImportError:
        raise DataError(
            f"{spec}: not a local file and not builtin:..., and the 'datasets' "
            "package is not installed, so it cannot be read as a Hugging Face "
            "dataset. Pass a .json/.jsonl/.jsonl.gz path or builtin:arithmetic."
        ) from None
    try:
        table = datasets.load_dataset(spec, split="train")
    except Exception as error:  # the hub raises many types; report them as one
        raise DataError(
            f"{spec}: could not load it as a Hugging Face dataset ({error}); "
            "offline machines need a local file"
        ) from error
    return [
        record_from_row(dict(row), source=f"{spec}[{index}]", column_map=column_map)
        for index, row in enumerate(table)
    ]


__all__ = ["load_records"]
