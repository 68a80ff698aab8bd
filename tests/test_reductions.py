r"""Reductions between methods as Hypothesis properties, in values and gradients.

Each test builds a mipo objective (through a recipe's ``make_objective`` where a
recipe exists, otherwise from primitives) and compares it on float64 batches
drawn from logits (:mod:`strategies`) with an independent oracle
(:mod:`oracles`) or with another mipo objective at the reduction point.
Gradients are taken with respect to the policy logits of both roles. Each test's
docstring names the ``proofs/`` page with the derivation.

Where a claim is that gradients *differ* (detached priors, class G/S of
``docs/objective.md#exactness-classes``), the difference is asserted on the
pre-link logit $z$:
$\partial L/\partial\theta = \ell'(z)\,\partial z/\partial\theta$ shares the
factor $\ell'(z)$, which can underflow for large $|z|$, so the gap is measured
where the prior acts. Those properties draw bounded logits (|logit| <= 3) so
that every response token has probability at most ``e^3 / (e^3 + e^-3)`` and the
gap has a lower bound.
"""

from collections.abc import Iterator

import hypothesis.strategies as st
import numpy as np
import oracles
import pytest
import torch
from conftest import TOLERANCES
from hypothesis import example, given
from hypothesis.extra.numpy import arrays
from strategies import MAX_BATCH, PairLogits, betas, example_pair, pair_logits
from torch import Tensor
from torch.testing import assert_close

from mipo import Objective, PairBatch
from mipo.primitives import (
    BatchPrior,
    BatchTokenWeights,
    ConstantMargin,
    GeometricMeanPrior,
    HingeLink,
    LabelSmoothedLink,
    LengthDifferenceMargin,
    MeanOverResponse,
    ReferencePrior,
    RobustLink,
    SumOverResponse,
    TokenInterpolationPrior,
    UniformPrior,
)
from mipo.training.recipes import load_recipe

TOL = TOLERANCES[torch.float64]

CDPO = load_recipe("cdpo")
DPO = load_recipe("dpo")
HDPO = load_recipe("hdpo")
IPO = load_recipe("ipo")
MI_DPO = load_recipe("mi_dpo")
RDPO = load_recipe("rdpo")
SIMPO = load_recipe("simpo")
SPARSEPO = load_recipe("sparsepo")
TDPO = load_recipe("tdpo")
TIS_DPO = load_recipe("tis_dpo")

epsilons = st.floats(min_value=0.0, max_value=0.45)
positive = st.floats(min_value=0.1, max_value=2.0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Tiny tensors: OpenMP's thread hand-off costs milliseconds per op on a busy
    # 2-core machine, the maths itself microseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------- helpers


def _grads(value: Tensor, pair: PairLogits) -> tuple[Tensor, ...]:
    return torch.autograd.grad(
        value, pair.leaves, retain_graph=True, materialize_grads=True
    )


def assert_same(actual: Tensor, expected: Tensor, pair: PairLogits) -> None:
    """Equal values and equal gradients w.r.t. both roles' policy logits.

    Value and gradients are compared in one flat vector (the tolerances are
    elementwise, so this is the same check as three calls, at a third the cost).
    """

    def flat(loss: Tensor) -> Tensor:
        parts = [loss.detach().reshape(1), *(g.flatten() for g in _grads(loss, pair))]
        return torch.cat(parts)

    assert_close(flat(actual), flat(expected), **TOL)


def logit_grads(
    objective: Objective, pair: PairLogits, batch: PairBatch | None = None
) -> tuple[Tensor, ...]:
    """Gradient of sum_i z_i (the pre-link logits) w.r.t. the policy logits."""
    out = objective(pair.batch() if batch is None else batch)
    return _grads(out.logits.sum(), pair)


def assert_clearly_differ(
    a: tuple[Tensor, ...], b: tuple[Tensor, ...], threshold: float
) -> None:
    gap = max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))
    assert gap > threshold, f"gradients differ by only {gap:.3g} <= {threshold:.3g}"


# ------------------------------------------------------------- DPO, MI-DPO


