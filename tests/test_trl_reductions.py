r"""Which TRL methods are the MI objective, as Hypothesis properties (float64).

Reductions that hold (values and gradients against an oracle written from the
paper, and against MI-DPO with the witness prior):

- length-normalised DPO (``ln_dpo``, TRL ``sigmoid_norm``):
  ``proofs/ln_dpo_to_length_normalised_prior.md``;
- f-DPO with the log-sigmoid link: ``proofs/f_dpo_to_policy_dependent_prior.md``;
- LD-DPO: ``proofs/ld_dpo_to_interpolation_prior.md``.

Methods that are not the MI objective each break one property that every MI-DPO
loss has (``proofs/trl_losses_outside_mi.md``): identical-response pairs cost the
constant softplus(m); swapping the roles of a pair gives e^-L + e^-L' = 1 when
there is no margin; a logit link is -log sigma of an affine function of z; the
batch loss is the mean of per-pair losses.
"""

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import final

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from builders import map_sides, random_batch
from conftest import TOLERANCES
from hypothesis import given
from oracles import OracleSide
from strategies import PairLogits, betas, pair_logits
from torch import Tensor
from torch.testing import assert_close

from mipo import Need, Objective, PairBatch, Side
from mipo.primitives import (
    AbstractFDivergence,
    AbstractLink,
    AbstractSequencePrior,
    AlphaDivergence,
    APODownLink,
    DiscoPOPLink,
    ExoLink,
    ForwardKL,
    HingeLink,
    IPOLink,
    JensenShannon,
    LabelSmoothedLink,
    LengthDesensitisedWeights,
    LogSigmoidLink,
    MeanOverResponse,
    OddsRatioLink,
    PriorTerms,
    ReverseKL,
    RobustLink,
    TokenInterpolationPrior,
    UniformPrior,
)
from mipo.training.recipes import load_recipe

TOL = TOLERANCES[torch.float64]
DIVERGENCES = st.sampled_from(
    [ForwardKL(), JensenShannon(), AlphaDivergence(alpha=0.3), AlphaDivergence()]
)


def _grads(value: Tensor, pair: PairLogits) -> tuple[Tensor, ...]:
    return torch.autograd.grad(
        value, pair.leaves, retain_graph=True, materialize_grads=True
    )


def assert_same(actual: Tensor, expected: Tensor, pair: PairLogits) -> None:
    """Equal values and equal gradients w.r.t. both roles' policy logits."""

    def flat(loss: Tensor) -> Tensor:
        parts = [loss.detach().reshape(1), *(g.flatten() for g in _grads(loss, pair))]
        return torch.cat(parts)

    assert_close(flat(actual), flat(expected), **TOL)


def _neg_log_sigmoid(z: Tensor) -> Tensor:
    return torch.logaddexp(torch.zeros_like(z), -z)


def _log_ratio(side: OracleSide) -> Tensor:
    assert side.ref_logps is not None
    return ((side.logps - side.ref_logps) * side.mask.double()).sum(-1)


# ------------------------------------------------- length-normalised DPO (G)


def ln_dpo_oracle(chosen: OracleSide, rejected: OracleSide, beta: float) -> Tensor:
    """-log sigma(beta [s_w / n_w - s_l / n_l]) (Tulu 3; TRL sigmoid_norm)."""
    n_w, n_l = chosen.mask.double().sum(-1), rejected.mask.double().sum(-1)
    h_bar = _log_ratio(chosen) / n_w - _log_ratio(rejected) / n_l
    return _neg_log_sigmoid(beta * h_bar).mean()


@given(pair=pair_logits(), beta=betas)
def test_ln_dpo_is_the_mean_interpolation_prior(pair: PairLogits, beta: float) -> None:
    """proofs/ln_dpo_to_length_normalised_prior.md: the ln_dpo recipe, MI-DPO with
    the token-interpolation prior at v_t = 1/|y|, and the oracle agree in value
    and gradient."""
    recipe = load_recipe("ln_dpo").make_objective(beta=beta)
    prior = TokenInterpolationPrior(weights=MeanOverResponse())
    mi_dpo = Objective(prior=prior, beta=beta)
    oracle = ln_dpo_oracle(*pair.oracle(), beta)
    assert_same(recipe(pair.batch()).loss, oracle, pair)
    assert_same(mi_dpo(pair.batch()).loss, oracle, pair)


