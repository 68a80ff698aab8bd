"""Bad data in, one clear line out: a table with a row per fault.

Every error case writes its file into ``tmp_path`` (or builds the object), loads
it, and checks the :class:`DataError`: the message starts with
``FILE[:LINE[:COLUMN]]: [field 'x': ]``, carries a fix after ``"; "``, names the
expected line and field as attributes, and contains the expected fragment.
Warning cases check one :class:`DataWarning` per kind with the first row's line,
the field and the count. Acceptance cases are inputs that used to be refused or
misreported and now load.
"""

import dataclasses
import gzip
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mipo.data import (
    DataError,
    DataWarning,
    load_records,
    parse_column_map,
    read_dataset,
    required_columns,
    validate_dataset,
)
from mipo.data.columns import missing_column_hint
from mipo.needs import Need

OK = {"prompt": "p", "chosen": "good", "rejected": "bad"}
HH_PROMPT = "\n\nHuman: Hi?\n\nAssistant:"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def jl(*rows: object) -> bytes:
    """JSON Lines; a ``str`` row is written verbatim (for broken lines)."""
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def arr(*rows: object) -> bytes:
    """A JSON array with row ``i`` (0-based) on line ``i + 2``."""
    return ("[\n" + ",\n".join(json.dumps(row) for row in rows) + "\n]\n").encode()


def sharegpt(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "conversations": [{"from": "human", "value": "hi"}],
        "chosen": {"from": "gpt", "value": "hello"},
        "rejected": {"from": "gpt", "value": "go away"},
    }
    row.update(overrides)
    return row


def conv(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "prompt": [user("hi")],
        "chosen": [assistant("hello")],
        "rejected": [assistant("go away")],
    }
    row.update(overrides)
    return row


def ok(**overrides: object) -> dict[str, object]:
    return {**OK, **overrides}


def parquet_bytes(rows: list[dict[str, Any]]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


def save_to_disk(rows: list[dict[str, Any]]) -> Callable[[Path], object]:
    def build(tmp_path: Path) -> object:
        import datasets

        folder = tmp_path / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(folder))
        return str(folder)

    return build


def dataset_object(rows: list[dict[str, Any]]) -> Callable[[Path], object]:
    def build(_: Path) -> object:
        import datasets

        return datasets.Dataset.from_list(rows)

    return build


def dataset_dict(rows: list[dict[str, Any]]) -> Callable[[Path], object]:
    def build(_: Path) -> object:
        import datasets

        return datasets.DatasetDict(test=datasets.Dataset.from_list(rows))

    return build


@dataclass(frozen=True)
class Bad:
    """One error case: ``content`` goes to ``tmp_path / name`` (bytes), or is a
    builder ``tmp_path -> source``."""

    id: str
    name: str
    content: bytes | Callable[[Path], object]
    fragment: str
    line: int | None = None
    field: str | None = None
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    needs: frozenset[Need] = frozenset()


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