# z = -20.05: F.softplus's threshold made the link's gradient exactly 1 there
# instead of sigma(20.05) = 1 - 2e-9 (fixed in mipo/primitives/link.py)
SATURATED = example_pair(
    chosen_policy=[[[-1.0, 18.0]]],
    chosen_reference=[[[1.0, -1.0]]],
    rejected_policy=[[[-1.0, -1.0]]],
    rejected_reference=[[[-1.0, -1.0]]],
    chosen_labels=[[0]],
    rejected_labels=[[0]],
)


@given(pair=pair_logits(), beta=betas)
@example(pair=SATURATED, beta=1.0625)
def test_dpo_recipe_equals_oracle(pair: PairLogits, beta: float) -> None:
    """proofs/dpo_to_reference_prior.md: the DPO recipe (reference prior, sum
    weighter, log-sigmoid link) equals -log sigma(beta h)."""
    loss = DPO.make_objective(beta=beta)(pair.batch()).loss
    assert_same(loss, oracles.dpo(*pair.oracle(), beta), pair)


@given(pair=pair_logits(), beta=betas)
@example(pair=SATURATED, beta=1.0625)
def test_mi_dpo_with_reference_prior_is_dpo(pair: PairLogits, beta: float) -> None:
    """proofs/mi_dpo_to_dpo.md: MI-DPO with zeta = pi_ref and alpha = beta is DPO."""
    objective = MI_DPO.make_objective(beta=beta, prior=ReferencePrior())
    assert_same(objective(pair.batch()).loss, oracles.dpo(*pair.oracle(), beta), pair)
    dpo = DPO.make_objective(beta=beta)
    assert_same(objective(pair.batch()).loss, dpo(pair.batch()).loss, pair)


@given(
    pair=pair_logits(),
    beta=betas,
    constants=arrays(np.float64, (MAX_BATCH,), elements=st.floats(-50.0, 50.0)),
)
def test_prompt_constant_in_prior_cancels(
    pair: PairLogits, beta: float, constants: np.ndarray
) -> None:
    """proofs/prior_plus_prompt_constant_to_prior.md: log zeta(y) + c(x) on both
    responses of a pair changes neither the loss nor its gradient."""
    shifts = []
    for side in (pair.chosen, pair.rejected):
        # c(x) on the first response token of each row: log zeta(y) gains c(x)
        first = side.mask & (side.mask.cumsum(-1) == 1)
        c = torch.from_numpy(constants[: pair.size])[:, None]
        reference = side.side().reference_logps.detach()
        shifts.append({"prior_logps": reference + c * first})
    batch = pair.batch(chosen=shifts[0], rejected=shifts[1])
    loss = Objective(prior=BatchPrior(), beta=beta)(batch).loss
    assert_same(loss, oracles.dpo(*pair.oracle(), beta), pair)


@given(pair=pair_logits(), beta=betas)
def test_reference_free_dpo_is_uniform_prior(pair: PairLogits, beta: float) -> None:
    """proofs/reference_free_dpo_to_uniform_prior.md: zeta = const gives
    -log sigma(beta (S_pi(y_w) - S_pi(y_l)))."""
    objective = DPO.make_objective(beta=beta, prior=UniformPrior())
    loss = objective(pair.batch()).loss
    assert_same(loss, oracles.dpo_reference_free(*pair.oracle(), beta), pair)


# ------------------------------------------------------------ links


@given(pair=pair_logits(), beta=betas)
def test_cdpo_and_robust_with_zero_epsilon_are_dpo(
    pair: PairLogits, beta: float
) -> None:
    """proofs/cdpo_to_dpo.md: the label-smoothed and the robust link at eps = 0
    are the log-sigmoid link."""
    dpo = oracles.dpo(*pair.oracle(), beta)
    for link in (LabelSmoothedLink, RobustLink):
        objective = CDPO.make_objective(beta=beta, epsilon=0.0, link=link)
        assert_same(objective(pair.batch()).loss, dpo, pair)


