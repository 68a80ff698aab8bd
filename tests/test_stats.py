"""The percentile bootstrap of :mod:`mipo.stats`, against cases worked by hand."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mipo.training.stats import bootstrap_mean, interval_fields, wilson_interval


def test_bootstrap_interval_matches_the_exact_resampling_distribution() -> None:
    # Values (0, 0, 0, 1): a resample's sum is Binomial(4, 1/4), so its mean is
    # k/4 with P = 81, 108, 54, 12, 1 (/256) for k = 0..4. The CDF is 0.316 at 0,
    # 0.738 at 1/4, 0.949 at 1/2 and 0.996 at 3/4: the 2.5 % quantile is 0 and
    # the 97.5 % quantile is 3/4.
    interval = bootstrap_mean([0.0, 0.0, 0.0, 1.0], resamples=40_000, seed=1)
    assert interval.mean == 0.25
    assert interval.low == 0.0
    assert interval.high == 0.75
    assert interval.n == 4
    assert not interval.excludes_zero()


def test_bootstrap_of_a_shifted_sample_excludes_zero() -> None:
    # Two values 1 and 3: resample means are 1, 2, 3 with P = 1/4, 1/2, 1/4, so
    # the 90 % interval (5 % and 95 % quantiles) is [1, 3], all above 0.
    interval = bootstrap_mean([1.0, 3.0], level=0.9, resamples=40_000, seed=2)
    assert (interval.mean, interval.low, interval.high) == (2.0, 1.0, 3.0)
    assert interval.excludes_zero()
    assert str(interval) == "+2.000 [90% CI +1.000, +3.000]"


def test_bootstrap_is_seeded() -> None:
    values = [0.1 * i for i in range(30)]
    assert bootstrap_mean(values, seed=5) == bootstrap_mean(values, seed=5)
    assert bootstrap_mean(values, seed=5) != bootstrap_mean(values, seed=6)


@given(st.lists(st.floats(-10, 10), min_size=1, max_size=40))
def test_the_interval_holds_the_mean_and_lies_within_the_data(
    values: list[float],
) -> None:
    interval = bootstrap_mean(values, resamples=500)
    assert min(values) - 1e-9 <= interval.low <= interval.high <= max(values) + 1e-9
    assert math.isclose(interval.mean, sum(values) / len(values), abs_tol=1e-9)


@pytest.mark.parametrize(
    ("values", "level", "message"),
    [
        ([], 0.95, "at least one"),
        ([1.0, math.nan], 0.95, "finite"),
        ([1.0], 1.0, "level"),
    ],
)
def test_bad_input_is_refused(values: list[float], level: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        bootstrap_mean(values, level=level)


def test_interval_fields_name_the_ends() -> None:
    fields = interval_fields("eval/gold_gain", bootstrap_mean([2.0, 2.0]))
    assert fields == {
        "eval/gold_gain": 2.0,
        "eval/gold_gain_low": 2.0,
        "eval/gold_gain_high": 2.0,
    }


def test_wilson_interval_by_hand() -> None:
    # 10 of 10: centre (1 + z^2/20) / (1 + z^2/10) = 0.8613, half-width
    # z sqrt(z^2/400) / (1 + z^2/10) = 0.1388 with z = 1.95996: low 0.7225.
    interval = wilson_interval(10, 10)
    assert interval.mean == 1.0 and interval.high == 1.0
    assert abs(interval.low - 0.7225) < 1e-4
    # 5 of 10: symmetric about 1/2, half-width z sqrt(1/40 + z^2/400)/(1 + z^2/10)
    half = wilson_interval(5, 10)
    assert abs((half.low + half.high) / 2 - 0.5) < 1e-12
    assert abs(half.high - 0.5 - 0.2634) < 1e-4
