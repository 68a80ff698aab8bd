"""Gold rewards: importing a user's callable, scoring answers, refusing bad ones."""

import math
import sys
from pathlib import Path

import pytest

from mipo.data.builtin import gold_reward
from mipo.training.gold import GoldError, import_gold, resolve_gold, score_answers


def test_a_user_gold_reward_is_imported_by_module_and_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_rewards.py").write_text(
        "def short(prompt, answer):\n    return -len(answer.split())\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    reward = resolve_gold("data.jsonl", "my_rewards:short")
    assert reward("q", "one two three") == -3
    sys.modules.pop("my_rewards", None)


def test_the_builtin_reward_is_the_default() -> None:
    assert resolve_gold("builtin:arithmetic") is gold_reward
    assert resolve_gold("pairs.jsonl") is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon", "expected 'module:function'"),
        ("surely_not_a_module_xyz:f", "cannot import"),
        ("math:not_there", "no callable 'not_there'"),
    ],
)
def test_bad_gold_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(GoldError, match=message):
        import_gold(spec)


def test_scores_must_be_finite_numbers() -> None:
    prompts = [[{"role": "user", "content": "a"}], "b"]
    assert score_answers(lambda p, a: len(p + a), prompts, ["xy", "z"]) == [3.0, 2.0]
    with pytest.raises(GoldError, match="returned nan"):
        score_answers(lambda *_: math.nan, prompts, ["x", "y"])
    with pytest.raises(GoldError, match="not a number"):
        score_answers(lambda *_: "good", prompts, ["x", "y"])
