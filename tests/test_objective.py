r"""The assembled :class:`~mipo.Objective` against a hand-worked DPO example.

Two pairs, $\beta = 0.5$ (``seq`` = 3; masked positions in brackets):

=========  =====================  =====================  ==================
side        policy                 reference              masked log-ratio
=========  =====================  =====================  ==================
chosen 0    [(-1), -2, -3]         [(-1.5), -1, -4]       -1 + 1 = 0
chosen 1    [-0.5, -1.5, -2.5]     [-1, -1, -1]           0.5 - 0.5 - 1.5 = -1.5
rejected 0  [(-2), (-2), -2]       [(-2), (-1), -1]       -1
rejected 1  [-1, -3, (-1)]         [-0.5, -2, (-1)]       -0.5 - 1 = -1.5
=========  =====================  =====================  ==================

so $h = (0 - (-1), -1.5 - (-1.5)) = (1, 0)$, $z = \beta h = (0.5, 0)$ and the
DPO losses are $\mathrm{sp}(-z) = (\log(1 + e^{-0.5}), \log 2) = (0.474077,
0.693147)$ with mean 0.583612. Rewards $\beta r$: chosen (0, -0.75), rejected
(-0.5, -0.75); summed policy log-probs: chosen (-5, -4.5), rejected (-2, -4).
"""

import math

import pytest
import torch
from builders import pair, side
from torch.testing import assert_close

from mipo import NonFiniteLossError, Objective, PairBatch, Term
from mipo.primitives import ChosenNLL, ConstantMargin, MaskL1, UniformPrior

F64 = torch.float64
SP_HALF = math.log1p(math.exp(-0.5))  # 0.474077
LOG2 = math.log(2.0)


def _batch(
    chosen_policy: list | None = None,
    example_weights: list | None = None,
    token_weights: list | None = None,
) -> PairBatch:
    chosen = side(
        chosen_policy or [[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]],
        [[False, True, True], [True, True, True]],
        reference_logps=[[-1.5, -1.0, -4.0], [-1.0, -1.0, -1.0]],
        token_weights=token_weights,
    )
    rejected = side(
        [[-2.0, -2.0, -2.0], [-1.0, -3.0, -1.0]],
        [[False, False, True], [True, True, False]],
        reference_logps=[[-2.0, -1.0, -1.0], [-0.5, -2.0, -1.0]],
        token_weights=token_weights,
    )
    return pair(chosen, rejected, example_weights)


def _t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def test_dpo_loss_logits_and_per_pair_values() -> None:
    out = Objective(beta=0.5)(_batch())
    assert_close(out.logits, _t([0.5, 0.0]))
    assert_close(out.per_pair, _t([SP_HALF, LOG2]))
    assert_close(out.loss, torch.tensor((SP_HALF + LOG2) / 2, dtype=F64))
    assert_close(out.loss, torch.tensor(0.583612, dtype=F64), atol=1e-6, rtol=0)
    assert_close(out.chosen_rewards, _t([0.0, -0.75]))
    assert_close(out.rejected_rewards, _t([-0.5, -0.75]))
    assert not out.chosen_rewards.requires_grad


def test_metrics_use_trl_names_and_values() -> None:
    """rewards/* are batch means of beta r; accuracies count strict wins (0 > -0.5
    yes, -0.75 > -0.75 no: 0.5); logps/* are summed policy log-probs."""
    metrics = Objective(beta=0.5)(_batch()).metrics
    expected = {
        "loss": (SP_HALF + LOG2) / 2,
        "rewards/chosen": -0.375,
        "rewards/rejected": -0.625,
        "rewards/margins": 0.25,
        "rewards/accuracies": 0.5,
        "logps/chosen": -4.75,
        "logps/rejected": -3.0,
    }
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        # accuracies come back as float32 (``.float()`` of a bool): compare values.
        expected_value = torch.tensor(value, dtype=F64)
        assert_close(metrics[name], expected_value, check_dtype=False, msg=name)
        assert not metrics[name].requires_grad