BAD = [
    # ---- containers, encodings, paths ------------------------------------------------
    Bad("empty-jsonl", "e.jsonl", b"", "the file is empty"),
    Bad("blank-json", "e.json", b"  \n\n ", "the file is empty"),
    Bad("empty-array", "e.json", b"[]", "no preference pairs found"),
    Bad("empty-gz", "e.jsonl.gz", gz(b""), "the file is empty"),
    Bad(
        "truncated-gz",
        "t.jsonl.gz",
        gz(jl(OK, OK) * 50)[:-30],
        "truncated or corrupt gzip",
    ),
    Bad(
        "corrupt-gz",
        "c.json.gz",
        b"\x1f\x8b\x08\x00garbage",
        "truncated or corrupt gzip",
    ),
    Bad(
        "bad-utf8-jsonl",
        "u.jsonl",
        jl(OK, OK) + b'{"prompt": "\xff"}\n',
        "invalid UTF-8",
        line=3,
    ),
    Bad(
        "bad-utf8-array",
        "u.json",
        b'[\n{"prompt": "ok",\n "chosen": "\xc3\x28"}]',
        "invalid UTF-8",
        line=3,
    ),
    Bad("bad-utf8-gz", "u.jsonl.gz", gz(b'{"a": 1}\n\xfe\n'), "invalid UTF-8", line=2),
    Bad("utf16", "w.jsonl", json.dumps(OK).encode("utf-16"), "UTF-16", line=1),
    Bad(
        "bad-json-line",
        "j.jsonl",
        jl(OK, '{"prompt": "p", "chosen": }'),
        "invalid JSON",
        line=2,
    ),
    Bad(
        "bad-json-array",
        "j.json",
        b'[\n{"prompt": "p"}\n{"prompt": "q"}\n]',
        "invalid JSON",
        line=3,
    ),
    Bad(
        "extra-after-array",
        "x.json",
        arr(OK) + b"[1]\n",
        "extra data after the JSON array",
        line=4,
    ),
    Bad(
        "unclosed-array",
        "x.json",
        b'[\n{"prompt": "p", "chosen": "a", "rejected": "b"},\n',
        "invalid JSON",
        line=3,
    ),
    Bad("plain-text", "t.json", b"hello world\n", "not JSON rows", line=1),
    Bad(
        "rows-wrapped-in-an-object",
        "w.json",
        json.dumps({"train": [OK, OK]}, indent=2).encode(),
        "an object whose 'train' holds a list of objects",
        line=1,
    ),
    Bad(
        "csv-mapped-weight-not-list",
        "m.csv",
        b"prompt,chosen,rejected,w\np,a,b,heavy\n",
        "must be a JSON list of numbers, got 'heavy'",
        line=2,
        field="chosen_weight",
        kwargs={"column_map": {"w": "chosen_weight"}},
    ),
    Bad("top-level-string", "s.json", b'\n"just a string"', "not JSON rows", line=2),
    Bad("too-deep", "d.json", b"[" * 100_000, "nested too deeply"),
    Bad(
        "array-of-numbers",
        "n.json",
        arr(OK, 3),
        "expected an object (one row), got a number",
        line=3,
    ),
    Bad(
        "jsonl-row-list",
        "l.jsonl",
        jl(OK, [1, 2]),
        "expected an object (one row), got a list",
        line=2,
    ),
    Bad("jsonl-row-null", "l.jsonl", jl(OK, None), "got null", line=2),
    Bad(
        "missing-file",
        "absent.jsonl",
        lambda p: str(p / "absent.jsonl"),
        "no such file or folder",
    ),
    Bad(
        "missing-parquet",
        "absent.parquet",
        lambda p: str(p / "nope.parquet"),
        "no such file or folder",
    ),
    Bad("plain-folder", "folder", lambda p: _folder(p), "is a folder, not a data file"),
    Bad("fake-parquet", "f.parquet", b"not parquet", "is not a Parquet file"),
    Bad(
        "corrupt-parquet", "c.parquet", b"PAR1\x00\x01garbagePAR1", "unreadable Parquet"
    ),
    Bad(
        "split-on-file", "s.jsonl", jl(OK), "a split applies", kwargs={"split": "test"}
    ),
    Bad(
        "revision-on-file",
        "r.jsonl",
        jl(OK),
        "option 'revision' applies to hub",
        kwargs={"revision": "main"},
    ),
    Bad(
        "hub-unknown-option",
        "hub",
        lambda _: "org/name?colour=red",
        "unknown option 'colour'",
    ),
    Bad(
        "hub-option-twice",
        "hub",
        lambda _: "org/name?split=test",
        "given twice",
        kwargs={"split": "train"},
    ),
    Bad(
        "builtin-column-map",
        "b",
        lambda _: "builtin:arithmetic?n=3",
        "column map does not apply",
        kwargs={"column_map": {"a": "prompt"}},
    ),
    Bad("empty-spec", "e", lambda _: " ", "the data set name is empty"),
    Bad(
        "wrong-python-type", "o", lambda _: 42, "cannot read preference data from a int"
    ),
    # ---- CSV / TSV -------------------------------------------------------------------
    Bad("csv-empty", "e.csv", b"", "no header line", line=1),
    Bad(
        "csv-header-only",
        "h.csv",
        b"prompt,chosen,rejected\n",
        "no preference pairs found",
    ),
    Bad(
        "csv-duplicate-header",
        "d.csv",
        b"prompt,chosen,chosen\np,a,b\n",
        "more than once",
        line=1,
    ),
    Bad(
        "csv-extra-cell",
        "x.csv",
        b"prompt,chosen,rejected\np,a,b\np,a,b,c\n",
        "has 4 cells but the header has 3",
        line=3,
    ),
    Bad(
        "csv-missing-cell",
        "m.csv",
        b"prompt,chosen,rejected\np,a\n",
        "has 2 cells",
        line=2,
    ),
    Bad(
        "csv-missing-column",
        "m.csv",
        b"prompt,chosen\np,a\n",
        "missing",
        line=2,
        field="rejected",
    ),
    Bad(
        "csv-weight-not-list",
        "w.csv",
        b"prompt,chosen,rejected,chosen_weight\np,a,b,0.5\n",
        "must be a JSON list of numbers",
        line=2,
        field="chosen_weight",
    ),
    Bad(
        "csv-weight-not-number",
        "w.csv",
        b"prompt,chosen,rejected,weight\np,a,b,heavy\n",
        "must be a number",
        line=2,
        field="weight",
    ),
    Bad(
        "csv-weight-inf",
        "w.csv",
        b"prompt,chosen,rejected,weight\np,a,b,inf\n",
        "not finite in float32",
        line=2,
        field="weight",
    ),
    Bad(
        "tsv-identical",
        "i.tsv",
        b"prompt\tchosen\trejected\np\tsame\tsame\n",
        "is identical to 'chosen'",
        line=2,
        field="rejected",
    ),
    Bad(
        "csv-bad-utf8",
        "u.csv",
        b"prompt,chosen,rejected\np,a,\xff\n",
        "invalid UTF-8",
        line=2,
    ),
    # ---- missing fields and wrong types, per format ---------------------------------
    Bad(
        "std-missing-chosen",
        "m.jsonl",
        jl(OK, {"prompt": "p", "rejected": "b"}),
        "missing",
        line=2,
        field="chosen",
    ),
    Bad(
        "std-missing-rejected",
        "m.jsonl",
        jl(OK, {"prompt": "p", "chosen": "a"}),
        "missing",
        line=2,
        field="rejected",
    ),
    Bad(
        "std-null-rejected",
        "m.jsonl",
        jl(ok(rejected=None)),
        "missing",
        line=1,
        field="rejected",
    ),
    Bad(
        "std-no-known-keys",
        "k.jsonl",
        jl({"question": "q", "answer": "a"}),
        "row keys: answer, question",
        line=1,
        field="chosen",
    ),
    Bad(
        "std-chosen-number",
        "t.jsonl",
        jl(OK, ok(chosen=3)),
        "must be a string, got a number",
        line=2,
        field="chosen",
    ),
    Bad(
        "std-rejected-object",
        "t.jsonl",
        jl(ok(rejected={"text": "b"})),
        "must be a string, got an object",
        line=1,
        field="rejected",
    ),
    Bad(
        "std-prompt-number",
        "t.jsonl",
        jl(ok(prompt=7)),
        "must be a string, got a number",
        line=1,
        field="prompt",
    ),
    Bad(
        "std-prompt-bool",
        "t.json",
        arr(OK, ok(prompt=True)),
        "must be a string, got a boolean",
        line=3,
        field="prompt",
    ),
    Bad(
        "std-list-response",
        "t.jsonl",
        jl(ok(chosen=[assistant("a")])),
        "is a message list but 'prompt' is not",
        line=1,
        field="chosen",
    ),
    Bad(
        "std-identical",
        "i.jsonl",
        jl(OK, ok(chosen="same", rejected="same")),
        "is identical to 'chosen'",
        line=2,
        field="rejected",
    ),
    Bad(
        "std-both-empty",
        "e.jsonl",
        jl(ok(chosen="", rejected="  ")),
        "both responses are empty",
        line=1,
        field="chosen",
    ),
    Bad(
        "implicit-identical",
        "i.jsonl",
        jl({"chosen": "x", "rejected": "x"}),
        "is identical",
        line=1,
        field="rejected",
    ),
    Bad(
        "implicit-no-prefix",
        "n.jsonl",
        jl({"chosen": "abc", "rejected": "xyz"}),
        "share no common prefix",
        line=1,
        field="chosen",
    ),
    Bad(
        "hh-no-shared-turn",
        "h.jsonl",
        jl(
            {
                "chosen": "\n\nHuman: a\n\nAssistant: x",
                "rejected": "\n\nHuman: b\n\nAssistant: y",
            }
        ),
        "share no '\\n\\nAssistant:' turn",
        line=1,
        field="chosen",
    ),
    Bad(
        "hh-both-empty",
        "h.jsonl",
        jl(OK, {"chosen": HH_PROMPT, "rejected": HH_PROMPT + "  "}),
        "both responses are empty",
        line=2,
        field="chosen",
    ),
    Bad(
        "hh-identical-after-strip",
        "h.jsonl",
        jl({"chosen": HH_PROMPT + " yes", "rejected": HH_PROMPT + " yes  "}),
        "is identical",
        line=1,
        field="rejected",
    ),
    # ---- conversational (message lists) ----------------------------------------------
    Bad(
        "conv-robot-prompt",
        "r.jsonl",
        jl(OK, conv(prompt=[{"role": "robot", "content": "hi"}])),
        "unknown role 'robot'",
        line=2,
        field="prompt[0].role",
    ),
    Bad(
        "conv-robot-response",
        "r.json",
        arr(conv(chosen=[{"role": "robot", "content": "beep"}])),
        "unknown role 'robot'",
        line=2,
        field="chosen[0].role",
    ),
    Bad(
        "conv-implicit-robot",
        "r.jsonl",
        jl(
            {
                "chosen": [user("q"), {"role": "robot", "content": "a"}],
                "rejected": [user("q"), assistant("b")],
            }
        ),
        "unknown role 'robot'",
        line=1,
        field="chosen[1].role",
    ),
    Bad(
        "conv-identical",
        "i.jsonl",
        jl(conv(rejected=[assistant("hello")])),
        "is identical",
        line=1,
        field="rejected",
    ),
    Bad(
        "conv-both-empty",
        "e.jsonl",
        jl(conv(chosen=[assistant("")], rejected=[assistant(" ")])),
        "both responses are empty",
        line=1,
        field="chosen",
    ),
    Bad(
        "conv-message-not-object",
        "m.jsonl",
        jl(conv(chosen=[assistant("a"), "b"])),
        "must be an object with 'role' and 'content', got a string",
        line=1,
        field="chosen[1]",
    ),
    Bad(
        "conv-content-missing",
        "m.jsonl",
        jl(conv(prompt=[{"role": "user"}])),
        "must be a string, got nothing",
        line=1,
        field="prompt[0].content",
    ),
    Bad(
        "conv-content-number",
        "m.jsonl",
        jl(conv(rejected=[{"role": "assistant", "content": 5}])),
        "got a number",
        line=1,
        field="rejected[0].content",
    ),
    Bad(
        "conv-role-number",
        "m.jsonl",
        jl(conv(prompt=[{"role": 1, "content": "x"}])),
        "must be a string",
        line=1,
        field="prompt[0].role",
    ),
    Bad(
        "conv-empty-prompt",
        "e.jsonl",
        jl(conv(prompt=[])),
        "is an empty message list",
        line=1,
        field="prompt",
    ),
    Bad(
        "conv-empty-chosen",
        "e.jsonl",
        jl(conv(chosen=[])),
        "is an empty message list",
        line=1,
        field="chosen",
    ),
    Bad(
        "conv-chosen-object",
        "o.jsonl",
        jl(conv(chosen={"role": "assistant", "content": "a"})),
        "must be a list of messages, got an object",
        line=1,
        field="chosen",
    ),
    Bad(
        "conv-no-shared-message",
        "n.jsonl",
        jl({"chosen": [user("a")], "rejected": [user("b")]}),
        "share no leading message",
        line=1,
        field="chosen",
    ),
    Bad(
        "conv-nothing-after-prompt",
        "n.jsonl",
        jl({"chosen": [user("a")], "rejected": [user("a"), assistant("b")]}),
        "no message after the shared prompt",
        line=1,
        field="chosen",
    ),
    # ---- ShareGPT and Stack Exchange -------------------------------------------------
    Bad(
        "sharegpt-empty-conversations",
        "s.json",
        arr(sharegpt(conversations=[])),
        "non-empty list of turns",
        line=2,
        field="conversations",
    ),
    Bad(
        "sharegpt-conversations-string",
        "s.json",
        arr(sharegpt(conversations="hi")),
        "got a string",
        line=2,
        field="conversations",
    ),
    Bad(
        "sharegpt-robot",
        "s.json",
        arr(sharegpt(), sharegpt(conversations=[{"from": "robot", "value": "hi"}])),
        "unknown speaker 'robot'",
        line=3,
        field="conversations[0].from",
    ),
    Bad(
        "sharegpt-human-response",
        "s.json",
        arr(sharegpt(rejected={"from": "human", "value": "x"})),
        "is a user turn",
        line=2,
        field="rejected.from",
    ),
    Bad(
        "sharegpt-missing-value",
        "s.json",
        arr(sharegpt(chosen={"from": "gpt"})),
        "got nothing",
        line=2,
        field="chosen.value",
    ),
    Bad(
        "sharegpt-turn-not-object",
        "s.json",
        arr(sharegpt(conversations=["hi"])),
        "must be an object with 'from' and 'value'",
        line=2,
        field="conversations[0]",
    ),
    Bad(
        "sharegpt-missing-rejected",
        "s.json",
        arr(
            {
                "conversations": [{"from": "human", "value": "q"}],
                "chosen": {"from": "gpt", "value": "a"},
            }
        ),
        "missing",
        line=2,
        field="rejected",
    ),
    Bad(
        "sharegpt-identical",
        "s.json",
        arr(sharegpt(rejected={"from": "gpt", "value": "hello"})),
        "is identical",
        line=2,
        field="rejected",
    ),
    Bad(
        "stack-exchange-number",
        "q.json",
        arr({"question": "q", "response_j": 1, "response_k": "b"}),
        "must be a string, got a number",
        line=2,
        field="response_j",
    ),
    Bad(
        "stack-exchange-identical",
        "q.json",
        arr({"question": "q", "response_j": "a", "response_k": "a"}),
        "is identical",
        line=2,
        field="rejected",
    ),
    # ---- weights ---------------------------------------------------------------------
    Bad(
        "weight-not-list",
        "w.jsonl",
        jl(ok(chosen_weight="0.5")),
        "must be a list of numbers, got a string",
        line=1,
        field="chosen_weight",
    ),
    Bad(
        "weight-item-string",
        "w.jsonl",
        jl(ok(chosen_weight=[1, "x"])),
        "must be a number, got a string",
        line=1,
        field="chosen_weight[1]",
    ),
    Bad(
        "weight-item-bool",
        "w.jsonl",
        jl(ok(rejected_weight=[True])),
        "got a boolean",
        line=1,
        field="rejected_weight[0]",
    ),
    Bad(
        "weight-item-nested",
        "w.jsonl",
        jl(ok(chosen_kl_weight=[[1.0]])),
        "got a list",
        line=1,
        field="chosen_kl_weight[0]",
    ),
    Bad(
        "weight-nan",
        "w.jsonl",
        b'{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_weight": [NaN]}\n',
        "not finite in float32",
        line=1,
        field="chosen_weight[0]",
    ),
    Bad(
        "weight-1e308",
        "w.jsonl",
        jl(OK | {"chosen_weight": [1.0]}, ok(chosen_weight=[0.5, 1e308])),
        "not finite in float32",
        line=2,
        field="chosen_weight[1]",
    ),
    Bad(
        "kl-weight-infinity",
        "w.jsonl",
        b'{"prompt": "p", "chosen": "a", "rejected": "b", "rejected_kl_weight": [-Infinity]}\n',
        "not finite",
        line=1,
        field="rejected_kl_weight[0]",
    ),
    Bad(
        "weight-huge-int",
        "w.jsonl",
        b'{"prompt": "p", "chosen": "a", "rejected": "b", "chosen_weight": [1'
        + b"0" * 400
        + b"]}\n",
        "not finite in float32",
        line=1,
        field="chosen_weight[0]",
    ),
    Bad(
        "example-weight-1e308",
        "w.jsonl",
        jl(ok(weight=1e308)),
        "not finite in float32",
        line=1,
        field="weight",
    ),
    Bad(
        "example-weight-negative",
        "w.jsonl",
        jl(ok(weight=-1)),
        "must be >= 0",
        line=1,
        field="weight",
    ),
    Bad(
        "example-weight-string",
        "w.jsonl",
        jl(ok(weight="1")),
        "must be a number, got a string",
        line=1,
        field="weight",
    ),
    Bad(
        "example-weight-bool",
        "w.jsonl",
        jl(ok(weight=False)),
        "got a boolean",
        line=1,
        field="weight",
    ),
    Bad(
        "weight-missing-on-one-row",
        "w.jsonl",
        jl(ok(chosen_weight=[1.0]), ok(), ok(chosen_weight=[2.0])),
        "missing on this row, but 2 of 3 rows have it",
        line=2,
        field="chosen_weight",
    ),
    Bad(
        "example-weight-missing-on-one-row",
        "w.json",
        arr(ok(weight=1), ok(weight=2), ok(weight=None)),
        "2 of 3 rows have it",
        line=4,
        field="weight",
    ),
    Bad(
        "needs-token-weights",
        "n.jsonl",
        jl(OK, ok(prompt="q")),
        "missing on 2 of 2 rows, and the objective reads it",
        line=1,
        field="chosen_weight",
        needs=frozenset({Need.TOKEN_WEIGHTS}),
    ),
    Bad(
        "needs-kl-weights",
        "n.jsonl",
        jl(ok(chosen_weight=[1.0], rejected_weight=[1.0])),
        "kl_weights comes from 'chosen_kl_weight'/'rejected_kl_weight'",
        line=1,
        field="chosen_kl_weight",
        needs=frozenset({Need.TOKEN_WEIGHTS, Need.KL_WEIGHTS}),
    ),
    Bad(
        "needs-rejected-side",
        "n.jsonl",
        jl(ok(chosen_weight=[1.0])),
        "missing on 1 of 1 rows",
        line=1,
        field="rejected_weight",
        needs=frozenset({Need.TOKEN_WEIGHTS}),
    ),
    # ---- column maps -----------------------------------------------------------------
    Bad(
        "column-map-absent-column",
        "c.jsonl",
        jl({"prompt": "p", "rejected": "b"}),
        "has no column 'better'",
        line=1,
        field="better",
        kwargs={"column_map": {"better": "chosen"}},
    ),
    Bad(
        "column-map-collision",
        "c.jsonl",
        jl(ok(better="x")),
        "already has a column 'chosen'",
        line=1,
        field="chosen",
        kwargs={"column_map": {"better": "chosen"}},
    ),
    # ---- tables: Parquet, save_to_disk folders, objects, lists -----------------------
    Bad(
        "parquet-null-rejected",
        "n.parquet",
        parquet_bytes([OK, ok(rejected=None)]),
        "missing",
        line=2,
        field="rejected",
    ),
    Bad(
        "parquet-identical",
        "i.parquet",
        parquet_bytes([OK, OK, ok(chosen="bad")]),
        "is identical",
        line=3,
        field="rejected",
    ),
    Bad(
        "parquet-gz-robot",
        "r.parquet.gz",
        gz(parquet_bytes([conv(prompt=[{"role": "robot", "content": "x"}])])),
        "unknown role 'robot'",
        line=1,
        field="prompt[0].role",
    ),
    Bad(
        "saved-dataset-identical",
        "saved",
        save_to_disk([OK, ok(rejected="good")]),
        "is identical",
        line=2,
        field="rejected",
    ),
    Bad(
        "saved-dataset-split",
        "saved",
        save_to_disk([OK]),
        "split 'test' does not apply",
        kwargs={"split": "test"},
    ),
    Bad(
        "dataset-object-robot",
        "<Dataset>",
        dataset_object([conv(), conv(chosen=[{"role": "robot", "content": "x"}])]),
        "unknown role 'robot'",
        line=2,
        field="chosen[0].role",
    ),
    Bad(
        "dataset-dict-no-train",
        "<DatasetDict>",
        dataset_dict([OK]),
        "has no split 'train'",
        kwargs={"split": "train"},
    ),
    Bad(
        "list-of-dicts",
        "<rows>",
        lambda _: [OK, {"prompt": "p"}],
        "missing",
        line=2,
        field="chosen",
    ),
    Bad("list-of-strings", "<rows>", lambda _: ["p"], "expected an object", line=1),
    Bad(
        "list-odd-keys",
        "<rows>",
        lambda _: [{1: "x", "a": 2}],
        "row keys: 1, a",
        line=1,
        field="chosen",
    ),
]


