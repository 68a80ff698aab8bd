"""Check a data set against an objective before anything else happens.

:func:`validate_dataset` is what a trainer calls first, before it creates a run
folder or loads a model: it loads every row, refuses bad data with one
:class:`~mipo.errors.DataError` (``FILE:LINE: field 'x': what; fix``), makes sure
every row carries the weight columns the objective's needs read
(:func:`mipo.data.columns.required_columns`), and reports suspicious data as
:class:`~mipo.errors.DataWarning` lines. A separate evaluation set goes through
the same function; given the training records it also warns about pairs that
appear in both.
"""

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from mipo.data.columns import NEED_COLUMNS, OPTIONAL_COLUMNS, required_columns
from mipo.data.errors import DataError, DataWarning
from mipo.data.load import Source, _pair_key, read_dataset
from mipo.data.records import PreferenceRecord
from mipo.needs import Need

_ATTRIBUTE_OF = {column: attribute for attribute, column in OPTIONAL_COLUMNS.items()}


def _emit(warning: DataWarning) -> None:
    warnings.warn(warning, stacklevel=3)


def validate_dataset(
    source: Source,
    *,
    needs: Iterable[Need] = (),
    required: Iterable[str] = (),
    column_map: Mapping[str, str] | None = None,
    max_examples: int = 0,
    seed: int = 0,
    split: str | None = None,
    name: str | None = None,
    revision: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
    data_dir: str | None = None,
    train_records: Sequence[PreferenceRecord] = (),
    warn: Callable[[DataWarning], None] | None = None,
) -> list[PreferenceRecord]:
    """Load ``source``, check it whole against ``needs`` and report its warnings.

    Args:
        source: anything :func:`mipo.data.load.load_records` reads.
        needs: ``objective.needs``; ``Need.TOKEN_WEIGHTS`` asks every row for
            ``chosen_weight``/``rejected_weight``, ``Need.KL_WEIGHTS`` for
            ``chosen_kl_weight``/``rejected_kl_weight`` (unless a mask model
            supplies them).
        required: further columns every row must have (e.g. ``"weight"``).
        column_map, max_examples, seed, split, name, revision, data_files,
            data_dir: as in :func:`mipo.data.load.load_records`.
        train_records: for an evaluation set, the training records; pairs in
            both give a warning.
        warn: receives each :class:`~mipo.errors.DataWarning` (one per kind);
            default :func:`warnings.warn`. A command-line entry point passes a
            function that prints ``mipo: warning: <warning>``.

    Returns:
        The records (a seeded subset of ``max_examples`` when given).

    Raises:
        DataError: any malformed row, or a column the objective needs that the
            data lacks.
    """
    loaded = read_dataset(
        source,
        column_map=column_map,
        max_examples=max_examples,
        seed=seed,
        split=split,
        name=name,
        revision=revision,
        data_files=data_files,
        data_dir=data_dir,
    )
    needed = (*required_columns(needs), *required)
    check_required(loaded.records, needed)
    report = list(loaded.warnings)
    overlap = overlap_warning(train_records, loaded.records)
    if overlap is not None:
        report.append(overlap)
    for warning in report:
        (warn or _emit)(warning)
    return loaded.records


def check_required(records: Sequence[PreferenceRecord], columns: Iterable[str]) -> None:
    """Refuse records that lack one of ``columns`` (weight column names).

    Raises:
        DataError: at the first row without it.
        ValueError: for a name that is not an optional column.
    """
    columns = tuple(dict.fromkeys(columns))
    need_of = {
        column: f"{need.value} comes from '{pair[0]}'/'{pair[1]}'"
        for need, pair in NEED_COLUMNS.items()
        for column in pair
    }
    for column in columns:
        if column not in _ATTRIBUTE_OF:
            raise ValueError(
                f"check_required: {column!r} is not an optional column "
                f"(known: {', '.join(sorted(_ATTRIBUTE_OF))})"
            )
    for column in columns:
        missing = [r for r in records if getattr(r, _ATTRIBUTE_OF[column]) is None]
        if missing:
            together = " and ".join(f"'{c}'" for c in columns)
            raise DataError.at(
                missing[0].source,
                f"missing on {len(missing)} of {len(records)} rows, and the "
                "objective reads it"
                + (f" ({need_of[column]})" if column in need_of else ""),
                field=column,
                fix=f"add {together} to every row"
                + (
                    " (one number per response token; `python -m mipo.weights estimate` writes them)"
                    if "weight" != column
                    else ""
                ),
            )


def overlap_warning(
    train: Sequence[PreferenceRecord], evaluation: Sequence[PreferenceRecord]
) -> DataWarning | None:
    """A warning naming the evaluation pairs that also appear in ``train``."""
    seen = {_pair_key(record): record.source for record in train}
    shared = [r for r in evaluation if _pair_key(r) in seen]
    if not shared:
        return None
    head = shared[0]
    return DataWarning.at(
        "eval-overlap",
        head.source,
        f"this evaluation pair is also a training pair ({seen[_pair_key(head)]}), "
        "so evaluation on it measures memorisation",
        fix="remove training pairs from the evaluation set",
        others=[r.source for r in shared[1:]],
    )


__all__ = ["check_required", "overlap_warning", "validate_dataset"]
