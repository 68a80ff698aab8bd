"""train_eval_split: a seeded partition."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mipo.data import train_eval_split


@given(n=st.integers(2, 300), fraction=st.floats(0.0, 0.45), seed=st.integers(0, 2**32))
def test_split_is_a_seeded_partition(n: int, fraction: float, seed: int) -> None:
    items = list(range(n))
    train, held = train_eval_split(items, fraction, seed)
    assert sorted(train + held) == items
    expected_eval = 0 if fraction == 0.0 else max(1, round(n * fraction))
    assert len(held) == expected_eval
    assert train_eval_split(items, fraction, seed) == (train, held)


def test_hh_style_split_sizes() -> None:
    train, held = train_eval_split(list(range(2312)), 200 / 2312, seed=42)
    assert (len(train), len(held)) == (2112, 200)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, float("nan")])
def test_bad_fraction_is_an_error(fraction: float) -> None:
    with pytest.raises(ValueError, match="eval_fraction must be in"):
        train_eval_split([1, 2, 3], fraction, seed=0)


def test_nothing_left_for_training_is_an_error() -> None:
    with pytest.raises(ValueError, match="leave none for training"):
        train_eval_split([1], 0.5, seed=0)