# ------------------------------------------------------------- f-DPO (G)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class FScorePrior(AbstractSequencePrior):
    r"""The witness prior $\log\zeta(y) = S_\pi(y) - g(S_\pi(y) - S_{ref}(y))$:
    $l_t = 0$ and offset $g(\cdot)$, so $r(y) = g(\log u)$. ``differentiable=False``
    detaches $\zeta$: $r = S_\pi - \mathrm{sg}[S_\pi - g]$."""

    divergence: AbstractFDivergence
    differentiable: bool = True

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.REFERENCE_LOGPS})

    def terms(self, side: Side) -> PriorTerms:
        assert side.reference_logps is not None
        sequence = side.masked_sum(side.policy_logps)
        score = self.divergence.score(sequence - side.masked_sum(side.reference_logps))
        if self.differentiable:
            return PriorTerms(
                token_log_ratio=torch.zeros_like(side.policy_logps), offset=score
            )
        log_zeta = (sequence - score).detach()
        return PriorTerms(token_log_ratio=side.policy_logps, offset=-log_zeta)


def f_dpo_oracle(
    chosen: OracleSide, rejected: OracleSide, beta: float, divergence: object
) -> Tensor:
    """-log sigma(beta [f'(u_w) - f'(u_l)]), f' from the f-DPO paper's table."""

    def f_prime(x: Tensor) -> Tensor:
        if isinstance(divergence, ForwardKL):
            return -torch.exp(-x)  # f(u) = -log u: f'(u) = -1/u
        if isinstance(divergence, JensenShannon):
            return np.log(2.0) + x - torch.logaddexp(torch.zeros_like(x), x)
        assert isinstance(divergence, AlphaDivergence)
        return (1.0 - torch.exp(x) ** (-divergence.alpha)) / divergence.alpha

    z = beta * (f_prime(_log_ratio(chosen)) - f_prime(_log_ratio(rejected)))
    return _neg_log_sigmoid(z).mean()


@given(pair=pair_logits(logit_bound=3.0), beta=betas, divergence=DIVERGENCES)
def test_f_dpo_is_mi_dpo_with_a_policy_dependent_prior(
    pair: PairLogits, beta: float, divergence: AbstractFDivergence
) -> None:
    """proofs/f_dpo_to_policy_dependent_prior.md: the f_dpo recipe equals the
    oracle and MI-DPO with the witness prior S_pi - g(S_pi - S_ref), in value and
    gradient (logits bounded by 3 keep e^{-alpha x} below TRL's cap)."""
    recipe = load_recipe("f_dpo").make_objective(beta=beta, divergence=divergence)
    mi_dpo = Objective(prior=FScorePrior(divergence=divergence), beta=beta)
    oracle = f_dpo_oracle(*pair.oracle(), beta, divergence)
    assert_same(recipe(pair.batch()).loss, oracle, pair)
    assert_same(mi_dpo(pair.batch()).loss, oracle, pair)


@given(pair=pair_logits(), beta=betas)
def test_f_dpo_with_reverse_kl_is_dpo(pair: PairLogits, beta: float) -> None:
    """proofs/f_dpo_to_policy_dependent_prior.md: g(x) = x, the reference prior."""
    f_dpo = load_recipe("f_dpo").make_objective(beta=beta, divergence=ReverseKL())
    dpo = load_recipe("dpo").make_objective(beta=beta)
    assert_same(f_dpo(pair.batch()).loss, dpo(pair.batch()).loss, pair)


