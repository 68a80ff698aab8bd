"""Column names: what the loader reads, what the objective needs, and the
command-line column map.

Optional columns of a row and the :class:`~mipo.data.records.PreferenceRecord`
field each fills:

| column               | record field             | read by the need          |
|----------------------|--------------------------|---------------------------|
| ``chosen_weight``    | ``chosen_token_weights`` | ``Need.TOKEN_WEIGHTS``    |
| ``rejected_weight``  | ``rejected_token_weights`` | ``Need.TOKEN_WEIGHTS``  |
| ``chosen_kl_weight`` | ``chosen_kl_weights``    | ``Need.KL_WEIGHTS``       |
| ``rejected_kl_weight`` | ``rejected_kl_weights`` | ``Need.KL_WEIGHTS``      |
| ``weight``           | ``example_weight``       | (always used when given)  |

An objective whose masks come from a model (``Need.REFERENCE_ACTIVATIONS``,
``Need.REFERENCE_HIDDEN_LAYERS``) fills ``token_weights`` / ``kl_weights`` itself
and needs no weight column.
"""

from collections.abc import Iterable, Mapping

from mipo.data.errors import DataError
from mipo.needs import Need

WEIGHT_COLUMNS: Mapping[str, str] = {
    "chosen_token_weights": "chosen_weight",
    "rejected_token_weights": "rejected_weight",
    "chosen_kl_weights": "chosen_kl_weight",
    "rejected_kl_weights": "rejected_kl_weight",
}
"""Record field -> the per-token weight column the loader reads into it."""

EXAMPLE_WEIGHT_COLUMN = "weight"
"""The per-pair weight column (record field ``example_weight``)."""

OPTIONAL_COLUMNS: Mapping[str, str] = {
    **WEIGHT_COLUMNS,
    "example_weight": EXAMPLE_WEIGHT_COLUMN,
}
"""Every optional record field -> its column."""

NEED_COLUMNS: Mapping[Need, tuple[str, str]] = {
    Need.TOKEN_WEIGHTS: ("chosen_weight", "rejected_weight"),
    Need.KL_WEIGHTS: ("chosen_kl_weight", "rejected_kl_weight"),
}
"""The data columns that serve a need (chosen side, rejected side)."""

MODEL_MASK_NEEDS = frozenset({Need.REFERENCE_ACTIVATIONS, Need.REFERENCE_HIDDEN_LAYERS})
"""Needs whose mask model writes ``token_weights`` / ``kl_weights``; with one of
them no weight column is read."""

KNOWN_FIELDS = frozenset(
    {
        "prompt",
        "chosen",
        "rejected",
        "conversations",
        "question",
        "response_j",
        "response_k",
        *OPTIONAL_COLUMNS.values(),
    }
)
"""Every column name the loader understands (targets of a column map)."""


def required_columns(needs: Iterable[Need]) -> tuple[str, ...]:
    """The weight columns every row must have for an objective with ``needs``.

    >>> from mipo.needs import Need
    >>> required_columns({Need.TOKEN_WEIGHTS, Need.REFERENCE_LOGPS})
    ('chosen_weight', 'rejected_weight')
    >>> required_columns({Need.TOKEN_WEIGHTS, Need.REFERENCE_ACTIVATIONS})
    ()
    """
    needs = frozenset(needs)
    if needs & MODEL_MASK_NEEDS:
        return ()
    return tuple(
        column
        for need, columns in NEED_COLUMNS.items()
        if need in needs
        for column in columns
    )


def missing_column_hint(need: Need) -> str:
    """The message for a trainer that finds ``need`` unserved by the data; it
    names the columns the loader really reads.

    >>> from mipo.needs import Need
    >>> print(missing_column_hint(Need.TOKEN_WEIGHTS))
    the objective needs token_weights, but the data set has no such column: add 'chosen_weight' and 'rejected_weight' (one number per response token) to every row
    """
    if need not in NEED_COLUMNS:
        raise ValueError(f"missing_column_hint: {need} is not read from data columns")
    chosen, rejected = NEED_COLUMNS[need]
    return (
        f"the objective needs {need.value}, but the data set has no such column: "
        f"add '{chosen}' and '{rejected}' (one number per response token) to every "
        "row"
    )


def parse_column_map(text: str) -> dict[str, str]:
    """Parse a command-line column map ``FIELD=COLUMN,...`` into the loader's
    ``{column in the file: field mipo reads}`` form.

    >>> parse_column_map("chosen=better, rejected=worse")
    {'better': 'chosen', 'worse': 'rejected'}
    >>> parse_column_map("")
    {}

    Raises:
        DataError: an entry without ``=``, an empty name, a field mipo does not
            read, or a field or column named twice.
    """
    out: dict[str, str] = {}
    fix = "write FIELD=COLUMN pairs separated by commas, e.g. chosen=better,rejected=worse"
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        field, equals, column = (piece.strip() for piece in entry.partition("="))
        if not equals or not field or not column:
            raise DataError(
                f"entry {entry!r} is not FIELD=COLUMN",
                file="column map",
                fix=fix,
            )
        if field not in KNOWN_FIELDS:
            raise DataError(
                f"entry {entry!r}: '{field}' is not a field mipo reads",
                file="column map",
                fix=f"use one of {', '.join(sorted(KNOWN_FIELDS))}",
            )
        if field in out.values():
            raise DataError(
                f"field '{field}' is mapped twice", file="column map", fix=fix
            )
        if column in out:
            raise DataError(
                f"column '{column}' is mapped twice", file="column map", fix=fix
            )
        out[column] = field
    return out


__all__ = [
    "EXAMPLE_WEIGHT_COLUMN",
    "KNOWN_FIELDS",
    "MODEL_MASK_NEEDS",
    "NEED_COLUMNS",
    "OPTIONAL_COLUMNS",
    "WEIGHT_COLUMNS",
    "missing_column_hint",
    "parse_column_map",
    "required_columns",
]
