r"""Margins $m$ against hand-worked values: $z = \beta[r(y_w) - r(y_l)] - m$.

Batch: chosen lengths $|y_w|$ = (2, 3), rejected lengths $|y_l|$ = (1, 3).
"""

import torch
from builders import pair, side
from torch.testing import assert_close

from mipo.primitives import ConstantMargin, LengthDifferenceMargin, NoMargin, SumMargin

F64 = torch.float64
POLICY = [[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]]
BATCH = pair(
    side(POLICY, [[False, True, True], [True, True, True]]),
    side(POLICY, [[False, False, True], [True, True, True]]),
)


def _t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def test_no_margin_is_zero_and_reads_nothing() -> None:
    assert_close(NoMargin()(BATCH), _t([0.0, 0.0]))
    assert NoMargin().needs == frozenset()


def test_constant_margin_is_gamma_for_every_pair() -> None:
    """SimPO's gamma: m = 0.7 for both pairs, whatever the batch."""
    assert_close(ConstantMargin(gamma=0.7)(BATCH), _t([0.7, 0.7]))


def test_length_difference_margin_is_minus_alpha_times_length_difference() -> None:
    r"""$m = -\alpha_{len}(|y_w| - |y_l|)$ with $\alpha_{len} = 0.2$:
    $-0.2\,(2-1, 3-3) = (-0.2, 0)$, so $z$ gains $+0.2$ on the first pair."""
    assert_close(LengthDifferenceMargin(alpha_len=0.2)(BATCH), _t([-0.2, 0.0]))


def test_length_difference_margin_is_antisymmetric_under_swap() -> None:
    margin = LengthDifferenceMargin(alpha_len=0.2)
    assert_close(margin(BATCH.swapped()), -margin(BATCH))


def test_sum_margin_adds_its_parts_and_empty_sum_is_zero() -> None:
    """0.7 + (-0.2, 0) = (0.5, 0.7); an empty sum is the neutral margin."""
    margin = SumMargin(
        margins=(ConstantMargin(gamma=0.7), LengthDifferenceMargin(alpha_len=0.2))
    )
    assert_close(margin(BATCH), _t([0.5, 0.7]))
    assert_close(SumMargin(margins=())(BATCH), _t([0.0, 0.0]))
    assert margin.needs == frozenset()