def _folder(tmp_path: Path) -> str:
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(jl(OK))
    return str(folder)


def test_the_table_is_big_and_its_ids_are_unique() -> None:
    assert len(BAD) >= 90
    assert len({case.id for case in BAD}) == len(BAD)


def _source(case: Bad, tmp_path: Path) -> object:
    if callable(case.content):
        return case.content(tmp_path)
    path = tmp_path / case.name
    path.write_bytes(case.content)
    return str(path)


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_bad_input_is_one_clear_error(case: Bad, tmp_path: Path) -> None:
    source = _source(case, tmp_path)
    with pytest.raises(DataError) as info:
        validate_dataset(source, needs=case.needs, warn=lambda _: None, **case.kwargs)
    error = info.value
    message = str(error)
    assert "\n" not in message
    assert case.fragment in message, message
    assert error.line == case.line, message
    assert error.field == case.field, message
    assert error.fix, f"no fix in: {message}"
    assert message.endswith(f"; {error.fix}")
    assert error.file is not None
    if isinstance(source, str) and case.name in source:
        assert error.file.startswith(source) or source.startswith(error.file), message
    where = re.escape(error.file)
    if case.line is not None:
        where += rf":{case.line}(:\d+)?"
    field_part = "" if case.field is None else re.escape(f"field '{case.field}': ")
    assert re.match(rf"^{where}: {field_part}", message), message


