"""Row formats -> PreferenceRecord, file containers, and the three real data files."""

import gzip
import hashlib
import json
import sys
from pathlib import Path

import pytest

from mipo.data import DataError, PreferenceRecord, load_records
from mipo.data.formats import record_from_row

SHARED_FILES = {
    "hh-rlhf-harmless-base-test.jsonl.gz": (
        "ebfaaed21162a4de120ae85366075b34425e2a6303fac59b99555002f7016f03",
        2312,
    ),
    "dpo-en-demo-300.json": (
        "b949be2421cfa62744afcf1b479f95b299d643d1a4c1c97d1341b314a1aa5cb3",
        300,
    ),
    "stack-exchange-paired-tiny.json": (
        "bd78b95515363c6d92e405cd44f574710269e2351007d635daf134269093d5a1",
        25,
    ),
}


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_standard_explicit_prompt_is_kept_verbatim() -> None:
    record = record_from_row(
        {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5"}, source="f:1"
    )
    assert (record.prompt, record.chosen, record.rejected) == ("2 + 2 =", " 4", " 5")
    assert not record.conversational
    assert record.source == "f:1"


def test_standard_implicit_prompt_is_the_longest_common_prefix() -> None:
    record = record_from_row(
        {"chosen": "2 + 2 = 4", "rejected": "2 + 2 = 5"}, source="s"
    )
    assert (record.prompt, record.chosen, record.rejected) == ("2 + 2 = ", "4", "5")


def test_conversational_explicit() -> None:
    row = {
        "prompt": [user("hi")],
        "chosen": [assistant("hello")],
        "rejected": [assistant("go away")],
    }
    record = record_from_row(row, source="s")
    assert record.conversational
    assert record.prompt == [user("hi")]
    assert record.chosen == [assistant("hello")]
    assert record.rejected == [assistant("go away")]


def test_conversational_implicit_splits_at_the_first_differing_message() -> None:
    shared = [user("a"), assistant("b"), user("c")]
    row = {
        "chosen": [*shared, assistant("good")],
        "rejected": [*shared, assistant("bad")],
    }
    record = record_from_row(row, source="s")
    assert record.prompt == shared
    assert record.chosen == [assistant("good")]
    assert record.rejected == [assistant("bad")]


def test_hh_transcript_becomes_messages() -> None:
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Help me?\n\nAssistant:"
    row = {"chosen": prompt + " Sure, I can.", "rejected": prompt + " I won't."}
    record = record_from_row(row, source="s")
    assert record.prompt == [user("Hi there"), assistant("Hello!"), user("Help me?")]
    assert record.chosen == [assistant("Sure, I can.")]
    assert record.rejected == [assistant("I won't.")]


def test_hh_role_marker_inside_a_response_does_not_move_the_prompt() -> None:
    prompt = "\n\nHuman: Question?\n\nAssistant:"
    chosen = prompt + " Answer.  Human: more?\n\nAssistant: yes"
    row = {"chosen": chosen, "rejected": prompt + " Other answer."}
    record = record_from_row(row, source="s")
    assert record.prompt == [user("Question?")]
    assert record.chosen == [assistant("Answer.  Human: more?\n\nAssistant: yes")]


def test_hh_empty_response_is_kept() -> None:
    prompt = "\n\nHuman: Question?\n\nAssistant:"
    record = record_from_row({"chosen": prompt, "rejected": prompt + " x"}, source="s")
    assert record.chosen == [assistant("")]


def test_sharegpt_roles_and_system_message() -> None:
    row = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
            {"from": "human", "value": "Bye"},
        ],
        "chosen": {"from": "gpt", "value": "Goodbye"},
        "rejected": {"from": "gpt", "value": "No"},
    }
    record = record_from_row(row, source="s")
    assert record.prompt == [
        {"role": "system", "content": "Be brief."},
        user("Hi"),
        assistant("Hello"),
        user("Bye"),
    ]
    assert record.chosen == [assistant("Goodbye")]
    assert record.rejected == [assistant("No")]


def test_stack_exchange_prefers_response_j() -> None:
    row = {"question": "Q?", "response_j": "good", "response_k": "bad"}
    record = record_from_row(row, source="s")
    assert record.prompt == [user("Q?")]
    assert record.chosen == [assistant("good")]
    assert record.rejected == [assistant("bad")]


def test_column_map_renames_before_detection() -> None:
    row = {"question": "Q?", "response_j": "good", "response_k": "bad"}
    mapping = {"question": "prompt", "response_j": "chosen", "response_k": "rejected"}
    record = record_from_row(row, source="s", column_map=mapping)
    assert (record.prompt, record.chosen, record.rejected) == ("Q?", "good", "bad")