def test_margin_is_subtracted_inside_the_link() -> None:
    """gamma = 0.5: z = (0.5 - 0.5, 0 - 0.5) = (0, -0.5); losses (log 2, sp(0.5))."""
    out = Objective(beta=0.5, margin=ConstantMargin(gamma=0.5))(_batch())
    assert_close(out.logits, _t([0.0, -0.5]))
    assert_close(out.per_pair, _t([LOG2, math.log1p(math.exp(0.5))]))


def test_example_weights_multiply_per_pair_losses_before_the_mean() -> None:
    """c = (2, 0.5): loss = (2 * 0.474077 + 0.5 * 0.693147) / 2 = 0.647364; the
    per-pair losses themselves are unweighted."""
    out = Objective(beta=0.5)(_batch(example_weights=[2.0, 0.5]))
    assert_close(out.per_pair, _t([SP_HALF, LOG2]))
    assert_close(out.loss, torch.tensor((2 * SP_HALF + 0.5 * LOG2) / 2, dtype=F64))


def test_weighted_terms_add_to_per_pair_and_are_logged() -> None:
    """NLL (sum) of the chosen responses is (5, 4.5); weight 0.1 adds (0.5, 0.45);
    ``terms/sft`` logs the unweighted batch mean 4.75."""
    term = Term(name="sft", term=ChosenNLL(normalise="sequence_sum"), weight=0.1)
    out = Objective(beta=0.5, terms=(term,))(_batch())
    assert_close(out.per_pair, _t([SP_HALF + 0.5, LOG2 + 0.45]))
    assert_close(out.metrics["terms/sft"], torch.tensor(4.75, dtype=F64))


def test_zero_weight_terms_are_skipped() -> None:
    """A zero-weight MaskL1 would fail (the batch has no token_weights): it is not
    computed, not logged, and its need is not declared."""
    objective = Objective(beta=0.5, terms=(Term(name="l1", term=MaskL1(), weight=0.0),))
    out = objective(_batch())
    assert "terms/l1" not in out.metrics
    assert objective.needs == Objective().needs
    assert_close(out.loss, Objective(beta=0.5)(_batch()).loss)


def test_uniform_prior_ignores_the_reference() -> None:
    r"""Reference-free: $h = (-5 - (-2), -4.5 - (-4)) = (-3, -0.5)$, $z = (-1.5, -0.25)$."""
    out = Objective(beta=0.5, prior=UniformPrior())(_batch())
    assert_close(out.logits, _t([-1.5, -0.25]))


def test_nan_in_the_link_raises_naming_the_link_and_pair() -> None:
    batch = _batch(chosen_policy=[[-1.0, -2.0, -3.0], [-0.5, math.nan, -2.5]])
    with pytest.raises(NonFiniteLossError, match=r"link \(pairs \[1\]\)"):
        Objective(beta=0.5)(batch)


def test_infinite_term_raises_naming_the_term() -> None:
    weights = [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    chosen_bad = [[1.0, math.inf, 1.0], [1.0, 1.0, 1.0]]
    batch = _batch(token_weights=weights)
    batch = PairBatch(
        chosen=batch.chosen.replace(token_weights=_t(chosen_bad)),
        rejected=batch.rejected,
    )
    objective = Objective(beta=0.5, terms=(Term(name="l1", term=MaskL1()),))
    with pytest.raises(NonFiniteLossError, match=r"terms/l1 \(pairs \[0\]\)"):
        objective(batch)


def test_check_finite_false_returns_the_non_finite_loss() -> None:
    batch = _batch(chosen_policy=[[-1.0, -2.0, -3.0], [-0.5, math.nan, -2.5]])
    out = Objective(beta=0.5, check_finite=False)(batch)
    assert math.isnan(out.loss.item())