@dataclass(frozen=True)
class Odd:
    """One warning case: a JSON Lines file with the rows, and the warning."""

    id: str
    rows: tuple[object, ...]
    kind: str
    fragment: str
    line: int
    field: str | None
    count: int = 1


ODD = [
    Odd(
        "whitespace-response",
        (ok(chosen="   "),),
        "blank-response",
        "empty or whitespace only",
        1,
        "chosen",
    ),
    Odd(
        "blank-rejected",
        (OK, ok(rejected="\n\t")),
        "blank-response",
        "whitespace only",
        2,
        "rejected",
    ),
    Odd(
        "hh-empty-reply",
        ({"chosen": HH_PROMPT, "rejected": HH_PROMPT + " no"},),
        "blank-response",
        "empty",
        1,
        "chosen",
    ),
    Odd(
        "conv-blank-reply",
        (conv(chosen=[assistant(" ")]),),
        "blank-response",
        "whitespace",
        1,
        "chosen",
    ),
    Odd(
        "many-blank",
        (
            ok(chosen=" "),
            OK,
            ok(chosen=""),
            ok(rejected=" "),
            ok(chosen="\n"),
            ok(chosen=" \t"),
            ok(rejected="\t"),
        ),
        "blank-response",
        "(6 rows; also line 3, line 4, line 5, line 6 and 1 more)",
        1,
        "chosen",
        6,
    ),
    Odd(
        "duplicates",
        (OK, ok(prompt="q"), OK, OK),
        "duplicate",
        "the same pair (prompt, chosen and rejected) as line 1",
        3,
        None,
        2,
    ),
    Odd("conv-duplicates", (conv(), conv()), "duplicate", "as line 1", 2, None),
    Odd(
        "hh-human-marker",
        (
            {
                "chosen": HH_PROMPT + " Sure.\n\nHuman: thanks",
                "rejected": HH_PROMPT + " No.",
            },
        ),
        "hh-marker",
        "'\\n\\nHuman:'",
        1,
        "chosen",
    ),
    Odd(
        "hh-assistant-marker",
        (
            OK,
            {"chosen": HH_PROMPT + " a", "rejected": HH_PROMPT + " b\n\nAssistant: c"},
        ),
        "hh-marker",
        "stays part of this one assistant reply",
        2,
        "rejected",
    ),
    Odd(
        "empty-prompt",
        (ok(prompt=""),),
        "empty-prompt",
        "is empty; using ' '",
        1,
        "prompt",
    ),
    Odd(
        "null-prompt",
        (OK, ok(prompt=None), ok(prompt=None, chosen="x")),
        "empty-prompt",
        "is null; using ' '",
        2,
        "prompt",
        2,
    ),
]


