r"""Extra terms against hand-worked values.

Chosen policy log-probs [[-1, -2, -3], [-0.5, -1.5, -2.5]] with masks
[[0, 1, 1], [1, 1, 1]]: the summed NLL is (2 + 3, 0.5 + 1.5 + 2.5) = (5, 4.5),
$|y_w|$ = (2, 3), $B = 2$ pairs and $N = 5$ chosen tokens in the batch.
"""

import pytest
import torch
from builders import pair, side
from torch.testing import assert_close

from mipo import BatchError, Need, PairBatch
from mipo.primitives import ChosenNLL, MaskL1

F64 = torch.float64
CHOSEN_MASK = [[False, True, True], [True, True, True]]
REJECTED_MASK = [[False, False, True], [True, True, False]]
POLICY = [[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]]


def _t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def _batch(
    chosen_weights: list | None = None, rejected_weights: list | None = None
) -> PairBatch:
    return pair(
        side(POLICY, CHOSEN_MASK, token_weights=chosen_weights),
        side([[-9.0] * 3] * 2, REJECTED_MASK, token_weights=rejected_weights),
    )


def test_chosen_nll_sequence_sum() -> None:
    """-sum_t log pi(y_w,t) = (5, 4.5); the rejected side (-9s) is not read."""
    assert_close(ChosenNLL(normalise="sequence_sum")(_batch()), _t([5.0, 4.5]))


def test_chosen_nll_sequence_mean() -> None:
    """Divided by |y_w| = (2, 3): (2.5, 1.5)."""
    assert_close(ChosenNLL(normalise="sequence_mean")(_batch()), _t([2.5, 1.5]))


def test_chosen_nll_batch_tokens_has_the_token_mean_as_batch_mean() -> None:
    """Times B/N = 2/5: (2, 1.8), whose batch mean 1.9 = 9.5/5 is the mean
    cross-entropy over the 5 chosen tokens (SimPO's and TRL's sft loss)."""
    value = ChosenNLL()(_batch())
    assert_close(value, _t([2.0, 1.8]))
    assert_close(value.mean(), torch.tensor(1.9, dtype=F64))
    assert ChosenNLL().needs == frozenset()


def test_mask_l1_sums_absolute_masked_weights_of_both_sides() -> None:
    """chosen |w| over the mask: (1 + 0.5, 0.2 + 0 + 0.3) = (1.5, 0.5); rejected:
    (2, 1 + 1) = (2, 2) (the 7 is padding); total (3.5, 2.5)."""
    batch = _batch(
        [[9.0, -1.0, 0.5], [0.2, 0.0, -0.3]], [[1.0, 1.0, -2.0], [1.0, 1.0, 7.0]]
    )
    assert_close(MaskL1()(batch), _t([3.5, 2.5]))
    assert MaskL1().needs == {Need.TOKEN_WEIGHTS}
    assert MaskL1(field="kl_weights").needs == {Need.KL_WEIGHTS}


def test_mask_l1_names_the_missing_column() -> None:
    with pytest.raises(BatchError, match=r"chosen\.token_weights"):
        MaskL1()(_batch())