@given(pair=pair_logits(min_response=2, logit_bound=3.0), beta=betas)
def test_f_dpo_detached_witness_prior_has_wrong_gradient(
    pair: PairLogits, beta: float
) -> None:
    """proofs/f_dpo_to_policy_dependent_prior.md: class G. Detaching zeta keeps the
    value but the logit's gradient becomes beta grad S_pi instead of
    beta g'(x) grad S_pi, with g'(x) = sigma(-x) < 1 for Jensen-Shannon."""
    divergence = JensenShannon()
    live = Objective(prior=FScorePrior(divergence=divergence), beta=beta)
    detached = Objective(
        prior=FScorePrior(divergence=divergence, differentiable=False), beta=beta
    )
    out_live, out_detached = live(pair.batch()), detached(pair.batch())
    assert_close(out_live.loss, out_detached.loss, **TOL)
    gap = max(
        float((a - b).abs().max())
        for a, b in zip(
            _grads(out_live.logits.sum(), pair),
            _grads(out_detached.logits.sum(), pair),
            strict=True,
        )
    )
    assert gap > 1e-6


# ------------------------------------------------------------- LD-DPO (G)


def ld_dpo_oracle(
    chosen: OracleSide, rejected: OracleSide, beta: float, alpha: float
) -> Tensor:
    """LD-DPO: log pi(y<=l_p) + alpha log pi(y>l_p) for policy and reference,
    l_p the shorter response length, walked token by token."""
    losses = []
    for row in range(chosen.mask.shape[0]):
        shared = int(min(chosen.mask[row].sum(), rejected.mask[row].sum()))
        rewards = []
        for side in (chosen, rejected):
            assert side.ref_logps is not None
            total, seen = torch.zeros((), dtype=torch.float64), 0
            for t in range(side.mask.shape[1]):
                if bool(side.mask[row, t]):
                    seen += 1
                    weight = 1.0 if seen <= shared else alpha
                    total = total + weight * (
                        side.logps[row, t] - side.ref_logps[row, t]
                    )
            rewards.append(total)
        losses.append(_neg_log_sigmoid(beta * (rewards[0] - rewards[1])))
    return torch.stack(losses).mean()


@given(pair=pair_logits(), beta=betas, alpha=st.floats(0.0, 1.0))
def test_ld_dpo_is_the_tail_interpolation_prior(
    pair: PairLogits, beta: float, alpha: float
) -> None:
    """proofs/ld_dpo_to_interpolation_prior.md: the ld_dpo recipe, MI-DPO with the
    token-interpolation prior at the LD weights, and the oracle agree."""
    recipe = load_recipe("ld_dpo").make_objective(beta=beta, alpha=alpha)
    prior = TokenInterpolationPrior(weights=LengthDesensitisedWeights(alpha=alpha))
    oracle = ld_dpo_oracle(*pair.oracle(), beta, alpha)
    assert_same(recipe(pair.batch()).loss, oracle, pair)
    assert_same(Objective(prior=prior, beta=beta)(pair.batch()).loss, oracle, pair)


@given(pair=pair_logits(), beta=betas)
def test_ld_dpo_with_unit_alpha_is_dpo(pair: PairLogits, beta: float) -> None:
    """proofs/ld_dpo_to_interpolation_prior.md: alpha = 1 weighs every token 1."""
    ld_dpo = load_recipe("ld_dpo").make_objective(beta=beta, alpha=1.0)
    dpo = load_recipe("dpo").make_objective(beta=beta)
    assert_same(ld_dpo(pair.batch()).loss, dpo(pair.batch()).loss, pair)


# ----------------------------------------- what every MI-DPO loss satisfies


def identical_pair_violation(objective: Objective, batch: PairBatch) -> float:
    """Pairs whose two responses are the same: MI-DPO gives every one the same
    loss softplus(m) and no gradient. The largest spread or gradient."""
    leaf = batch.chosen.policy_logps.detach().requires_grad_(True)
    side = batch.chosen.replace(policy_logps=leaf)
    out = objective(PairBatch(chosen=side, rejected=side))
    (grad,) = torch.autograd.grad(out.loss, leaf, allow_unused=True)
    per_pair = out.per_pair.detach()
    spread = float(per_pair.max() - per_pair.min())
    return max(spread, 0.0 if grad is None else float(grad.abs().max()))


def swap_violation(objective: Objective, batch: PairBatch) -> float:
    """|e^-L(w, l) + e^-L(l, w) - 1|: 0 for MI-DPO without a margin."""
    forward = objective(batch).per_pair.detach()
    backward = objective(batch.swapped()).per_pair.detach()
    return float((torch.exp(-forward) + torch.exp(-backward) - 1.0).abs().max())