@pytest.mark.parametrize("case", ODD, ids=[case.id for case in ODD])
def test_suspicious_input_is_one_warning_line(case: Odd, tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"
    path.write_bytes(jl(*case.rows))
    seen: list[DataWarning] = []
    records = validate_dataset(str(path), warn=seen.append)
    assert len(records) == len(case.rows)
    assert [w.kind for w in seen] == [case.kind]
    (warning,) = seen
    message = str(warning)
    assert "\n" not in message
    assert case.fragment in message, message
    assert (warning.file, warning.line, warning.field) == (
        str(path),
        case.line,
        case.field,
    )
    assert warning.count == case.count
    field_part = "" if case.field is None else f"field '{case.field}': "
    assert message.startswith(f"{path}:{case.line}: {field_part}"), message


def test_warnings_go_through_the_warnings_module_by_default(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_bytes(jl(ok(chosen=" ")))
    with pytest.warns(DataWarning, match=r"w\.jsonl:1: field 'chosen'"):
        validate_dataset(str(path))


def test_load_records_is_silent_and_read_dataset_returns_the_warnings(
    tmp_path: Path,
) -> None:
    path = tmp_path / "w.jsonl"
    path.write_bytes(jl(ok(prompt=""), OK, OK))
    records = load_records(str(path))  # pytest turns any warning into an error
    assert records[0].prompt == " "
    loaded = read_dataset(str(path))
    assert [w.kind for w in loaded.warnings] == ["empty-prompt", "duplicate"]
    assert loaded.records == records


def test_evaluation_pairs_that_are_training_pairs_are_reported(tmp_path: Path) -> None:
    train_path, eval_path = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train_path.write_bytes(jl(OK, ok(prompt="q"), ok(prompt="r")))
    eval_path.write_bytes(jl(ok(prompt="new"), ok(prompt="r"), OK))
    train = validate_dataset(str(train_path))
    seen: list[DataWarning] = []
    evaluation = validate_dataset(str(eval_path), train_records=train, warn=seen.append)
    assert len(evaluation) == 3
    (warning,) = seen
    assert warning.kind == "eval-overlap"
    assert (warning.line, warning.count) == (2, 2)
    assert f"({train_path}:3)" in str(warning)


# ---- inputs that used to be refused or misreported, and now load -------------------

ROWS = [OK, conv(), {"question": "q", "response_j": "a", "response_k": "b"}]
PROMPTS = ["p", [user("hi")], [user("q")]]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bom.jsonl", b"\xef\xbb\xbf" + jl(*ROWS)),
        ("bom.json", b"\xef\xbb\xbf" + arr(*ROWS)),
        ("bom.jsonl.gz", gz(b"\xef\xbb\xbf" + jl(*ROWS))),
        ("lines-named.json", jl(*ROWS)),
        ("array-named.jsonl", arr(*ROWS)),
        ("crlf.jsonl", jl(*ROWS).replace(b"\n", b"\r\n")),
        ("pretty.jsonl", b"\n".join(json.dumps(r, indent=2).encode() for r in ROWS)),
        ("gzip-without-suffix.json", gz(arr(*ROWS))),
    ],
)
def test_these_containers_load(tmp_path: Path, name: str, content: bytes) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    records = load_records(str(path))
    assert [r.prompt for r in records] == PROMPTS
    assert all(r.source.startswith(f"{path}:") for r in records)