@given(pair=pair_logits(), beta=betas, eps=epsilons)
@example(pair=SATURATED, beta=1.0625, eps=0.25)
def test_cdpo_and_robust_equal_oracles(
    pair: PairLogits, beta: float, eps: float
) -> None:
    """proofs/cdpo_to_dpo.md: cDPO and robust DPO equal their oracles at any eps."""
    cdpo = CDPO.make_objective(beta=beta, epsilon=eps, link=LabelSmoothedLink)
    assert_same(cdpo(pair.batch()).loss, oracles.cdpo(*pair.oracle(), beta, eps), pair)
    robust = CDPO.make_objective(beta=beta, epsilon=eps, link=RobustLink)
    assert_same(
        robust(pair.batch()).loss, oracles.robust_dpo(*pair.oracle(), beta, eps), pair
    )


@given(pair=pair_logits(), beta=betas)
def test_ipo_summed_and_trl_equal_oracles(pair: PairLogits, beta: float) -> None:
    """proofs/ipo_trl_to_ipo_summed.md: IPO with the sum weighter is the
    eric-mitchell IPO; with the mean weighter (recipe default) TRL's IPO."""
    summed = IPO.make_objective(beta=beta, weighter=SumOverResponse())
    assert_same(
        summed(pair.batch()).loss, oracles.ipo_summed(*pair.oracle(), beta), pair
    )
    trl = IPO.make_objective(beta=beta)
    assert_same(trl(pair.batch()).loss, oracles.ipo_trl(*pair.oracle(), beta), pair)


@given(pair=pair_logits(max_response=1), beta=betas)
def test_ipo_trl_with_unit_lengths_is_ipo_summed(pair: PairLogits, beta: float) -> None:
    """proofs/ipo_trl_to_ipo_summed.md: with |y| = 1 for every response the mean
    weighter is the sum weighter."""
    trl = IPO.make_objective(beta=beta)
    summed = IPO.make_objective(beta=beta, weighter=SumOverResponse())
    assert_same(trl(pair.batch()).loss, summed(pair.batch()).loss, pair)
    assert_same(
        oracles.ipo_trl(*pair.oracle(), beta),
        oracles.ipo_summed(*pair.oracle(), beta),
        pair,
    )


@given(pair=pair_logits(), beta=betas)
def test_hinge_link_equals_slic_oracle(pair: PairLogits, beta: float) -> None:
    """proofs/hinge_link_to_slic.md: the reference prior with the hinge link is
    max(0, 1 - beta h)."""
    objective = Objective(prior=ReferencePrior(), link=HingeLink(), beta=beta)
    assert_same(objective(pair.batch()).loss, oracles.hinge(*pair.oracle(), beta), pair)


# ------------------------------------------------------------ R-DPO, H-DPO


@given(pair=pair_logits(), beta=betas, alpha_len=st.floats(-1.0, 1.0))
def test_rdpo_length_prior_equals_oracle_and_margin_form(
    pair: PairLogits, beta: float, alpha_len: float
) -> None:
    """proofs/rdpo_margin_is_length_prior.md: the length-penalised reference prior
    (rate alpha_len / beta) equals -log sigma(beta h + alpha_len (|y_w| - |y_l|))
    and DPO plus LengthDifferenceMargin(alpha_len)."""
    prior_form = RDPO.make_objective(beta=beta, alpha_len=alpha_len)
    oracle = oracles.rdpo(*pair.oracle(), beta, alpha_len)
    assert_same(prior_form(pair.batch()).loss, oracle, pair)
    margin_form = Objective(
        prior=ReferencePrior(),
        margin=LengthDifferenceMargin(alpha_len=alpha_len),
        beta=beta,
    )
    assert_same(margin_form(pair.batch()).loss, prior_form(pair.batch()).loss, pair)


@given(pair=pair_logits(), beta=betas, a=positive)
def test_hdpo_tempered_prior_equals_oracle(
    pair: PairLogits, beta: float, a: float
) -> None:
    """proofs/hdpo_to_tempered_reference_prior.md: zeta = pi_ref^(1/a) with scale
    a beta equals H-DPO's loss."""
    objective = HDPO.make_objective(beta=beta, entropy_coef=a)
    assert_same(
        objective(pair.batch()).loss, oracles.hdpo(*pair.oracle(), beta, a), pair
    )


