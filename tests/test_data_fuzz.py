"""Fuzz the loaders: whatever the bytes or rows, the only exception is DataError.

Four routes in: rows that are almost valid (every field of every format, each
either well-formed or replaced by an arbitrary JSON value) through
``record_from_row``; whole files in every container (JSON, JSON Lines, CSV, TSV,
Parquet, gzip) with their bytes cut, flipped, prefixed with a BOM or broken in
the middle; arbitrary text files; and Python lists of arbitrary values. A
``KeyError``, ``TypeError``, ``UnicodeDecodeError``, ``EOFError``,
``JSONDecodeError`` or any other exception escaping fails the test.
"""

import csv
import gzip
import io
import json
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given

from mipo.data import DataError, PreferenceRecord, read_dataset
from mipo.data.formats import record_from_row

FIELDS = [
    "prompt",
    "chosen",
    "rejected",
    "conversations",
    "question",
    "response_j",
    "response_k",
    "chosen_weight",
    "rejected_weight",
    "chosen_kl_weight",
    "rejected_kl_weight",
    "weight",
    "role",
    "content",
    "from",
    "value",
]
ROLES = ["user", "assistant", "system", "robot", "human", "gpt", "tool", ""]

text = st.lists(
    st.sampled_from(
        ["a", "b", " ", "\n", "\t", ":", "?", "\n\nHuman:", "\n\nAssistant:"]
    ),
    max_size=6,
).map("".join)
numbers = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e308, -1e308, 3.5e38, 1e-320, 0.0]),
)
json_scalars = st.one_of(st.none(), st.booleans(), numbers, text)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), text), inner, max_size=4),
    ),
    max_leaves=12,
)


def message(key_role: str, key_content: str, roles: list[str]) -> st.SearchStrategy:
    good = st.fixed_dictionaries({key_role: st.sampled_from(roles), key_content: text})
    return st.one_of(good, good, json_values)


messages = st.lists(message("role", "content", ROLES), max_size=3)
turns = st.lists(message("from", "value", ROLES), max_size=3)
weights = st.one_of(st.none(), st.lists(numbers, max_size=3), json_values)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """The value well-formed most of the time, anything JSON otherwise."""
    return st.one_of(strategy, strategy, strategy, json_values)


HH = st.builds(
    lambda a, b, c: (
        f"\n\nHuman: {a}\n\nAssistant: {b}",
        f"\n\nHuman: {a}\n\nAssistant: {c}",
    ),
    text,
    text,
    text,
)


@st.composite
def rows(draw: st.DrawFn) -> object:
    kind = draw(
        st.sampled_from(["standard", "conv", "implicit", "hh", "sharegpt", "se", "any"])
    )
    row: dict[object, object]
    if kind == "standard":
        row = {
            "prompt": draw(maybe(text)),
            "chosen": draw(maybe(text)),
            "rejected": draw(maybe(text)),
        }
    elif kind == "conv":
        row = {
            "prompt": draw(maybe(messages)),
            "chosen": draw(maybe(messages)),
            "rejected": draw(maybe(messages)),
        }
    elif kind == "implicit":
        shared = draw(messages)
        row = {"chosen": shared + draw(messages), "rejected": shared + draw(messages)}
    elif kind == "hh":
        chosen, rejected = draw(HH)
        row = {"chosen": chosen, "rejected": rejected}
    elif kind == "sharegpt":
        row = {
            "conversations": draw(maybe(turns)),
            "chosen": draw(maybe(message("from", "value", ROLES))),
            "rejected": draw(maybe(message("from", "value", ROLES))),
        }
    elif kind == "se":
        row = {
            "question": draw(maybe(text)),
            "response_j": draw(maybe(text)),
            "response_k": draw(maybe(text)),
        }
    else:
        return draw(json_values)
    for column in (
        "chosen_weight",
        "rejected_weight",
        "chosen_kl_weight",
        "rejected_kl_weight",
        "weight",
    ):
        if draw(st.booleans()):
            row[column] = draw(
                weights if column != "weight" else st.one_of(numbers, json_values)
            )
    for key in draw(st.lists(st.sampled_from(list(row)), max_size=2)) if row else []:
        row.pop(key, None)
    return row


column_maps = st.one_of(
    st.none(),
    st.dictionaries(
        st.sampled_from(FIELDS + ["x", "better"]), st.sampled_from(FIELDS), max_size=2
    ),
)


def _only_data_errors(call: object) -> list[PreferenceRecord]:
    try:
        return call()  # type: ignore[operator]
    except DataError as error:
        message = str(error)
        assert message and "\n" not in message.strip("\n") or error.problem, message
        return []