@pytest.mark.parametrize("name", ["table.parquet", "table.parquet.gz", "no-suffix"])
def test_parquet_tables_load_messages_and_weights(tmp_path: Path, name: str) -> None:
    rows = [
        conv(chosen_weight=[1.0, 0.5], rejected_weight=[2.0]),
        conv(
            prompt=[user("a"), assistant("b"), user("c")],
            chosen_weight=[3.0],
            rejected_weight=[],
        ),
    ]
    data = parquet_bytes(rows)
    path = tmp_path / name
    path.write_bytes(gz(data) if name.endswith(".gz") else data)
    records = load_records(str(path))
    assert [r.prompt for r in records] == [
        [user("hi")],
        [user("a"), assistant("b"), user("c")],
    ]
    assert [r.chosen_token_weights for r in records] == [(1.0, 0.5), (3.0,)]
    assert [r.source for r in records] == [f"{path}:1", f"{path}:2"]


def test_line_separator_inside_a_json_string_is_not_a_line_break(
    tmp_path: Path,
) -> None:
    path = tmp_path / "ls.jsonl"
    path.write_text(
        json.dumps(ok(chosen="a\u2028b"), ensure_ascii=False) + "\n" + json.dumps(OK),
        encoding="utf-8",
    )
    records = load_records(str(path))
    assert records[0].chosen == "a\u2028b"
    assert records[1].source == f"{path}:2"


