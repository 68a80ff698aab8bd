"""TIS-DPO weight transforms against hand-worked values and float64 re-derivations
of the authors' rules (``docs/recipe_notes/tis_dpo.md``)."""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from torch.testing import assert_close

from mipo import PairBatch, Side
from mipo.errors import CompositionError
from mipo.primitives.transforms import (
    ExponentialTransform,
    IdentityTransform,
    RankTransform,
    ThresholdScaleTransform,
    ThresholdTransform,
    TopFractionTransform,
    TransformedWeights,
    UniformRandomTransform,
)

F64 = torch.float64


def _row(
    values: list[float], valid: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.tensor([values], dtype=F64)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    mask[0, : len(values) if valid is None else valid] = True
    return scores, mask


def test_rank_transform_orders_ties_by_position_and_spans_the_range() -> None:
    """Scores [0.3, -1, 0.3, 2] rank (stable) as [1, 0, 2, 3]; with n = 4 the step
    is (1.3 - 0.7) / 3 = 0.2, so weights are [0.9, 0.7, 1.1, 1.3]."""
    scores, mask = _row([0.3, -1.0, 0.3, 2.0])
    weights = RankTransform()(scores, mask)
    assert_close(weights, torch.tensor([[0.9, 0.7, 1.1, 1.3]], dtype=F64))


def test_rank_transform_single_token_gets_one_and_padding_zero() -> None:
    """A one-token response gets 1.0; padded positions get 0."""
    scores, mask = _row([5.0, 9.0, -3.0], valid=1)
    assert_close(
        RankTransform()(scores, mask), torch.tensor([[1.0, 0.0, 0.0]], dtype=F64)
    )


def test_rank_transform_ignores_masked_scores() -> None:
    """Ranks count valid tokens only: [2, 1 | 100] ranks as [1, 0] over n = 2."""
    scores, mask = _row([2.0, 1.0, 100.0], valid=2)
    assert_close(
        RankTransform()(scores, mask), torch.tensor([[1.3, 0.7, 0.0]], dtype=F64)
    )


def test_threshold_and_scale_maps_endpoints_to_scale_bounds() -> None:
    """clamp to [-1.5, 1.5] then map onto [0.7, 1.3]: -9 -> 0.7, 1.5 -> 1.3,
    0 -> 1.0 (midpoint), 0.75 -> 0.7 + 2.25 * 0.2 = 1.15."""
    scores, mask = _row([-9.0, 1.5, 0.0, 0.75])
    weights = ThresholdScaleTransform()(scores, mask)
    assert_close(weights, torch.tensor([[0.7, 1.3, 1.0, 1.15]], dtype=F64))


def test_threshold_clamps() -> None:
    scores, mask = _row([-3.0, 0.25, 7.0])
    assert_close(
        ThresholdTransform()(scores, mask), torch.tensor([[-1.0, 0.25, 1.0]], dtype=F64)
    )


def test_identity_keeps_signed_scores_and_zeroes_padding() -> None:
    scores, mask = _row([-0.5, 0.5, 3.0], valid=2)
    assert_close(
        IdentityTransform()(scores, mask), torch.tensor([[-0.5, 0.5, 0.0]], dtype=F64)
    )


def test_top_fraction_default_is_all_ones_trap() -> None:
    """The authors' default (binary, top 100 %) gives every token weight 1."""
    scores, mask = _row([-4.0, 0.1, 2.0])
    assert_close(TopFractionTransform()(scores, mask), torch.ones(1, 3, dtype=F64))


def test_top_fraction_half_keeps_the_upper_half_and_ties() -> None:
    """K = floor(4 * 50 / 100) = 2: [1, 2, 3, 4] -> [0, 0, 1, 1]. For [1, 3, 3, 0]
    the two 3s fill slots 0 and 1 < K, so both get 1."""
    scores, mask = _row([1.0, 2.0, 3.0, 4.0])
    half = TopFractionTransform(top_percent=50.0)
    assert_close(half(scores, mask), torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=F64))
    scores, mask = _row([1.0, 3.0, 3.0, 0.0])
    assert_close(half(scores, mask), torch.tensor([[0.0, 1.0, 1.0, 0.0]], dtype=F64))


def test_top_fraction_tie_across_the_cut_takes_the_last_tied_slot() -> None:
    """[3, 3, 1] at 50 %: K = floor(1.5) = 1; sorted descending the 3s fill slots
    0 and 1, and the last of them (1) is not < K, so both 3s get 0: no token at
    all is kept. [5, 2, 2, 2, 1] at 60 %: K = 3, the 2s fill slots 1..3, so only
    the 5 is kept. Padding stays 0."""
    scores, mask = _row([3.0, 3.0, 1.0])
    zeros = torch.zeros(1, 3, dtype=F64)
    assert_close(TopFractionTransform(top_percent=50.0)(scores, mask), zeros)
    scores, mask = _row([5.0, 2.0, 2.0, 2.0, 1.0, 9.0], valid=5)
    expected = torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=F64)
    assert_close(TopFractionTransform(top_percent=60.0)(scores, mask), expected)