@given(row=rows(), column_map=column_maps)
def test_record_from_row_raises_only_data_errors(
    row: object, column_map: dict[str, str] | None
) -> None:
    records = _only_data_errors(
        lambda: [
            record_from_row(
                row, source="f.jsonl:3", column_map=column_map, warn=lambda _: None
            )
        ]
    )
    for record in records:
        assert record.source == "f.jsonl:3"
        assert record.chosen != record.rejected


def _csv(batch: list[object], delimiter: str) -> bytes:
    out = io.StringIO()
    names = sorted({str(k) for row in batch if isinstance(row, dict) for k in row})
    writer = csv.writer(out, delimiter=delimiter)
    writer.writerow(names or ["prompt"])
    for row in batch:
        if isinstance(row, dict):
            mapping = {str(k): v for k, v in row.items()}
            writer.writerow(
                [
                    v if isinstance(v, str) else json.dumps(v)
                    for v in (mapping.get(n, "") for n in names)
                ]
            )
        else:
            writer.writerow([json.dumps(row)])
    return out.getvalue().encode()


def _parquet(batch: list[object]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    strings = [
        {str(k): json.dumps(v) if not isinstance(v, str) else v for k, v in row.items()}
        for row in batch
        if isinstance(row, dict)
    ]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(strings or [{"prompt": "p"}]), sink)
    return sink.getvalue()


def _serialise(batch: list[object], container: str) -> bytes:
    if container == "jsonl":
        return "\n".join(json.dumps(row) for row in batch).encode()
    if container == "json":
        return json.dumps(batch, indent=1).encode()
    if container == "csv":
        return _csv(batch, ",")
    if container == "tsv":
        return _csv(batch, "\t")
    return _parquet(batch)


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    how = draw(st.sampled_from(["none", "none", "cut", "flip", "insert", "bom"]))
    if how == "cut" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip" and data:
        position = draw(st.integers(0, len(data) - 1))
        byte = draw(st.integers(0, 255))
        return data[:position] + bytes([byte]) + data[position + 1 :]
    if how == "insert":
        position = draw(st.integers(0, len(data)))
        extra = draw(
            st.sampled_from(
                [b"\xff", b"\xc3", b"\x00", b"{", b"]", b"\n", b'"', b"\xef\xbb\xbf"]
            )
        )
        return data[:position] + extra + data[position:]
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    return data


@st.composite
def files(draw: st.DrawFn) -> tuple[str, bytes]:
    batch = draw(st.lists(rows(), max_size=4))
    container = draw(st.sampled_from(["jsonl", "json", "csv", "tsv", "parquet"]))
    data = draw(damaged(_serialise(batch, container)))
    compressed = draw(st.booleans())
    if compressed:
        data = draw(damaged(gzip.compress(data)))
    suffix = draw(
        st.sampled_from([container, "json", "jsonl", "txt", "parquet", "csv"])
    )
    return f"data.{suffix}" + (
        ".gz" if compressed and draw(st.booleans()) else ""
    ), data


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@given(file=files())
def test_damaged_files_raise_only_data_errors(
    scratch: Path, file: tuple[str, bytes]
) -> None:
    name, data = file
    path = scratch / name
    path.write_bytes(data)
    try:
        for record in _only_data_errors(lambda: read_dataset(str(path)).records):
            assert record.source.startswith(f"{path}:")
    finally:
        path.unlink()


@given(
    data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
    suffix=st.sampled_from(
        ["json", "jsonl", "csv", "tsv", "parquet", "jsonl.gz", "bin"]
    ),
)
def test_arbitrary_bytes_raise_only_data_errors(
    scratch: Path, data: bytes, suffix: str
) -> None:
    path = scratch / f"raw.{suffix}"
    path.write_bytes(data)
    try:
        _only_data_errors(lambda: read_dataset(str(path)).records)
    finally:
        path.unlink()


python_values = st.recursive(
    st.one_of(json_scalars, st.tuples(text), st.binary(max_size=3), st.just(object())),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(
            st.one_of(st.sampled_from(FIELDS), st.integers(), text), inner, max_size=4
        ),
    ),
    max_leaves=10,
)


@given(
    batch=st.lists(st.one_of(rows(), python_values), max_size=4), column_map=column_maps
)
def test_python_lists_raise_only_data_errors(
    batch: list[object], column_map: dict[str, str] | None
) -> None:
    _only_data_errors(lambda: read_dataset(batch, column_map=column_map).records)
