r"""Priors against hand-worked :class:`PriorTerms`
(``docs/objective.md#the-general-token-factorised-prior``).

Every test uses the same two pairs (``seq`` = 3; ``M`` the response mask):

=========  ======================  ======================  =============
side        policy log-probs        reference log-probs     M
=========  ======================  ======================  =============
chosen 0    [-1.0, -2.0, -3.0]      [-1.5, -1.0, -4.0]      [0, 1, 1]
chosen 1    [-0.5, -1.5, -2.5]      [-1.0, -1.0, -1.0]      [1, 1, 1]
rejected 0  [-2.0, -2.0, -2.0]      [-2.0, -1.0, -3.0]      [0, 0, 1]
rejected 1  [-1.0, -3.0, -1.0]      [-0.5, -2.0, -1.0]      [1, 1, 0]
=========  ======================  ======================  =============

so $|y|$ is (2, 3) for the chosen and (1, 2) for the rejected responses. A
prior returns $l_t$ at every position (the objective applies the mask) and the
offset $o(y)$ per row.
"""

import torch
from builders import pair, side
from torch.testing import assert_close

from mipo import Need, PairBatch
from mipo.primitives import (
    BatchPrior,
    BatchTokenWeights,
    GeometricMeanPrior,
    LengthPenalty,
    PriorTerms,
    ProductPrior,
    ReferencePrior,
    SequentialKLPenalty,
    TemperedReferencePrior,
    TokenInterpolationPrior,
    UniformPrior,
)

F64 = torch.float64
CHOSEN = {
    "policy": [[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]],
    "reference_logps": [[-1.5, -1.0, -4.0], [-1.0, -1.0, -1.0]],
    "mask": [[False, True, True], [True, True, True]],
}
REJECTED = {
    "policy": [[-2.0, -2.0, -2.0], [-1.0, -3.0, -1.0]],
    "reference_logps": [[-2.0, -1.0, -3.0], [-0.5, -2.0, -1.0]],
    "mask": [[False, False, True], [True, True, False]],
}


def _batch(
    chosen: dict | None = None, rejected: dict | None = None, grad: bool = False
) -> PairBatch:
    def build(base: dict, extra: dict | None) -> object:
        fields = {**base, **(extra or {})}
        built = side(fields.pop("policy"), fields.pop("mask"), **fields)
        if grad:
            live = {
                name: getattr(built, name).clone().requires_grad_(True)
                for name in ("policy_logps", "kl_forward")
                if getattr(built, name) is not None
            }
            built = built.replace(**live)
        return built

    return pair(build(CHOSEN, chosen), build(REJECTED, rejected))