def test_weight_columns_and_example_weight() -> None:
    row = {
        "prompt": "p",
        "chosen": "ab",
        "rejected": "c",
        "chosen_weight": [1, 0.5],
        "rejected_weight": [2.0],
        "chosen_kl_weight": [0.0, 1.0, 1.0],
        "rejected_kl_weight": None,
        "weight": 3,
    }
    record = record_from_row(row, source="s")
    assert record.chosen_token_weights == (1.0, 0.5)
    assert record.rejected_token_weights == (2.0,)
    assert record.chosen_kl_weights == (0.0, 1.0, 1.0)
    assert record.rejected_kl_weights is None
    assert record.example_weight == 3.0


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "p", "chosen": "a"}, "field 'rejected': missing"),
        (
            {"prompt": "p", "chosen": 3, "rejected": "b"},
            "field 'chosen': must be a string, got a number",
        ),
        (
            {
                "prompt": [user("p")],
                "chosen": [{"role": "assistant", "content": 1}],
                "rejected": [],
            },
            "field 'chosen[0].content': must be a string, got a number",
        ),
        (
            {"prompt": [user("p")], "chosen": [assistant("a")], "rejected": []},
            "field 'rejected': is an empty message list",
        ),
        (
            {"prompt": "p", "chosen": [assistant("a")], "rejected": "b"},
            "field 'chosen': is a message list but 'prompt' is not",
        ),
        ({"chosen": "abc", "rejected": "abc"}, "field 'rejected': is identical"),
        ({"chosen": "abc", "rejected": "xyz"}, "share no common prefix"),
        (
            {"chosen": [user("a")], "rejected": [user("b")]},
            "share no leading message",
        ),
        (
            {
                "conversations": [{"from": "alien", "value": "hi"}],
                "chosen": {"from": "gpt", "value": "a"},
                "rejected": {"from": "gpt", "value": "b"},
            },
            "field 'conversations[0].from': unknown speaker 'alien'",
        ),
        (
            {
                "conversations": [{"from": "human", "value": "hi"}],
                "chosen": {"from": "human", "value": "a"},
                "rejected": {"from": "gpt", "value": "b"},
            },
            "field 'chosen.from': is a user turn; the responses must come from an assistant",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "chosen_weight": [1, "x"]},
            "field 'chosen_weight[1]': must be a number, got a string",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": "b", "weight": -1},
            "field 'weight': must be >= 0",
        ),
        ([1, 2], "expected an object (one row), got a list"),
    ],
)
def test_bad_rows_raise_one_error_naming_source_and_field(
    row: object, message: str
) -> None:
    with pytest.raises(DataError, match="^data.jsonl:7: ") as info:
        record_from_row(row, source="data.jsonl:7")
    assert message in str(info.value)


def test_column_map_with_missing_source_column_names_it() -> None:
    with pytest.raises(DataError, match="the column map renames 'question'"):
        record_from_row(
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            source="s",
            column_map={"question": "prompt"},
        )


ROWS = [
    {"prompt": "p1", "chosen": "a", "rejected": "b"},
    {"prompt": [user("p2")], "chosen": [assistant("a")], "rejected": [assistant("b")]},
    {"question": "p3", "response_j": "a", "response_k": "b"},
]


@pytest.mark.parametrize(
    "name", ["rows.json", "rows.jsonl", "rows.jsonl.gz", "rows.json.gz"]
)
def test_file_containers_load_the_same_records(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if ".jsonl" in name:
        text = "\n".join(json.dumps(row) for row in ROWS) + "\n\n"
    else:
        text = json.dumps(ROWS)
    path.write_bytes(
        gzip.compress(text.encode()) if name.endswith(".gz") else text.encode()
    )
    records = load_records(str(path))
    assert [r.prompt for r in records] == ["p1", [user("p2")], [user("p3")]]
    sources = [r.source for r in records]
    if ".jsonl" in name:
        assert sources == [f"{path}:1", f"{path}:2", f"{path}:3"]
    else:  # one line: the column where each row starts tells them apart
        starts = [1 + text.index(json.dumps(row)) for row in ROWS]
        assert sources == [f"{path}:1:{column}" for column in starts]


def test_jsonl_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "p", "chosen": "a"}) + "\n"
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'rejected': missing"):
        load_records(str(path))


