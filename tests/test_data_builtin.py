"""builtin:arithmetic and its gold reward."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mipo.data import DataError, gold_reward, load_records
from mipo.data.builtin import DEFAULT_SIZE


def true_result(question: str) -> int:
    """Independent oracle: evaluate the question with Python's integer arithmetic."""
    match = re.fullmatch(
        r"What is (\d+) ([+\-*]) (\d+)\? Answer with the number only\.", question
    )
    assert match is not None, question
    a, op, b = int(match[1]), match[2], int(match[3])
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def test_default_task_is_labelled_correctly() -> None:
    records = load_records("builtin:arithmetic")
    assert len(records) == DEFAULT_SIZE
    operators = set()
    for i, record in enumerate(records):
        question = record.prompt[0]["content"]
        result = true_result(question)
        operators.add(question.split()[3])
        assert record.gold == str(result)
        assert record.chosen[0]["content"] == str(result)
        wrong = int(record.rejected[0]["content"])
        assert wrong != result and wrong >= 0
        assert gold_reward(question, record.chosen[0]["content"]) == 1.0
        assert gold_reward(question, record.rejected[0]["content"]) == 0.0
        assert record.source == f"builtin:arithmetic[{i}]"
        assert record.prompt[0]["role"] == "user"
        assert record.chosen[0]["role"] == record.rejected[0]["role"] == "assistant"
    assert operators == {"+", "-", "*"}


def test_generation_is_deterministic_in_the_seed() -> None:
    first = load_records("builtin:arithmetic?n=50&seed=7")
    assert first == load_records("builtin:arithmetic?n=50&seed=7")
    assert first != load_records("builtin:arithmetic?n=50&seed=8")
    assert len(first) == 50


@given(
    a=st.integers(0, 999),
    b=st.integers(0, 999),
    op=st.sampled_from("+-*"),
    noise=st.integers(-3, 3),
)
def test_gold_reward_scores_the_last_integer(
    a: int, b: int, op: str, noise: int
) -> None:
    """Only the final integer counts: echoing the operands first is harmless, and a
    trailing wrong number makes the answer wrong."""
    question = f"What is {a} {op} {b}? Answer with the number only."
    result = true_result(question)
    answer = f"{a} {op} {b} = {result + noise}"
    assert gold_reward(question, answer) == (1.0 if noise == 0 else 0.0)
    assert gold_reward(question, f"{result}, or maybe {result + 7}") == 0.0


def test_gold_reward_without_a_number_is_zero() -> None:
    assert gold_reward("What is 2 + 2? Answer with the number only.", "four") == 0.0


def test_gold_reward_rejects_a_prompt_without_a_question() -> None:
    with pytest.raises(ValueError, match="no 'What is A OP B\\?' question"):
        gold_reward("Tell me a joke.", "1")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtin:poetry", "unknown built-in task 'poetry'"),
        ("builtin:arithmetic?size=3", "unknown option 'size'"),
        ("builtin:arithmetic?n=three", "option 'n' must be an integer"),
        ("builtin:arithmetic?n=0", "n must be > 0"),
    ],
)
def test_bad_specs_are_errors(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        load_records(spec)