def _t(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def _check(terms: PriorTerms, log_ratio: list, offset: list) -> None:
    assert_close(terms.token_log_ratio, _t(log_ratio))
    assert_close(terms.offset, _t(offset))


def test_reference_prior_is_the_log_ratio_to_the_reference() -> None:
    r"""$l_t = \log\pi_\theta - \log\pi_{ref}$, no offset.

    chosen: [-1+1.5, -2+1, -3+4] = [0.5, -1, 1]; [0.5, -0.5, -1.5].
    rejected: [0, -1, 1]; [-0.5, -1, 0].
    """
    chosen, rejected = ReferencePrior()(_batch())
    _check(chosen, [[0.5, -1.0, 1.0], [0.5, -0.5, -1.5]], [0.0, 0.0])
    _check(rejected, [[0.0, -1.0, 1.0], [-0.5, -1.0, 0.0]], [0.0, 0.0])
    assert ReferencePrior().needs == {Need.REFERENCE_LOGPS}


def test_uniform_prior_is_the_policy_log_prob() -> None:
    r"""$\zeta \equiv c$: $l_t = \log\pi_\theta$; it reads no reference."""
    chosen, rejected = UniformPrior()(_batch())
    _check(chosen, CHOSEN["policy"], [0.0, 0.0])
    _check(rejected, REJECTED["policy"], [0.0, 0.0])
    assert UniformPrior().needs == frozenset()


def test_tempered_reference_prior_divides_the_reference_by_the_temperature() -> None:
    r"""$a = 2$: $l_t = \log\pi_\theta - \log\pi_{ref}/2$.

    chosen 0: [-1+0.75, -2+0.5, -3+2] = [-0.25, -1.5, -1];
    chosen 1: [-0.5+0.5, -1.5+0.5, -2.5+0.5] = [0, -1, -2];
    rejected 0: [-2+1, -2+0.5, -2+1.5] = [-1, -1.5, -0.5];
    rejected 1: [-1+0.25, -3+1, -1+0.5] = [-0.75, -2, -0.5].
    """
    chosen, rejected = TemperedReferencePrior(temperature=2.0)(_batch())
    _check(chosen, [[-0.25, -1.5, -1.0], [0.0, -1.0, -2.0]], [0.0, 0.0])
    _check(rejected, [[-1.0, -1.5, -0.5], [-0.75, -2.0, -0.5]], [0.0, 0.0])


def test_geometric_mean_prior_divides_by_the_response_length() -> None:
    r"""$l_t = \log\pi_\theta(y_t)/|y|$ with $|y|$ = (2, 3) chosen, (1, 2) rejected.

    chosen: [-0.5, -1, -1.5]; [-1/6, -0.5, -5/6].
    rejected: [-2, -2, -2]; [-0.5, -1.5, -0.5].
    """
    chosen, rejected = GeometricMeanPrior()(_batch())
    _check(chosen, [[-0.5, -1.0, -1.5], [-1 / 6, -0.5, -2.5 / 3]], [0.0, 0.0])
    _check(rejected, [[-2.0, -2.0, -2.0], [-0.5, -1.5, -0.5]], [0.0, 0.0])


def test_geometric_mean_prior_detached_keeps_the_value_but_not_the_gradient() -> None:
    r"""Class G: $\partial/\partial\log\pi_t$ of $\sum_t M_t l_t$ is $M_t/|y|$ through
    $\zeta$ and $M_t$ with a detached $\zeta$ (|y| times SimPO's)."""
    for differentiable, expected in (
        (True, [[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]]),
        (False, [[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]),
    ):
        batch = _batch(grad=True)
        chosen, _ = GeometricMeanPrior(differentiable=differentiable)(batch)
        assert_close(
            chosen.token_log_ratio, _t([[-0.5, -1.0, -1.5], [-1 / 6, -0.5, -2.5 / 3]])
        )
        batch.chosen.masked_sum(chosen.token_log_ratio).sum().backward()
        assert_close(batch.chosen.policy_logps.grad, _t(expected))


def test_token_interpolation_prior_weights_the_log_ratio() -> None:
    r"""$l_t = v_t(\log\pi_\theta - \log\pi_{ref})$ with $v$ from ``token_weights``.

    chosen v = [[0, 0.5, 2], [1, 0, 1]] times [[0.5, -1, 1], [0.5, -0.5, -1.5]]
    = [[0, -0.5, 2], [0.5, 0, -1.5]]; rejected v = 1 gives the reference prior.
    """
    batch = _batch(
        {"token_weights": [[0.0, 0.5, 2.0], [1.0, 0.0, 1.0]]},
        {"token_weights": [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]},
    )
    prior = TokenInterpolationPrior(weights=BatchTokenWeights())
    chosen, rejected = prior(batch)
    _check(chosen, [[0.0, -0.5, 2.0], [0.5, 0.0, -1.5]], [0.0, 0.0])
    _check(rejected, [[0.0, -1.0, 1.0], [-0.5, -1.0, 0.0]], [0.0, 0.0])
    assert prior.needs == {Need.REFERENCE_LOGPS, Need.TOKEN_WEIGHTS}


def test_token_interpolation_prior_detached_has_unit_policy_gradient() -> None:
    r"""Detached: $l_t = \log\pi_\theta - sg[(1-v_t)\log\pi_\theta] - v_t\log\pi_{ref}$,
    the same value, gradient 1 instead of $v_t$."""
    weights = [[0.0, 0.5, 2.0], [1.0, 0.0, 1.0]]
    for differentiable, expected in ((True, weights), (False, [[1.0] * 3] * 2)):
        batch = _batch({"token_weights": weights}, {"token_weights": weights}, True)
        prior = TokenInterpolationPrior(
            weights=BatchTokenWeights(), differentiable=differentiable
        )
        chosen, _ = prior(batch)
        assert_close(chosen.token_log_ratio, _t([[0.0, -0.5, 2.0], [0.5, 0.0, -1.5]]))
        chosen.token_log_ratio.sum().backward()
        assert_close(batch.chosen.policy_logps.grad, _t(expected))


def test_batch_prior_reads_the_prior_log_probs() -> None:
    r"""$l_t = \log\pi_\theta - \log\zeta$ with $\log\zeta$ = [[-1]*3, [-2]*3] (chosen)
    and [[0]*3, [-1]*3] (rejected).

    chosen: [[0, -1, -2], [1.5, 0.5, -0.5]]; rejected: [[-2]*3, [0, -2, 0]].
    """
    batch = _batch(
        {"prior_logps": [[-1.0] * 3, [-2.0] * 3]},
        {"prior_logps": [[0.0] * 3, [-1.0] * 3]},
    )
    chosen, rejected = BatchPrior()(batch)
    _check(chosen, [[0.0, -1.0, -2.0], [1.5, 0.5, -0.5]], [0.0, 0.0])
    _check(rejected, [[-2.0, -2.0, -2.0], [0.0, -2.0, 0.0]], [0.0, 0.0])
    assert BatchPrior().needs == {Need.PRIOR_LOGPS}


def test_length_penalty_factor_adds_rate_times_length_to_the_offset() -> None:
    r"""$f = e^{-0.3|y|}$: $\log f$ = -0.3 (2, 3) chosen, -0.3 (1, 2) rejected; the
    product prior's offset is $-\log f$ = (0.6, 0.9) and (0.3, 0.6); the token
    part is the reference prior's."""
    batch = _batch()
    log_chosen, log_rejected = LengthPenalty(rate=0.3)(batch)
    assert_close(log_chosen, _t([-0.6, -0.9]))
    assert_close(log_rejected, _t([-0.3, -0.6]))
    prior = ProductPrior(base=ReferencePrior(), factors=(LengthPenalty(rate=0.3),))
    chosen, rejected = prior(batch)
    _check(chosen, [[0.5, -1.0, 1.0], [0.5, -0.5, -1.5]], [0.6, 0.9])
    _check(rejected, [[0.0, -1.0, 1.0], [-0.5, -1.0, 0.0]], [0.3, 0.6])


KL = (
    {"kl_forward": [[9.0, 1.0, 2.0], [1.0, 1.0, 1.0]]},
    {"kl_forward": [[9.0, 9.0, 4.0], [2.0, 3.0, 100.0]]},
)


def test_sequential_kl_penalty_adds_kappa_times_the_masked_kl_sum() -> None:
    r"""$\kappa = 0.5$: masked sums $\sum_t D_t$ are (1+2, 1+1+1) = (3, 3) chosen and
    (4, 2+3) = (4, 5) rejected (masked 9s and 100 ignored), so the offset
    $+\kappa\sum_t D_t$ is (1.5, 1.5) and (2, 2.5)."""
    batch = _batch(*KL)
    prior = ProductPrior(
        base=ReferencePrior(), factors=(SequentialKLPenalty(kappa=0.5),)
    )
    chosen, rejected = prior(batch)
    assert_close(chosen.offset, _t([1.5, 1.5]))
    assert_close(rejected.offset, _t([2.0, 2.5]))
    assert prior.needs == {Need.REFERENCE_LOGPS, Need.KL_FORWARD}


def test_sequential_kl_penalty_weights_and_reverse_direction() -> None:
    r"""Reverse KL weighted by ``kl_weights``, $\kappa = -1$ (TIS-DPO orientation).

    chosen $v$ = [[0, 1, 0.5], [0, 0, 2]]: $\sum v D$ = (1 + 1, 2) = (2, 2), offset
    $+\kappa\sum vD$ = (-2, -2). rejected $v$ = 1: (4, 5), offset (-4, -5).
    """
    batch = _batch(
        {"kl_reverse": KL[0]["kl_forward"], "kl_weights": [[0, 1, 0.5], [0, 0, 2.0]]},
        {"kl_reverse": KL[1]["kl_forward"], "kl_weights": [[1.0] * 3] * 2},
    )
    factor = SequentialKLPenalty(
        kappa=-1.0, direction="reverse", weights=BatchTokenWeights(field="kl_weights")
    )
    log_chosen, log_rejected = factor(batch)
    assert_close(log_chosen, _t([2.0, 2.0]))
    assert_close(log_rejected, _t([4.0, 5.0]))
    assert factor.needs == {Need.KL_REVERSE, Need.KL_WEIGHTS}


def test_sequential_kl_penalty_detach_role_stops_the_chosen_gradient_only() -> None:
    """TDPO2 (class S): the chosen KL is a constant, the rejected KL is live."""
    batch = _batch(*KL, grad=True)
    factor = SequentialKLPenalty(kappa=0.5, detach_role="chosen")
    log_chosen, log_rejected = factor(batch)
    assert_close(log_chosen, _t([-1.5, -1.5]))
    assert not log_chosen.requires_grad
    log_rejected.sum().backward()
    assert_close(
        batch.rejected.kl_forward.grad, _t([[0.0, 0.0, -0.5], [-0.5, -0.5, 0.0]])
    )
    assert batch.chosen.kl_forward.grad is None


def test_sequential_kl_penalty_with_zero_kappa_reads_nothing() -> None:
    """The neutral factor: no needs, zero offsets, no KL field required."""
    factor = SequentialKLPenalty(kappa=0.0)
    assert factor.needs == frozenset()
    log_chosen, log_rejected = factor(_batch())
    assert_close(log_chosen, _t([0.0, 0.0]))
    assert_close(log_rejected, _t([0.0, 0.0]))


def test_product_prior_sums_the_offsets_of_its_factors() -> None:
    """Length (0.3) and KL (0.5) factors: offsets (0.6+1.5, 0.9+1.5) = (2.1, 2.4)
    chosen and (0.3+2, 0.6+2.5) = (2.3, 3.1) rejected."""
    prior = ProductPrior(
        base=ReferencePrior(),
        factors=(LengthPenalty(rate=0.3), SequentialKLPenalty(kappa=0.5)),
    )
    chosen, rejected = prior(_batch(*KL))
    _check(chosen, [[0.5, -1.0, 1.0], [0.5, -0.5, -1.5]], [2.1, 2.4])
    _check(rejected, [[0.0, -1.0, 1.0], [-0.5, -1.0, 0.0]], [2.3, 3.1])
