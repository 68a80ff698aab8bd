"""builtin:sentiment: the generator and its lexicon gold reward."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mipo.data import DataError, load_records
from mipo.data.builtin import builtin_gold_reward
from mipo.data.sentiment import (
    NEGATIVE,
    NEGATORS,
    OPENINGS,
    POSITIVE,
    sentiment_records,
    sentiment_reward,
)


@given(n=st.integers(1, 60), seed=st.integers(0, 2**32))
def test_chosen_and_rejected_differ_in_sentiment_only(n: int, seed: int) -> None:
    for record in sentiment_records(n=n, seed=seed):
        chosen = record.chosen[0]["content"]
        rejected = record.rejected[0]["content"]
        assert sentiment_reward("", chosen) == 1.0
        assert sentiment_reward("", rejected) == -1.0
        # same skeleton: the words that are not polarity words agree
        polar = POSITIVE | NEGATIVE | NEGATORS | {"happily"}
        neutral = [w for w in chosen.lower().split() if w.strip(",.") not in polar]
        assert neutral == [
            w for w in rejected.lower().split() if w.strip(",.") not in polar
        ]


@given(seed=st.integers(0, 2**32))
def test_generation_is_deterministic_and_every_prompt_distinct(seed: int) -> None:
    first = load_records(f"builtin:sentiment?n=300&seed={seed}")
    assert first == load_records(f"builtin:sentiment?n=300&seed={seed}")
    prompts = [r.prompt[0]["content"] for r in first]
    assert len(set(prompts)) == len(prompts)
    assert first[0].source == "builtin:sentiment[0]"


def _voice(prompt: str) -> str:
    opening = prompt.split('"')[1]
    for voice, templates in OPENINGS.items():
        for template in templates:
            head, tail = template.split("{s}")
            if opening.startswith(head) and opening.endswith(tail):
                return voice
    raise AssertionError(f"no template makes {opening!r}")


def test_the_opening_voices_are_mixed() -> None:
    voices = [_voice(r.prompt[0]["content"]) for r in sentiment_records(n=600)]
    for voice in OPENINGS:
        assert 150 < voices.count(voice) < 250, voice


@given(st.sampled_from(sorted(POSITIVE)), st.sampled_from(sorted(NEGATORS)))
def test_a_negator_flips_the_sign(word: str, negator: str) -> None:
    assert sentiment_reward("", f"It was {word}.") == 1.0
    assert sentiment_reward("", f"It {negator} {word}.") == -1.0
    assert sentiment_reward("", f"{negator} and then it was very {word}") == 1.0


@given(
    st.lists(st.sampled_from(sorted(POSITIVE | NEGATIVE | {"the", "cat"})), max_size=12)
)
def test_the_reward_is_the_share_of_polar_words(words: list[str]) -> None:
    positive = sum(w in POSITIVE for w in words)
    negative = sum(w in NEGATIVE for w in words)
    expected = (
        (positive - negative) / (positive + negative)
        if words and positive + negative
        else 0.0
    )
    assert sentiment_reward("", " ".join(words)) == pytest.approx(expected)


def test_the_task_carries_its_gold_reward() -> None:
    assert builtin_gold_reward("builtin:sentiment?n=5") is sentiment_reward
    assert builtin_gold_reward("data.jsonl") is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtin:sentiment?n=0", "n must be > 0"),
        ("builtin:sentiment?n=99999", "n must be <="),
    ],
)
def test_bad_sizes_are_refused(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_records(spec)
