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


def test_answer_lengths_are_the_decoded_answers_lengths() -> None:
    """``lengths`` receives the character count of each greedy answer that the
    reward scored (here the reward is that count, so the two must agree)."""
    import torch
    from tiny import tiny_llama

    from mipo.data.builtin import arithmetic_records
    from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
    from mipo.training.gold import generate_answers, gold_scores

    records = arithmetic_records(n=5, seed=0)
    model, tokenizer = tiny_llama(0).eval(), tiny_chat_tokenizer()
    lengths: list[int] = []
    scores = gold_scores(
        model,
        tokenizer,
        records,
        lambda _prompt, answer: float(len(answer)),
        device=torch.device("cpu"),
        max_new_tokens=6,
        lengths=lengths,
    )
    answers = generate_answers(
        model, tokenizer, [r.prompt for r in records], device=torch.device("cpu"),
        max_new_tokens=6,
    )  # fmt: skip
    assert lengths == [len(a) for a in answers] == [int(s) for s in scores]
    assert max(lengths) > 0


def test_the_summary_puts_answer_length_next_to_the_gold_reward(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from mipo.training.summary import summary

    result = {
        "step": 4,
        "eval/gold_prompts": 3,
        "eval/gold_reward": 0.8,
        "eval/gold_reward_before": 0.5,
        "eval/gold_gain": 0.3,
        "eval/gold_answer_chars": 20.5,
        "eval/gold_answer_chars_before": 12.0,
    }
    config = SimpleNamespace(dataset="d", model="m")
    lines = summary("dpo", config, tmp_path, result).splitlines()
    gain = next(i for i, line in enumerate(lines) if "gain +0.300" in line)
    assert lines[gain + 1] == (
        "    answer length in characters (mean): before 12.0   after 20.5"
    )