def _row(batch: PairBatch, index: int) -> PairBatch:
    def cut(side: Side) -> Side:
        changes = {
            f.name: getattr(side, f.name)[index : index + 1]
            for f in dataclasses.fields(side)
            if getattr(side, f.name) is not None
        }
        return dataclasses.replace(side, **changes)

    return PairBatch(chosen=cut(batch.chosen), rejected=cut(batch.rejected))


def additivity_violation(objective: Objective, batch: PairBatch) -> float:
    """|L(batch) - mean_i L(pair i alone)|: 0 for a mean of per-pair losses."""
    alone = [objective(_row(batch, i)).loss.detach() for i in range(batch.size)]
    whole = objective(batch).loss.detach()
    return float((whole - torch.stack(alone).mean()).abs())


def link_shape_violation(link: AbstractLink) -> float:
    """A logit link of MI-DPO is -log sigma(c z - m): log(e^l - 1) is affine in z
    and l > 0. The largest second difference of log(e^l - 1) on a grid (inf
    where l <= 0)."""
    z = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)
    loss = link(z, beta=0.5)
    if bool((loss <= 0).any()):
        return float("inf")
    kappa = torch.log(torch.expm1(loss))
    return float((kappa[2:] - 2 * kappa[1:-1] + kappa[:-2]).abs().max())


MI_FORMS: dict[str, Callable[[float], Objective]] = {
    "dpo": lambda beta: load_recipe("dpo").make_objective(beta=beta),
    "ln_dpo": lambda beta: load_recipe("ln_dpo").make_objective(beta=beta),
    "f_dpo": lambda beta: load_recipe("f_dpo").make_objective(beta=beta),
    "ld_dpo": lambda beta: load_recipe("ld_dpo").make_objective(beta=beta),
    "cpo_without_nll": lambda beta: load_recipe("cpo").make_objective(
        beta=beta, cpo_alpha=0.0
    ),
    "orpo_odds_ratio_at_unit_lambda": lambda _: Objective(
        prior=UniformPrior(),
        weighter=MeanOverResponse(),
        link=OddsRatioLink(),
        beta=1.0,
    ),
}


@given(
    pair=pair_logits(logit_bound=3.0),
    beta=betas,
    name=st.sampled_from(sorted(MI_FORMS)),
)
def test_mi_forms_keep_the_invariants(pair: PairLogits, beta: float, name: str) -> None:
    """proofs/trl_losses_outside_mi.md: the positive control. DPO, ln_dpo, f-DPO,
    LD-DPO, CPO's preference part and ORPO's odds ratio at lambda = 1 give
    identical pairs log 2 and no gradient, are swap-complementary and additive."""
    objective = MI_FORMS[name](beta)
    batch = pair.batch()
    assert identical_pair_violation(objective, batch) < 1e-9
    assert swap_violation(objective, batch) < 1e-9
    assert additivity_violation(objective, batch) < 1e-9
    side = batch.chosen
    same = objective(PairBatch(chosen=side, rejected=side)).per_pair.detach()
    assert_close(same, torch.full_like(same, np.log(2.0)), **TOL)


@given(gamma=st.floats(-2.0, 2.0))
def test_a_margin_keeps_the_identical_pair_invariant(gamma: float) -> None:
    """proofs/trl_losses_outside_mi.md: with a constant margin (SimPO) identical
    pairs cost softplus(gamma) and carry no gradient."""
    objective = load_recipe("simpo").make_objective(gamma_beta_ratio=gamma / 2.0)
    batch = random_batch(objective.needs, seed=3, batch=4)
    assert identical_pair_violation(objective, batch) < 1e-9
    side = batch.chosen
    same = objective(PairBatch(chosen=side, rejected=side)).per_pair.detach()
    expected = torch.nn.functional.softplus(torch.tensor(gamma, dtype=torch.float64))
    assert_close(same, expected.expand_as(same), **TOL)


def test_mi_links_have_the_log_sigmoid_shape() -> None:
    """proofs/trl_losses_outside_mi.md: -log sigma and cDPO at eps = 0 pass the
    link-shape check."""
    assert link_shape_violation(LogSigmoidLink()) < 1e-9
    assert link_shape_violation(LabelSmoothedLink(epsilon=0.0)) < 1e-9


