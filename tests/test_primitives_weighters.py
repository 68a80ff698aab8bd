r"""Token weighters against hand-worked weights $w_t$
(``docs/objective.md#the-assembled-objective-and-its-slots``).

Batch: chosen masks [[0, 1, 1], [1, 1, 1]] ($|y|$ = 2, 3), rejected masks
[[0, 0, 1], [1, 1, 0]] ($|y|$ = 1, 2).
"""

import pytest
import torch
from builders import pair, side
from torch.testing import assert_close

from mipo import BatchError, Need, PairBatch
from mipo.primitives import (
    BatchTokenWeights,
    MeanOverResponse,
    ProductWeighter,
    SumOverResponse,
)

F64 = torch.float64
POLICY = [[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]]
CHOSEN_MASK = [[False, True, True], [True, True, True]]
REJECTED_MASK = [[False, False, True], [True, True, False]]


def _batch(**fields: list) -> PairBatch:
    chosen = {name: value[0] for name, value in fields.items()}
    rejected = {name: value[1] for name, value in fields.items()}
    return pair(
        side(POLICY, CHOSEN_MASK, **chosen), side(POLICY, REJECTED_MASK, **rejected)
    )


def _t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def test_sum_over_response_is_all_ones_and_constant() -> None:
    chosen, rejected = SumOverResponse()(_batch())
    assert_close(chosen, torch.ones(2, 3, dtype=F64))
    assert_close(rejected, torch.ones(2, 3, dtype=F64))
    assert not chosen.requires_grad
    assert SumOverResponse().needs == frozenset()


def test_mean_over_response_is_one_over_the_length() -> None:
    """$w_t = 1/|y|$: chosen rows 1/2 and 1/3; rejected rows 1 and 1/2 (at every
    position; the objective masks)."""
    chosen, rejected = MeanOverResponse()(_batch())
    assert_close(chosen, _t([[0.5] * 3, [1 / 3] * 3]))
    assert_close(rejected, _t([[1.0] * 3, [0.5] * 3]))


def test_batch_token_weights_read_the_named_column() -> None:
    weights = ([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]], [[4.0, 5.0, 6.0], [0.0, 0.5, 1.0]])
    masks = ([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], [[0.0] * 3, [1.0] * 3])
    batch = _batch(token_weights=weights, kl_weights=masks)
    chosen, rejected = BatchTokenWeights()(batch)
    assert_close(chosen, _t(weights[0]))
    assert_close(rejected, _t(weights[1]))
    chosen, rejected = BatchTokenWeights(field="kl_weights")(batch)
    assert_close(chosen, _t(masks[0]))
    assert_close(rejected, _t(masks[1]))
    assert BatchTokenWeights().needs == {Need.TOKEN_WEIGHTS}
    assert BatchTokenWeights(field="kl_weights").needs == {Need.KL_WEIGHTS}


def test_batch_token_weights_name_the_missing_column() -> None:
    with pytest.raises(BatchError, match="token_weights"):
        BatchTokenWeights()(_batch())


def test_product_weighter_multiplies_its_factors() -> None:
    r"""Data weights times $1/|y|$: chosen [[0.1, 0.2, 0.3]/2, [1, 2, 3]/3]
    = [[0.05, 0.1, 0.15], [1/3, 2/3, 1]]; rejected [[4, 5, 6], [0, 0.25, 0.5]]."""
    weights = ([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]], [[4.0, 5.0, 6.0], [0.0, 0.5, 1.0]])
    weighter = ProductWeighter(factors=(BatchTokenWeights(), MeanOverResponse()))
    chosen, rejected = weighter(_batch(token_weights=weights))
    assert_close(chosen, _t([[0.05, 0.1, 0.15], [1 / 3, 2 / 3, 1.0]]))
    assert_close(rejected, _t([[4.0, 5.0, 6.0], [0.0, 0.25, 0.5]]))
    assert weighter.needs == {Need.TOKEN_WEIGHTS}


def test_product_weighter_with_sum_is_neutral() -> None:
    """SumOverResponse is the neutral element of the product."""
    batch = _batch()
    single = MeanOverResponse()(batch)
    product = ProductWeighter(factors=(SumOverResponse(), MeanOverResponse()))(batch)
    assert_close(product[0], single[0])
    assert_close(product[1], single[1])