@given(pair=pair_logits(), beta=betas)
def test_hdpo_with_unit_coefficient_is_dpo(pair: PairLogits, beta: float) -> None:
    """proofs/hdpo_to_tempered_reference_prior.md: a_H = 1 is DPO."""
    hdpo = HDPO.make_objective(beta=beta, entropy_coef=1.0)
    assert_same(
        hdpo(pair.batch()).loss, DPO.make_objective(beta=beta)(pair.batch()).loss, pair
    )


# ------------------------------------------------------------------ SimPO


@given(
    pair=pair_logits(),
    beta=betas,
    ratio=st.floats(-1.0, 1.0),
    sft_weight=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_simpo_geometric_mean_prior_equals_oracle(
    pair: PairLogits, beta: float, ratio: float, sft_weight: float
) -> None:
    """proofs/simpo_to_geometric_mean_prior.md: the differentiable geometric-mean
    prior plus ConstantMargin(beta * ratio) (plus the chosen NLL term) equals SimPO
    in value and gradient."""
    objective = SIMPO.make_objective(
        beta=beta, gamma_beta_ratio=ratio, sft_weight=sft_weight
    )
    oracle = oracles.simpo(*pair.oracle(), beta, ratio, sft_weight=sft_weight)
    assert_same(objective(pair.batch()).loss, oracle, pair)


@given(pair=pair_logits(), beta=betas, ratio=st.floats(-1.0, 1.0))
def test_simpo_hinge_equals_oracle(pair: PairLogits, beta: float, ratio: float) -> None:
    """proofs/simpo_to_geometric_mean_prior.md: SimPO's hinge variant."""
    objective = SIMPO.make_objective(
        beta=beta, gamma_beta_ratio=ratio, link=HingeLink()
    )
    oracle = oracles.simpo(*pair.oracle(), beta, ratio, loss_type="hinge")
    assert_same(objective(pair.batch()).loss, oracle, pair)


@given(
    pair=pair_logits(min_response=2, logit_bound=3.0),
    beta=betas,
    ratio=st.floats(-1.0, 1.0),
)
def test_simpo_detached_geometric_mean_prior_has_wrong_gradient(
    pair: PairLogits, beta: float, ratio: float
) -> None:
    """proofs/simpo_to_geometric_mean_prior.md: with differentiable=False the value
    is SimPO's but the logit gradient of each side is |y| times SimPO's (|y| >= 2
    here by construction), so the gradients clearly differ."""
    detached = Objective(
        prior=GeometricMeanPrior(differentiable=False),
        margin=ConstantMargin(gamma=beta * ratio),
        beta=beta,
    )
    live = SIMPO.make_objective(beta=beta, gamma_beta_ratio=ratio)
    oracle = oracles.simpo(*pair.oracle(), beta, ratio)
    assert_close(detached(pair.batch()).loss.detach(), oracle.detach(), **TOL)
    wrong, right = logit_grads(detached, pair), logit_grads(live, pair)
    for got, want, side in zip(wrong, right, (pair.chosen, pair.rejected), strict=True):
        assert_close(got, want * side.lengths[:, None, None], **TOL)
    # |1 - p(y_t)| >= 1 - e^3/(e^3 + e^-3) > 2e-3, times beta (1 - 1/|y|) >= beta/2
    assert_clearly_differ(wrong, right, threshold=1e-4 * beta)


@given(pair=pair_logits(), beta=betas)
def test_simpo_with_zero_margin_is_mean_weighted_uniform_prior(
    pair: PairLogits, beta: float
) -> None:
    """proofs/simpo_to_mean_weighted_reference_free.md: gamma = 0 leaves
    reference-free DPO with the 1/|y| token weighter."""
    simpo = SIMPO.make_objective(beta=beta, gamma_beta_ratio=0.0)
    mean_free = Objective(prior=UniformPrior(), weighter=MeanOverResponse(), beta=beta)
    assert_same(simpo(pair.batch()).loss, mean_free(pair.batch()).loss, pair)


# ------------------------------------------------------------------- TDPO


@given(pair=pair_logits(), beta=betas)
def test_tdpo1_equals_oracle(pair: PairLogits, beta: float) -> None:
    """proofs/tdpo1_to_kl_prior.md: reference prior times exp(-K^fwd(y)), both KLs
    live, equals TDPO1."""
    objective = TDPO.make_objective(beta=beta, alpha_tdpo=1.0, detach_role=None)
    assert_same(objective(pair.batch()).loss, oracles.tdpo1(*pair.oracle(), beta), pair)


@given(pair=pair_logits(logit_bound=3.0, reference_shift=2.0), beta=betas)
def test_tdpo1_with_detached_kl_has_wrong_gradient(
    pair: PairLogits, beta: float
) -> None:
    """proofs/tdpo1_to_kl_prior.md: class G. With the KLs supplied detached (a
    fixed prior) the value is TDPO1's, the gradient is DPO's, not TDPO1's."""
    objective = TDPO.make_objective(beta=beta, alpha_tdpo=1.0, detach_role=None)
    frozen = [
        {"kl_forward": s.side().kl_forward.detach()}
        for s in (pair.chosen, pair.rejected)
    ]
    batch = pair.batch(chosen=frozen[0], rejected=frozen[1])
    assert_close(
        objective(batch).loss.detach(),
        oracles.tdpo1(*pair.oracle(), beta).detach(),
        **TOL,
    )
    wrong = logit_grads(
        objective, pair, pair.batch(chosen=frozen[0], rejected=frozen[1])
    )
    right = logit_grads(objective, pair)
    # the gap is beta (pi_theta - pi_ref) at each response position, non-zero
    # because the reference moves entry 0 by 2
    assert_clearly_differ(wrong, right, threshold=1e-4 * beta)


@given(pair=pair_logits(), beta=betas, alpha=st.floats(0.0, 2.0))
def test_tdpo2_equals_oracle(pair: PairLogits, beta: float, alpha: float) -> None:
    """proofs/tdpo2_to_role_detached_kl_prior.md: KL factor with kappa = alpha and
    detach_role="chosen" equals TDPO2 with an explicit .detach() on K(y_w)."""
    objective = TDPO.make_objective(beta=beta, alpha_tdpo=alpha, detach_role="chosen")
    oracle = oracles.tdpo2(*pair.oracle(), beta, alpha)
    assert_same(objective(pair.batch()).loss, oracle, pair)


@given(
    pair=pair_logits(logit_bound=3.0, reference_shift=2.0),
    beta=betas,
    alpha=st.floats(0.5, 2.0),
)
def test_tdpo2_chosen_kl_contributes_no_gradient(
    pair: PairLogits, beta: float, alpha: float
) -> None:
    """proofs/tdpo2_to_role_detached_kl_prior.md: class S. The logit gradient at
    the chosen logits is DPO's (no chosen-KL term); with the KL live on both sides
    (TDPO1 weighted by alpha) it clearly is not."""
    tdpo2 = TDPO.make_objective(beta=beta, alpha_tdpo=alpha, detach_role="chosen")
    both_live = TDPO.make_objective(beta=beta, alpha_tdpo=alpha, detach_role=None)
    dpo = DPO.make_objective(beta=beta)
    chosen_tdpo2 = logit_grads(tdpo2, pair)[0]
    assert_close(chosen_tdpo2, logit_grads(dpo, pair)[0], **TOL)
    assert_clearly_differ(
        (chosen_tdpo2,), (logit_grads(both_live, pair)[0],), threshold=1e-4 * beta
    )


@given(pair=pair_logits(), beta=betas)
def test_tdpo2_with_zero_kl_weight_is_dpo(pair: PairLogits, beta: float) -> None:
    """proofs/tdpo2_to_dpo.md: alpha_tdpo = 0 removes the KL factor."""
    tdpo2 = TDPO.make_objective(beta=beta, alpha_tdpo=0.0, detach_role="chosen")
    assert_same(
        tdpo2(pair.batch()).loss, DPO.make_objective(beta=beta)(pair.batch()).loss, pair
    )


# ---------------------------------------------------------------- TIS-DPO


@given(pair=pair_logits(), beta=betas, alpha=st.floats(0.0, 2.0))
def test_tis_dpo_with_unit_weights_is_dpo(
    pair: PairLogits, beta: float, alpha: float
) -> None:
    """proofs/tis_dpo_to_dpo.md: w = 1 collapses the interpolation prior to pi_ref;
    with alpha_tis = 0 that is DPO, with alpha_tis > 0 DPO minus the reverse-KL
    difference (the oracle with unit weights)."""
    ones = (torch.ones_like(pair.chosen.mask, dtype=torch.float64),) * 2
    unit = pair.with_weights(token_weights=ones)
    tis = TIS_DPO.make_objective(beta=beta)
    assert_same(
        tis(unit.batch()).loss, DPO.make_objective(beta=beta)(unit.batch()).loss, unit
    )
    token_level = TIS_DPO.make_objective(beta=beta, alpha_tis=alpha)
    oracle = oracles.tis_dpo(*unit.oracle(), beta, token_level=True, alpha=alpha)
    assert_same(token_level(unit.batch()).loss, oracle, unit)


@given(
    pair=pair_logits(weight_range=(-2.0, 2.0)),
    beta=betas,
    alpha=st.floats(0.0, 2.0),
)
def test_tis_dpo_equals_oracle(pair: PairLogits, beta: float, alpha: float) -> None:
    """proofs/tis_dpo_to_interpolation_prior.md: the differentiable interpolation
    prior (times exp(+alpha K^rev_w)) equals TIS-DPO, token_level false and true."""
    plain = TIS_DPO.make_objective(beta=beta)
    assert_same(plain(pair.batch()).loss, oracles.tis_dpo(*pair.oracle(), beta), pair)
    token_level = TIS_DPO.make_objective(beta=beta, alpha_tis=alpha)
    oracle = oracles.tis_dpo(*pair.oracle(), beta, token_level=True, alpha=alpha)
    assert_same(token_level(pair.batch()).loss, oracle, pair)


@given(pair=pair_logits(logit_bound=3.0, weight_range=(-1.0, 0.5)), beta=betas)
def test_tis_dpo_detached_interpolation_prior_has_wrong_gradient(
    pair: PairLogits, beta: float
) -> None:
    """proofs/tis_dpo_to_interpolation_prior.md: class G. differentiable=False
    keeps the value and changes the logit gradient by beta (1 - w_t) d log pi(y_t)
    (w <= 0.5 here by construction)."""
    detached = Objective(
        prior=TokenInterpolationPrior(
            weights=BatchTokenWeights(), differentiable=False
        ),
        beta=beta,
    )
    live = TIS_DPO.make_objective(beta=beta)
    assert_close(
        detached(pair.batch()).loss.detach(),
        oracles.tis_dpo(*pair.oracle(), beta).detach(),
        **TOL,
    )
    assert_clearly_differ(
        logit_grads(detached, pair), logit_grads(live, pair), threshold=1e-4 * beta
    )


@given(pair=pair_logits(), beta=betas, alpha=st.floats(0.0, 2.0))
def test_tis_dpo_with_zero_weights_is_log_two(
    pair: PairLogits, beta: float, alpha: float
) -> None:
    """proofs/tis_dpo_zero_weights_to_log2.md: w = 0 makes zeta = pi_theta, z = 0,
    the loss log 2 and its gradient zero."""
    zeros = (torch.zeros_like(pair.chosen.mask, dtype=torch.float64),) * 2
    flat = pair.with_weights(token_weights=zeros)
    loss = TIS_DPO.make_objective(beta=beta, alpha_tis=alpha)(flat.batch()).loss
    assert_close(loss.detach(), torch.tensor(oracles.LOG_2, dtype=torch.float64), **TOL)
    for grad in _grads(loss, flat):
        assert_close(grad, torch.zeros_like(grad), **TOL)


@given(
    pair=pair_logits(logit_bound=3.0, weight_range=(0.5, 2.0)),
    beta=st.floats(0.01, 0.5),
    alpha=st.floats(0.1, 2.0),
)
def test_tis_dpo_token_level_penalises_chosen_kl(
    pair: PairLogits, beta: float, alpha: float
) -> None:
    """proofs/tis_dpo_token_level_sign.md: dL/dK^rev_t(y_w) = sigma(-z) beta alpha
    w_t / B > 0 (the code's sign), and raising every chosen reverse KL by 1 raises
    the loss."""
    objective = TIS_DPO.make_objective(beta=beta, alpha_tis=alpha)
    kl = pair.chosen.side().kl_reverse.detach().requires_grad_(True)
    out = objective(pair.batch(chosen={"kl_reverse": kl}))
    (grad,) = torch.autograd.grad(out.loss, kl)
    weights = pair.chosen.token_weights * pair.chosen.mask
    sigma = torch.sigmoid(-out.logits.detach())[:, None]
    assert_close(grad, sigma * beta * alpha * weights / pair.size, **TOL)
    bumped = objective(pair.batch(chosen={"kl_reverse": kl.detach() + 1.0})).loss
    assert float(bumped.detach()) > float(out.loss.detach())


@given(pair=pair_logits(weight_range=(-2.0, 2.0)), beta=betas)
def test_interpolation_prior_equals_weighted_reference_prior(
    pair: PairLogits, beta: float
) -> None:
    """proofs/interpolation_prior_to_weighted_reference.md: the interpolation prior
    with the sum weighter equals the reference prior with the same weights as
    token weighter."""
    prior_form = Objective(
        prior=TokenInterpolationPrior(weights=BatchTokenWeights()), beta=beta
    )
    weighter_form = Objective(
        prior=ReferencePrior(), weighter=BatchTokenWeights(), beta=beta
    )
    assert_same(prior_form(pair.batch()).loss, weighter_form(pair.batch()).loss, pair)


# --------------------------------------------------------------- SparsePO


@given(pair=pair_logits(), beta=betas)
def test_sparsepo_with_unit_masks_is_tdpo1(pair: PairLogits, beta: float) -> None:
    """proofs/sparsepo_to_tdpo1.md: m_u = m_d = 1 gives TDPO1."""
    ones = (torch.ones_like(pair.chosen.mask, dtype=torch.float64),) * 2
    unit = pair.with_weights(token_weights=ones, kl_weights=ones)
    sparsepo = SPARSEPO.make_objective(beta=beta)
    tdpo1 = TDPO.make_objective(beta=beta, alpha_tdpo=1.0, detach_role=None)
    assert_same(sparsepo(unit.batch()).loss, tdpo1(unit.batch()).loss, unit)


@given(
    pair=pair_logits(weight_range=(0.0, 2.0)),
    beta=betas,
    l1_u=st.floats(0.0, 0.1),
    l1_d=st.floats(0.0, 0.1),
)
def test_sparsepo_equals_oracle(
    pair: PairLogits, beta: float, l1_u: float, l1_d: float
) -> None:
    """proofs/sparsepo_to_masked_prior.md: the masked interpolation prior times the
    masked forward-KL factor plus the L1 terms equals SparsePO's u/d loss, with
    independent masks and with one common mask (coefficients halved)."""
    independent = SPARSEPO.make_objective(beta=beta, l1_reward=l1_u, l1_kl=l1_d)
    oracle = oracles.sparsepo(*pair.oracle(), beta, l1_u=l1_u, l1_d=l1_d)
    assert_same(independent(pair.batch()).loss, oracle, pair)
    common = SPARSEPO.make_objective(
        beta=beta, l1_reward=l1_u / 2, l1_kl=l1_d / 2, kl_mask="token_weights"
    )
    oracle = oracles.sparsepo(
        *pair.oracle(), beta, l1_u=l1_u, l1_d=l1_d, common_mask=True
    )
    assert_same(common(pair.batch()).loss, oracle, pair)