def test_pretty_printed_rows_are_numbered_by_their_first_line(tmp_path: Path) -> None:
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps([OK, ok(prompt="q")], indent=2))
    assert [r.source for r in load_records(str(path))] == [f"{path}:2", f"{path}:7"]


def test_csv_and_tsv_read_text_cells_and_json_weight_cells(tmp_path: Path) -> None:
    csv_path = tmp_path / "pairs.csv"
    csv_path.write_bytes(
        b"\xef\xbb\xbfprompt,chosen,rejected,chosen_weight,rejected_weight,weight\n"
        b'"Hi, there",good,bad,"[1, 0.5]","[2]",3\n'
        b'"multi\nline",x,y,"[0]","[1]",\n'.replace(b"\n", b"\r\n")
    )
    with pytest.raises(DataError, match=r"pairs\.csv:3: field 'weight': missing"):
        load_records(str(csv_path))  # an empty cell is absent: the row lacks it
    csv_path.write_bytes(
        b"prompt,chosen,rejected,chosen_weight,rejected_weight\n"
        b'"Hi, there",good,bad,"[1, 0.5]","[2]"\n'
        b'"multi\nline",x,y,"[0]","[1]"\n'
        b"ok,a,b,[3],[4]\n"
    )
    records = load_records(str(csv_path))
    assert [r.prompt for r in records] == ["Hi, there", "multi\nline", "ok"]
    assert records[0].chosen_token_weights == (1.0, 0.5)
    assert [r.source for r in records] == [f"{csv_path}:{n}" for n in (2, 3, 5)]
    mapped = tmp_path / "mapped.csv"
    mapped.write_bytes(b'prompt,chosen,rejected,w\np,a,b,"[0.5, 2]"\n')
    (record,) = load_records(str(mapped), column_map={"w": "chosen_weight"})
    assert record.chosen_token_weights == (0.5, 2.0)
    tsv_path = tmp_path / "pairs.tsv"
    tsv_path.write_bytes(b"question\tresponse_j\tresponse_k\nq\ta, b\tc\n")
    (record,) = load_records(str(tsv_path))
    assert record.prompt == [user("q")]
    assert record.chosen == [assistant("a, b")]