def top_fraction_oracle(values: list[float], top_percent: float) -> list[float]:
    """The authors' rule, re-derived: walk the values in descending order, slot
    i holding 1 if i < int(n p / 100) else 0; a later slot of an equal value
    overwrites an earlier one; then read each value's entry."""
    cut = int(len(values) * top_percent / 100)
    entry: dict[float, float] = {}
    for slot, value in enumerate(sorted(values, reverse=True)):
        entry[value] = 1.0 if slot < cut else 0.0
    return [entry[value] for value in values]


@given(
    values=st.lists(st.sampled_from([-1.5, -0.25, 0.0, 0.5, 2.0, 3.75]), max_size=12)
    | st.lists(st.floats(-5.0, 5.0), max_size=12),
    top_percent=st.floats(0.5, 100.0) | st.sampled_from([10.0, 33.0, 50.0, 70.0]),
    padding=st.integers(0, 3),
)
def test_top_fraction_matches_the_authors_rule(
    values: list[float], top_percent: float, padding: int
) -> None:
    row = [*values, *[7.0] * padding]
    scores, mask = _row(row, valid=len(values))
    weights = TopFractionTransform(top_percent=top_percent)(scores, mask)
    expected = top_fraction_oracle(values, top_percent) + [0.0] * padding
    assert weights[0].tolist() == expected


def test_random_transform_is_bounded_and_repeatable() -> None:
    scores, mask = _row([0.0] * 6, valid=5)
    first = UniformRandomTransform(seed=3)(scores, mask)
    assert_close(first, UniformRandomTransform(seed=3)(scores, mask))
    assert bool(((first[0, :5] >= 0.7) & (first[0, :5] <= 1.3)).all())
    assert first[0, 5].item() == 0.0
    assert not torch.equal(first, UniformRandomTransform(seed=4)(scores, mask))


def test_exponential_transform_value() -> None:
    """k exp(mu clamp(r, L, U)) with k = 2, mu = 0.5, [L, U] = [-1, 1]:
    r = 4 -> 2 e^{0.5}; r = -0.4 -> 2 e^{-0.2}."""
    scores, mask = _row([4.0, -0.4])
    weights = ExponentialTransform(k=2.0, mu=0.5)(scores, mask)
    expected = torch.tensor([[2 * torch.e**0.5, 2 * torch.e**-0.2]], dtype=F64)
    assert_close(weights, expected)


def test_transforms_refuse_bad_bounds() -> None:
    with pytest.raises(CompositionError, match="lower"):
        ThresholdTransform(lower=1.0, upper=1.0)
    with pytest.raises(CompositionError, match="top_percent"):
        TopFractionTransform(top_percent=0.0)


def _side(scores: list[list[float]], valid: list[int]) -> Side:
    weights = torch.tensor(scores, dtype=F64)
    mask = torch.zeros_like(weights, dtype=torch.bool)
    for row, count in enumerate(valid):
        mask[row, :count] = True
    return Side(
        policy_logps=torch.zeros_like(weights),
        response_mask=mask,
        token_weights=weights,
    )


def test_transformed_weights_gives_eos_its_own_weight() -> None:
    """With eos_weight = 0 the last response token is excluded from the ranking:
    row [5, 1, 9 | EOS] ranks [5, 1, 9] as [1, 0, 2] -> [1.0, 0.7, 1.3], EOS -> 0."""
    side = _side([[5.0, 1.0, 9.0, 4.0, 0.0]], [4])
    batch = PairBatch(chosen=side, rejected=side)
    weighter = TransformedWeights(transform=RankTransform(), eos_weight=0.0)
    chosen, _ = weighter(batch)
    assert_close(chosen, torch.tensor([[1.0, 0.7, 1.3, 0.0, 0.0]], dtype=F64))


@given(
    values=st.lists(st.integers(-20, 20).map(lambda i: i / 4), min_size=1, max_size=8),
    scale=st.floats(0.1, 10.0),
    shift=st.floats(-3.0, 3.0),
)
def test_rank_transform_is_invariant_to_increasing_affine_maps(
    values: list[float], scale: float, shift: float
) -> None:
    """Ranks depend on the order of scores only (ties keep position order). Scores
    are multiples of 1/4, so the affine map can neither create nor break ties."""
    scores, mask = _row(values)
    base = RankTransform()(scores, mask)
    assert_close(RankTransform()(scores * scale + shift, mask), base)
    assert float(base.min()) >= 0.7 - 1e-12
    assert float(base.max()) <= 1.3 + 1e-12