def test_json_array_error_names_the_line_the_row_starts_on(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    rows = [ROWS[0], {"prompt": "p", "chosen": "a", "rejected": 5}]
    path.write_text(json.dumps(rows, indent=2))  # the second row starts on line 7
    with pytest.raises(DataError, match=r"bad\.json:7: field 'rejected'") as info:
        load_records(str(path))
    assert (info.value.file, info.value.line, info.value.field) == (
        str(path),
        7,
        "rejected",
    )


def test_invalid_json_line_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2:2: invalid JSON"):
        load_records(str(path))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_records(str(tmp_path / "absent.jsonl"))


def test_max_examples_is_a_seeded_subset_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    rows = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(50)]
    path.write_text("\n".join(json.dumps(row) for row in rows))
    first = load_records(str(path), max_examples=10, seed=3)
    again = load_records(str(path), max_examples=10, seed=3)
    other = load_records(str(path), max_examples=10, seed=4)
    assert first == again
    assert first != other
    indices = [int(str(r.prompt)[1:]) for r in first]
    assert len(indices) == 10
    assert indices == sorted(indices)


def _shared(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not path.is_file():
        pytest.skip(f"{path} not found (set MIPO_SHARED_DATA)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == SHARED_FILES[name][0], f"{path}: sha256 differs from SOURCES.md"
    return path


@pytest.mark.parametrize("name", sorted(SHARED_FILES))
def test_shared_files_load_completely(shared_data: Path, name: str) -> None:
    records = load_records(str(_shared(shared_data, name)))
    assert len(records) == SHARED_FILES[name][1]
    assert all(isinstance(r, PreferenceRecord) and r.conversational for r in records)


def test_hh_prompts_match_the_split_at_the_last_assistant_turn(
    shared_data: Path,
) -> None:
    path = _shared(shared_data, "hh-rlhf-harmless-base-test.jsonl.gz")
    records = load_records(str(path))
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    exceptions = []
    for line, (row, record) in enumerate(zip(rows, records, strict=True), start=1):
        cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
        if row["rejected"].startswith(row["chosen"][:cut]):
            assert record.chosen == [assistant(row["chosen"][cut:].strip())], line
            assert record.rejected == [assistant(row["rejected"][cut:].strip())], line
        else:
            exceptions.append(line)
        # The prompt messages alternate user/assistant and end with a user turn.
        roles = [m["role"] for m in record.prompt]
        assert roles[-1] == "user", line
    assert exceptions == [1255, 1689, 1953, 2037]
    assert sum(len(r.prompt) == 1 for r in records) == 662
    assert sum(r.chosen == [assistant("")] for r in records) == 4


def test_hh_first_pair_by_hand(shared_data: Path) -> None:
    path = _shared(shared_data, "hh-rlhf-harmless-base-test.jsonl.gz")
    first = load_records(str(path))[0]
    assert first.prompt[0] == user("what are some pranks with a pen i can do?")
    assert first.prompt[1] == assistant("Are you looking for practical joke ideas?")
    assert first.prompt[2] == user("yep")
    assert first.prompt[-1] == user(
        "okay some of these do not have anything to do with pens"
    )
    assert first.chosen == [
        assistant(
            "No, sorry!  All of these involve a pen, the point is that you can get "
            "funny results by doing pranks with pens."
        )
    ]
    assert first.source == f"{path}:1"


def test_sharegpt_file_by_hand(shared_data: Path) -> None:
    records = load_records(str(_shared(shared_data, "dpo-en-demo-300.json")))
    first = records[0]
    assert first.prompt == [
        user(
            "Hi! I'd like to create a new language game simulating the first person "
            "perspective of a character named Angela."
        )
    ]
    assert first.chosen[0]["content"].startswith("That sounds like a fun and engaging")
    assert sum(r.prompt[0]["role"] == "system" for r in records) == 80
    assert all(r.chosen[0]["role"] == "assistant" for r in records)


def test_stack_exchange_file_by_hand(shared_data: Path) -> None:
    records = load_records(str(_shared(shared_data, "stack-exchange-paired-tiny.json")))
    first = records[0]
    assert str(first.prompt[0]["content"]).startswith(
        "I'm writing a code using Java Swing to press the right button"
    )
    mapped = load_records(
        str(_shared(shared_data, "stack-exchange-paired-tiny.json")),
        column_map={
            "question": "prompt",
            "response_j": "chosen",
            "response_k": "rejected",
        },
    )
    assert mapped[0].prompt == first.prompt[0]["content"]
    assert mapped[0].chosen == first.chosen[0]["content"]
    assert not mapped[0].conversational


def test_hub_name_without_datasets_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import now fails
    with pytest.raises(DataError, match="needs the 'datasets' package"):
        load_records("someone/some-dataset")