OUTSIDE_LINKS = {
    "hinge": HingeLink(),
    "ipo": IPOLink(),
    "exo_pair": ExoLink(epsilon=1e-3),
    "robust": RobustLink(epsilon=0.1),
    "cdpo": LabelSmoothedLink(epsilon=0.1),
    "discopop": DiscoPOPLink(),
}


@pytest.mark.parametrize("name", sorted(OUTSIDE_LINKS))
def test_trl_links_outside_mi_are_not_log_sigmoid(name: str) -> None:
    """proofs/trl_losses_outside_mi.md: hinge, IPO and EXO reach 0, robust goes
    below 0, cDPO (eps > 0) and DiscoPOP are -log sigma of no affine logit."""
    assert link_shape_violation(OUTSIDE_LINKS[name]) > 1e-3


def random_moderate_batch(objective: Objective) -> PairBatch:
    """A random float64 batch with log-probs in [-2, 0], away from saturation."""
    batch = random_batch(objective.needs, seed=5, batch=4)
    return map_sides(batch, lambda side: side.replace(**_scaled(side, 0.1)))


def _scaled(side: Side, factor: float) -> dict[str, Tensor]:
    return {
        name: getattr(side, name) * factor
        for name in ("policy_logps", "reference_logps")
        if getattr(side, name) is not None
    }


def crossed_margins_batch(objective: Objective) -> PairBatch:
    """Two one-token pairs whose policy and reference margins are sorted in
    opposite orders (policy margins 1, -1; reference margins -1, 1)."""
    del objective

    def side(policy: list[float], reference: list[float]) -> Side:
        mask = torch.ones(2, 1, dtype=torch.bool)
        as_column = lambda v: torch.tensor(v, dtype=torch.float64)[:, None]  # noqa: E731
        return Side(
            policy_logps=as_column(policy),
            response_mask=mask,
            reference_logps=as_column(reference),
        )

    return PairBatch(
        chosen=side([-1.0, -2.0], [-2.0, -1.0]),
        rejected=side([-2.0, -1.0], [-1.0, -2.0]),
    )


# (recipe, make_objective kwargs, the broken invariant, the batch it is shown on)
OUTSIDE_RECIPES = [
    ("nca", {}, identical_pair_violation, random_moderate_batch),
    ("bco", {}, identical_pair_violation, random_moderate_batch),
    ("sppo", {}, identical_pair_violation, random_moderate_batch),
    ("apo", {"link": APODownLink()}, identical_pair_violation, random_moderate_batch),
    ("apo", {}, swap_violation, random_moderate_batch),
    ("wpo", {"max_weight": None}, identical_pair_violation, random_moderate_batch),
    ("orpo", {}, identical_pair_violation, random_moderate_batch),
    ("orpo", {"beta": 0.5}, swap_violation, random_moderate_batch),
    ("cpo", {}, identical_pair_violation, random_moderate_batch),
    ("rpo", {}, identical_pair_violation, random_moderate_batch),
    ("mpo", {}, identical_pair_violation, random_moderate_batch),
    ("aot", {"beta": 1.0}, additivity_violation, crossed_margins_batch),
    (
        "aot",
        {"beta": 1.0, "paired": False},
        additivity_violation,
        crossed_margins_batch,
    ),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "invariant", "make_batch"),
    [
        pytest.param(*case, id=f"{case[0]}-{case[2].__name__}-{index}")
        for index, case in enumerate(OUTSIDE_RECIPES)
    ],
)
def test_trl_methods_outside_mi_break_an_invariant(
    name: str,
    kwargs: dict,
    invariant: Callable[[Objective, PairBatch], float],
    make_batch: Callable[[Objective], PairBatch],
) -> None:
    """proofs/trl_losses_outside_mi.md: each method breaks the named property, so
    no role-free prior (with or without a constant margin, for the identical-pair
    and additivity properties) gives it."""
    objective = load_recipe(name).make_objective(**kwargs)
    assert invariant(objective, make_batch(objective)) > 1e-3