def test_datasets_objects_folders_and_lists_load_alike(tmp_path: Path) -> None:
    import datasets

    rows = [ok(prompt=f"p{i}", weight=float(i)) for i in range(4)]
    table = datasets.Dataset.from_list(rows)
    splits = datasets.DatasetDict(train=table, test=table.select(range(2)))
    table.save_to_disk(str(tmp_path / "one"))
    splits.save_to_disk(str(tmp_path / "two"))
    expected = [f"p{i}" for i in range(4)]
    for source, kwargs in [
        (rows, {}),
        (table, {}),
        (table.with_format("numpy"), {}),
        (splits, {}),
        (str(tmp_path / "one"), {}),
        (str(tmp_path / "two"), {}),
    ]:
        records = load_records(source, **kwargs)
        assert [r.prompt for r in records] == expected, source
        assert [r.example_weight for r in records] == [0.0, 1.0, 2.0, 3.0]
    test = load_records(str(tmp_path / "two"), split="test")
    assert [r.source for r in test] == [f"{tmp_path / 'two'}[test]:{n}" for n in (1, 2)]
    assert [r.source for r in load_records(splits, split="test")] == [
        "<DatasetDict>[test]:1",
        "<DatasetDict>[test]:2",
    ]


def test_hub_names_fail_fast_and_in_one_line_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from mipo.data import datasets_io

    monkeypatch.setattr(datasets_io, "hub_reachable", lambda: False)
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_records(
            "someone/some-dataset?name=cfg&data_dir=harmless-base",
            split="test",
            revision="v1",
        )
    assert time.perf_counter() - start < 10
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("someone/some-dataset: cannot load it as a Hugging Face")
    assert "unreachable (offline mode)" in message


def test_hub_options_reach_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    from mipo.data import datasets_io

    seen: dict[str, object] = {}

    def fake_load_dataset(
        path: str, name: str | None = None, **kwargs: object
    ) -> object:
        seen.update(path=path, name=name, **kwargs)
        return datasets.Dataset.from_list([OK])

    monkeypatch.setattr(datasets_io, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (record,) = load_records(
        "org/pairs?name=cfg&data_files=a.jsonl,b.jsonl", split="test", revision="r1"
    )
    assert seen == {
        "path": "org/pairs",
        "name": "cfg",
        "split": "test",
        "revision": "r1",
        "data_files": ["a.jsonl", "b.jsonl"],
        "data_dir": None,
    }
    assert record.source == "org/pairs[test]:1"


# ---- column maps and needs ---------------------------------------------------------


def test_column_map_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "renamed.jsonl"
    path.write_bytes(jl({"q": "p", "better": "a", "worse": "b", "w": [1.0]}))
    mapping = parse_column_map("prompt=q, chosen=better,rejected=worse,chosen_weight=w")
    assert mapping == {
        "q": "prompt",
        "better": "chosen",
        "worse": "rejected",
        "w": "chosen_weight",
    }
    (record,) = load_records(str(path), column_map=mapping)
    assert (record.prompt, record.chosen, record.rejected) == ("p", "a", "b")
    assert record.chosen_token_weights == (1.0,)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("chosen", "entry 'chosen' is not FIELD=COLUMN"),
        ("chosen=", "is not FIELD=COLUMN"),
        ("=better", "is not FIELD=COLUMN"),
        ("answer=better", "'answer' is not a field mipo reads"),
        ("chosen=a,chosen=b", "field 'chosen' is mapped twice"),
        ("chosen=a,rejected=a", "column 'a' is mapped twice"),
    ],
)
def test_bad_column_maps_are_one_line(text: str, fragment: str) -> None:
    with pytest.raises(DataError, match="^column map: ") as info:
        parse_column_map(text)
    assert fragment in str(info.value)
    assert info.value.fix


def test_needs_name_the_columns_the_loader_reads() -> None:
    assert required_columns({Need.TOKEN_WEIGHTS}) == (
        "chosen_weight",
        "rejected_weight",
    )
    assert required_columns({Need.KL_WEIGHTS}) == (
        "chosen_kl_weight",
        "rejected_kl_weight",
    )
    assert required_columns({Need.TOKEN_WEIGHTS, Need.REFERENCE_HIDDEN_LAYERS}) == ()
    assert required_columns({Need.REFERENCE_LOGPS}) == ()
    hint = missing_column_hint(Need.TOKEN_WEIGHTS)
    assert "'chosen_weight' and 'rejected_weight'" in hint
    assert "token_weights" in hint and "chosen_token_weights" not in hint


def test_rows_with_the_needed_columns_pass(tmp_path: Path) -> None:
    path = tmp_path / "weighted.jsonl"
    path.write_bytes(jl(ok(chosen_weight=[1.0, 0.5], rejected_weight=[2.0])))
    (record,) = validate_dataset(str(path), needs={Need.TOKEN_WEIGHTS})
    assert record.chosen_token_weights == (1.0, 0.5)
    with pytest.raises(DataError, match="field 'weight': missing on 1 of 1 rows"):
        validate_dataset(str(path), required=["weight"])


def test_errors_and_warnings_survive_pickling() -> None:
    import pickle

    error = DataError.at("f.jsonl:3", "is odd", field="chosen", fix="fix it")
    again = pickle.loads(pickle.dumps(error))
    assert (again.file, again.line, again.field, str(again)) == (
        "f.jsonl",
        3,
        "chosen",
        "f.jsonl:3: field 'chosen': is odd; fix it",
    )
    warning = DataWarning.at("k", "f.jsonl:3:7", "odd", others=["f.jsonl:9"])
    assert str(pickle.loads(pickle.dumps(warning))) == str(warning)
    assert str(warning) == "f.jsonl:3:7: odd (2 rows; also line 9)"
