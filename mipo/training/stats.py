r"""Error bars: the percentile bootstrap of a mean.

For values $v_1, \dots, v_n$ (one per held-out prompt or pair) the interval at
level $1 - a$ is the $a/2$ and $1 - a/2$ quantiles of the means of $B$ resamples
drawn with replacement (Efron and Tibshirani, *An Introduction to the
Bootstrap*, 1993, Ch. 13.3). A paired comparison (gold reward after minus
before, on the same prompts) bootstraps the per-prompt differences, which keeps
the pairing. The resamples are seeded, so a report is reproducible.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

import numpy as np


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class Interval:
    """A mean with its bootstrap interval.

    Args:
        mean: the sample mean.
        low: the lower end of the interval.
        high: the upper end of the interval.
        level: the coverage the interval was built for, e.g. 0.95.
        n: how many values the mean is over.
    """

    mean: float
    low: float
    high: float
    level: float
    n: int

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0."""
        return self.low > 0.0 or self.high < 0.0

    def __str__(self) -> str:
        percent = round(100 * self.level)
        return f"{self.mean:+.3f} [{percent}% CI {self.low:+.3f}, {self.high:+.3f}]"


def bootstrap_mean(
    values: Sequence[float],
    *,
    level: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> Interval:
    """The mean of ``values`` and its percentile-bootstrap interval.

    >>> bootstrap_mean([1.0, 1.0, 1.0]).low
    1.0

    Raises:
        ValueError: on no values, a non-finite value, or a level outside (0, 1).
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError("bootstrap_mean: needs at least one value")
    if not np.isfinite(data).all():
        raise ValueError("bootstrap_mean: every value must be finite")
    if not 0.0 < level < 1.0:
        raise ValueError(f"bootstrap_mean: level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Interval(
        mean=float(data.mean()),
        low=float(low),
        high=float(high),
        level=level,
        n=int(data.size),
    )


def wilson_interval(successes: float | int, n: int, *, level: float = 0.95) -> Interval:
    r"""A proportion with its Wilson score interval (Wilson 1927): with
    $\hat p = k/n$ and $z$ the normal quantile of the level,
    $\big(\hat p + z^2/2n \pm z\sqrt{\hat p(1-\hat p)/n + z^2/4n^2}\big)/(1 + z^2/n)$.
    Unlike the bootstrap it does not collapse to a point at 0/n or n/n.

    >>> str(wilson_interval(10, 10))
    '+1.000 [95% CI +0.722, +1.000]'

    Raises:
        ValueError: on n < 1 or successes outside [0, n].
    """
    from statistics import NormalDist

    if n < 1 or not 0 <= successes <= n:
        raise ValueError(
            f"wilson_interval: needs 0 <= successes <= n, n >= 1; got {successes}, {n}"
        )
    z = NormalDist().inv_cdf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return Interval(mean=p, low=max(0.0, centre - half), high=min(1.0, centre + half),
                    level=level, n=n)  # fmt: skip


def interval_fields(name: str, interval: Interval) -> dict[str, float]:
    """``{name: mean, name_low: low, name_high: high}`` for a metrics record."""
    return {
        name: interval.mean,
        f"{name}_low": interval.low,
        f"{name}_high": interval.high,
    }


__all__ = ["Interval", "bootstrap_mean", "interval_fields", "wilson_interval"]
