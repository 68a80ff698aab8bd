r"""Links $\ell(z)$ against hand-worked values at $z = (-2, 0, 1.5)$, $\beta = 0.5$.

With $\mathrm{sp}(x) = \log(1 + e^x)$: $\mathrm{sp}(-z) = (2.126928, 0.693147,
0.201413)$ and $\mathrm{sp}(z) = (0.126928, 0.693147, 1.701413)$.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from mipo.primitives import (
    HingeLink,
    IPOLink,
    LabelSmoothedLink,
    LogSigmoidLink,
    RobustLink,
)

F64 = torch.float64
Z = torch.tensor([-2.0, 0.0, 1.5], dtype=F64)
BETA = 0.5


def _sp(x: float) -> float:
    return math.log1p(math.exp(x))


def _t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def test_log_sigmoid_link_is_softplus_of_minus_z() -> None:
    """-log sigma(z) = sp(-z) = (2.126928, log 2, 0.201413)."""
    expected = _t([_sp(2.0), math.log(2.0), _sp(-1.5)])
    assert_close(LogSigmoidLink()(Z, beta=BETA), expected)
    assert_close(expected, _t([2.126928, 0.693147, 0.201413]), atol=1e-6, rtol=0)


def test_label_smoothed_link_mixes_both_labels() -> None:
    r"""$\varepsilon = 0.1$: $0.9\,\mathrm{sp}(-z) + 0.1\,\mathrm{sp}(z)$
    $= \mathrm{sp}(-z) + 0.1 z$ = (1.926928, 0.693147, 0.351413)."""
    expected = _t([1.926928, 0.693147, 0.351413])
    assert_close(
        LabelSmoothedLink(epsilon=0.1)(Z, beta=BETA), expected, atol=1e-6, rtol=0
    )


def test_label_smoothed_link_with_zero_epsilon_is_log_sigmoid() -> None:
    assert_close(
        LabelSmoothedLink(epsilon=0.0)(Z, beta=BETA), LogSigmoidLink()(Z, beta=BETA)
    )


def test_robust_link_is_the_unbiased_estimator() -> None:
    r"""$\varepsilon = 0.1$: $[0.9\,\mathrm{sp}(-z) - 0.1\,\mathrm{sp}(z)]/0.8$.

    z = -2: (1.914235 - 0.012693)/0.8 = 2.376928; z = 0: 0.8 log 2/0.8 = log 2;
    z = 1.5: (0.181272 - 0.170141)/0.8 = 0.013913.
    """
    expected = _t([(0.9 * _sp(2.0) - 0.1 * _sp(-2.0)) / 0.8, math.log(2.0)])
    expected = torch.cat([expected, _t([(0.9 * _sp(-1.5) - 0.1 * _sp(1.5)) / 0.8])])
    out = RobustLink(epsilon=0.1)(Z, beta=BETA)
    assert_close(out, expected)
    assert_close(out, _t([2.376928, 0.693147, 0.013913]), atol=1e-6, rtol=0)


def test_ipo_link_is_the_squared_distance_to_one_over_two_beta() -> None:
    r"""$h = z/\beta = (-4, 0, 3)$, target $1/(2\beta) = 1$: $(h-1)^2 = (25, 1, 4)$."""
    assert_close(IPOLink()(Z, beta=BETA), _t([25.0, 1.0, 4.0]))


def test_ipo_link_depends_on_beta() -> None:
    r"""$\beta = 0.25$: $h = (-8, 0, 6)$, target 2: (100, 4, 16)."""
    assert_close(IPOLink()(Z, beta=0.25), _t([100.0, 4.0, 16.0]))


def test_hinge_link_is_relu_of_one_minus_z() -> None:
    """max(0, 1 - z) = (3, 1, 0)."""
    assert_close(HingeLink()(Z, beta=BETA), _t([3.0, 1.0, 0.0]))


@pytest.mark.parametrize(
    "link",
    [
        LogSigmoidLink(),
        LabelSmoothedLink(epsilon=0.2),
        RobustLink(epsilon=0.2),
        IPOLink(),
        HingeLink(),
    ],
)
def test_links_read_nothing(link: object) -> None:
    assert link.needs == frozenset()  # type: ignore[attr-defined]
