"""TI-DPO: the attribution-plus-prior token weights and the composed objective.

Oracles are written here from the released code (docs/recipe_notes/ti_dpo.md),
per row in float64 Python/NumPy, never by calling mipo.
"""

import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from builders import F64, pair_batches, random_batch, side
from hypothesis import example, given
from jaxtyping import TypeCheckError
from torch.testing import assert_close

from mipo import BatchError, CompositionError, Need, PairBatch, Side
from mipo.primitives import GradientAttributionWeights
from mipo.training.recipes import load_recipe

TI_DPO = load_recipe("ti_dpo")
BATCH_NEEDS = (
    Need.REFERENCE_LOGPS,
    Need.KL_FORWARD,
    Need.ATTRIBUTION_SCORES,
    Need.SEQUENCE_MASK,
)


# ------------------------------------------------------------------ oracles


def weights_oracle(
    scores: list[float], span: list[bool], lam: float, sigma_div: float
) -> list[float]:
    """The released weight routine for one unshifted row, in float64 Python: over
    the n positions of ``span``, w = n (lam s + (1 - lam) p) / sum(...), s the
    positive scores normalised (the prior alone when none is positive), p the
    normalised Gaussian with centre (n - 1)/2 and sigma max(1, n / max(1, d));
    a span of at most one token gets 0."""
    positions = [t for t, inside in enumerate(span) if inside]
    n = len(positions)
    out = [0.0] * len(span)
    if n <= 1:
        return out
    centre = (n - 1) / 2
    sigma = max(1.0, n / max(1.0, sigma_div))
    prior = [math.exp(-0.5 * ((k - centre) / sigma) ** 2) for k in range(n)]
    prior = [p / sum(prior) for p in prior]
    positive = [max(scores[t], 0.0) for t in positions]
    total = sum(positive)
    share = [s / total for s in positive] if total > 0 else prior
    mixed = [lam * s + (1 - lam) * p for s, p in zip(share, prior, strict=True)]
    for k, t in enumerate(positions):
        out[t] = n * mixed[k] / sum(mixed)
    return out


def batch_weights_oracle(
    side_: Side, lam: float, sigma_div: float, span: str
) -> torch.Tensor:
    """Per row. ``"sequence"``: rebuild the unshifted row (first token in front of
    the shifted axis), weigh it as the released code does, drop column 0."""
    assert side_.attribution_scores is not None
    rows = []
    for row, scores in enumerate(side_.attribution_scores.tolist()):
        if span == "response":
            rows.append(
                weights_oracle(
                    scores, side_.response_mask[row].tolist(), lam, sigma_div
                )
            )
            continue
        assert side_.sequence_mask is not None
        assert side_.first_token_attribution is not None
        unshifted = [float(side_.first_token_attribution[row])] + scores
        valid = [True] + side_.sequence_mask[row].tolist()
        rows.append(weights_oracle(unshifted, valid, lam, sigma_div)[1:])
    return torch.tensor(rows, dtype=F64)


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def weighted_tdpo2_oracle(
    batch: PairBatch,
    weights: tuple[torch.Tensor, torch.Tensor],
    beta: float,
    alpha: float,
) -> float:
    """mean softplus(-beta z), z = (m_w - m_l) - alpha (K_l - K_w) (values only),
    m = sum_t w_t (lp_pol - lp_ref), K = sum_t KL_t (unweighted)."""
    losses = []
    for row in range(batch.size):
        parts = []
        for side_, w in ((batch.chosen, weights[0]), (batch.rejected, weights[1])):
            mask = side_.response_mask[row].tolist()
            pol = side_.policy_logps[row].tolist()
            assert side_.reference_logps is not None
            ref = side_.reference_logps[row].tolist()
            kl = (
                side_.kl_forward[row].tolist()
                if side_.kl_forward is not None
                else [0.0] * len(mask)
            )
            wt = w[row].tolist()
            m = sum(wt[t] * (pol[t] - ref[t]) for t in range(len(mask)) if mask[t])
            k = sum(kl[t] for t in range(len(mask)) if mask[t])
            parts.append((m, k))
        (m_w, k_w), (m_l, k_l) = parts
        z = (m_w - m_l) - alpha * (k_l - k_w)
        losses.append(_softplus(-beta * z))
    return sum(losses) / len(losses)


# ------------------------------------------------------------------ weights


def test_hand_worked_weights_mix_scores_and_prior() -> None:
    """n = 3, d = 4: sigma = max(1, 3/4) = 1, centre 1, so
    p = (e^-1/2, 1, e^-1/2) / (1 + 2 e^-1/2) = (0.274068, 0.451863, 0.274068);
    scores (1, -2, 3) -> s = (1/4, 0, 3/4); lam = 1/2:
    w = 3 * (s + p) / 2 = (0.786103, 0.677795, 1.536103). The prompt position is 0."""
    batch_side = side(
        [[0.0, -1.0, -1.0, -1.0]],
        [[False, True, True, True]],
        attribution_scores=[[9.0, 1.0, -2.0, 3.0]],
    )
    weights = GradientAttributionWeights(lam=0.5).weigh(batch_side)
    e = math.exp(-0.5)
    prior = [e / (1 + 2 * e), 1 / (1 + 2 * e), e / (1 + 2 * e)]
    share = [0.25, 0.0, 0.75]
    expected = [0.0] + [1.5 * (s + p) for s, p in zip(share, prior, strict=True)]
    assert_close(weights, torch.tensor([expected], dtype=F64))
    assert_close(
        weights[0, 1:],
        torch.tensor([0.786103, 0.677795, 1.536103], dtype=F64),
        rtol=0,
        atol=1e-6,
    )


@given(
    batch=pair_batches(BATCH_NEEDS),
    lam=st.floats(0.0, 1.0),
    sigma_div=st.floats(1.0, 16.0),
    span=st.sampled_from(["response", "sequence"]),
)
def test_weights_match_a_float64_oracle(
    batch: PairBatch, lam: float, sigma_div: float, span: str
) -> None:
    weighter = GradientAttributionWeights(lam=lam, prior_sigma_div=sigma_div, span=span)
    chosen, rejected = weighter(batch)
    assert_close(chosen, batch_weights_oracle(batch.chosen, lam, sigma_div, span))
    assert_close(rejected, batch_weights_oracle(batch.rejected, lam, sigma_div, span))


@given(batch=pair_batches(BATCH_NEEDS), span=st.sampled_from(["response", "sequence"]))
def test_weights_have_mean_one_over_the_span_and_vanish_outside(
    batch: PairBatch, span: str
) -> None:
    """Response span: sum w = n (0 for a one-token response). Sequence span: the
    n = |sequence mask| + 1 weights sum to n, the first token's included, so the
    shifted ones sum to at most n."""
    weighter = GradientAttributionWeights(span=span)
    for role, weights in zip(("chosen", "rejected"), weighter(batch), strict=True):
        side_ = getattr(batch, role)
        mask = side_.response_mask if span == "response" else side_.sequence_mask
        assert mask is not None
        assert bool((weights >= 0).all())
        assert bool((weights[~mask] == 0).all())
        n = mask.sum(-1).to(F64)
        if span == "response":
            assert_close(weights.sum(-1), torch.where(n > 1, n, 0.0))
        else:
            assert bool((weights.sum(-1) <= n + 1 + 1e-9).all())
            assert bool((weights.sum(-1) >= 0.0).all())


@given(batch=pair_batches(BATCH_NEEDS), sigma_div=st.floats(1.0, 16.0))
def test_lambda_zero_gives_the_position_prior_scaled_to_mean_one(
    batch: PairBatch, sigma_div: float
) -> None:
    """lam = 0: w = n p whatever the scores; a one-token response gets 0."""
    chosen, _ = GradientAttributionWeights(lam=0.0, prior_sigma_div=sigma_div)(batch)
    expected = []
    for mask in batch.chosen.response_mask.tolist():
        n = sum(mask)
        sigma = max(1.0, n / sigma_div)
        prior = [math.exp(-0.5 * ((k - (n - 1) / 2) / sigma) ** 2) for k in range(n)]
        values = iter([n * p / sum(prior) if n > 1 else 0.0 for p in prior])
        expected.append([next(values) if inside else 0.0 for inside in mask])
    assert_close(chosen, torch.tensor(expected, dtype=F64))


@given(
    batch=pair_batches(BATCH_NEEDS),
    level=st.floats(0.01, 5.0),
    span=st.sampled_from(["response", "sequence"]),
)
def test_uniform_scores_with_lambda_one_give_unit_weights(
    batch: PairBatch, level: float, span: str
) -> None:
    """Equal scores everywhere (the first token's too): s = 1/n, so w = 1 on the
    span, except a one-token response span, which the released code zeroes."""
    uniform = batch.chosen.replace(
        attribution_scores=torch.full_like(batch.chosen.policy_logps, level),
        first_token_attribution=torch.full((batch.size,), level, dtype=F64),
    )
    weights = GradientAttributionWeights(lam=1.0, span=span).weigh(uniform)
    mask = uniform.response_mask if span == "response" else uniform.sequence_mask
    assert mask is not None
    expected = mask.to(F64)
    if span == "response":
        expected = expected * (mask.sum(-1, keepdim=True) > 1)
    assert_close(weights, expected)


def test_non_positive_scores_fall_back_to_the_prior_alone() -> None:
    """sum max(I, 0) = 0: s = p, so every lam gives n p (the code's rule)."""
    batch_side = side(
        [[-1.0, -1.0, -1.0, -1.0]], attribution_scores=[[-1.0, 0.0, -3.0, 0.0]]
    )
    prior_only = GradientAttributionWeights(lam=0.0).weigh(batch_side)
    for lam in (0.3, 1.0):
        assert_close(GradientAttributionWeights(lam=lam).weigh(batch_side), prior_only)


def test_sequence_span_counts_the_first_token_as_the_released_code_does() -> None:
    """Unshifted row of 4 tokens, scores (2 | 1, -2, 3), the first one in front of
    the shifted axis; n = 4, d = 4: sigma = 1, centre 3/2, so
    p = (1, e, e, 1) / (2 (1 + e)); s = (2, 1, 0, 3) / 6; lam = 1/2:
    w = 2 (s + p), and the shifted weights are
    (1/3 + e/(1+e), e/(1+e), 1 + 1/(1+e)) = (1.064392, 0.731059, 1.268941).
    Without the first token (n = 3) they would be (0.786103, 0.677795, 1.536103)."""
    batch_side = side(
        [[-1.0, -1.0, -1.0]],
        [[False, True, True]],
        attribution_scores=[[1.0, -2.0, 3.0]],
        sequence_mask=[[True, True, True]],
        first_token_attribution=[2.0],
    )
    weights = GradientAttributionWeights(lam=0.5, span="sequence").weigh(batch_side)
    e = math.e
    expected = [1 / 3 + e / (1 + e), e / (1 + e), 1 + 1 / (1 + e)]
    assert_close(weights, torch.tensor([expected], dtype=F64))
    assert_close(
        weights,
        torch.tensor([[1.064392, 0.731059, 1.268941]], dtype=F64),
        atol=1e-6,
        rtol=0,
    )


def test_a_one_token_span_gets_weight_zero() -> None:
    """The released routine zeroes a row whose span has at most one token; the
    sequence span always has two (the first token and the response)."""
    one = side(
        [[-1.0, -1.0]],
        [[False, True]],
        attribution_scores=[[4.0, 2.0]],
        sequence_mask=[[True, True]],
        first_token_attribution=[1.0],
    )
    zero = torch.zeros(1, 2, dtype=F64)
    assert_close(GradientAttributionWeights().weigh(one), zero)
    sequence = GradientAttributionWeights(lam=1.0, span="sequence").weigh(one)
    # n = 3 over scores (1 | 4, 2): w = 3 (1, 4, 2) / 7 -> shifted (12/7, 6/7)
    assert_close(sequence, torch.tensor([[12 / 7, 6 / 7]], dtype=F64))


def test_sequence_span_without_the_first_token_score_names_the_field() -> None:
    batch_side = side(
        [[-1.0, -1.0]], attribution_scores=[[1.0, 1.0]], sequence_mask=[[True, True]]
    )
    with pytest.raises(
        BatchError, match=r"^first_token_attribution: .*span='sequence'"
    ):
        GradientAttributionWeights(span="sequence").weigh(batch_side)


def test_a_per_row_field_of_the_wrong_shape_is_refused() -> None:
    """One value per row, checked by Side itself (shape and length; jaxtyping
    reports a wrong rank first under pytest)."""
    base = side([[-1.0, -1.0], [-1.0, -1.0]])
    for bad in (torch.zeros(3, dtype=F64), torch.zeros(2, dtype=torch.int64)):
        with pytest.raises((BatchError, TypeCheckError), match="first_token_attr"):
            base.replace(first_token_attribution=bad)


def test_weights_carry_no_gradient() -> None:
    batch = random_batch(BATCH_NEEDS, seed=4)
    scores = batch.chosen.attribution_scores
    assert scores is not None
    live = batch.chosen.replace(attribution_scores=scores.clone().requires_grad_(True))
    weights = GradientAttributionWeights().weigh(live)
    assert not weights.requires_grad


def test_sequence_span_without_sequence_mask_names_the_field() -> None:
    batch = random_batch((Need.ATTRIBUTION_SCORES,), seed=5)
    with pytest.raises(BatchError, match=r"^sequence_mask: .*span='sequence'"):
        GradientAttributionWeights(span="sequence")(batch)


def test_response_outside_the_sequence_mask_is_refused() -> None:
    bad = side(
        [[-1.0, -1.0]],
        [[True, True]],
        attribution_scores=[[1.0, 1.0]],
        sequence_mask=[[True, False]],
        first_token_attribution=[1.0],
    )
    with pytest.raises(BatchError, match=r"rows \[0\] have response tokens outside"):
        GradientAttributionWeights(span="sequence").weigh(bad)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lam": 1.5}, "lam"),
        ({"lam": -0.1}, "lam"),
        ({"prior_sigma_div": 0.0}, "prior_sigma_div"),
        ({"prior_sigma_div": 0.5}, "prior_sigma_div"),
        ({"prior_sigma_div": math.inf}, "prior_sigma_div"),
    ],
)
def test_bad_hyperparameters_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(CompositionError, match=f"GradientAttributionWeights.{field}"):
        GradientAttributionWeights(**kwargs)


def test_needs_follow_the_span() -> None:
    assert GradientAttributionWeights().needs == {Need.ATTRIBUTION_SCORES}
    assert GradientAttributionWeights(span="sequence").needs == {
        Need.ATTRIBUTION_SCORES,
        Need.SEQUENCE_MASK,
    }


# ------------------------------------------------------------------ objective


def test_recipe_needs_are_exactly_what_ti_dpo_reads() -> None:
    make = TI_DPO.make_objective
    assert make().needs == {
        Need.REFERENCE_LOGPS,
        Need.KL_FORWARD,
        Need.ATTRIBUTION_SCORES,
        Need.ANCHOR,
    }
    assert Need.SEQUENCE_MASK in make(span="sequence").needs
    assert Need.ANCHOR not in make(gamma=0.0).needs
    assert Need.KL_FORWARD not in make(alpha_tdpo=0.0).needs


def test_recipe_defaults_are_the_paper_values() -> None:
    """Table B13 (docs/recipe_notes/ti_dpo.md); margin: the code default (none in
    the paper)."""
    assert TI_DPO.factory_defaults() == {
        "beta": 0.1,
        "alpha_tdpo": 0.5,
        "gamma": 0.1,
        "lam": 0.7,
        "prior_sigma_div": 4.0,
        "span": "response",
        "alpha_triplet": 0.1,
        "anchor_tokens": 32,  # the CPU main job's (--preset paper: 64)
        "nll": 1.0,  # the CPU main job's (--preset paper: 0)
    }
    term, sft = TI_DPO.objective.terms
    assert (term.name, term.weight, term.term.margin) == ("triplet", 0.1, 0.1)
    assert (sft.name, sft.weight) == ("sft", 1.0)
    sampling = term.term.sampling
    assert (sampling.max_new_tokens, sampling.top_k) == (32, 50)
    assert (sampling.top_p, sampling.temperature) == (0.95, 0.8)


@given(
    batch=pair_batches(BATCH_NEEDS),
    beta=st.floats(0.01, 2.0),
    lam=st.floats(0.0, 1.0),
    span=st.sampled_from(["response", "sequence"]),
)
def test_without_kl_and_triplet_ti_dpo_is_weighted_dpo(
    batch: PairBatch, beta: float, lam: float, span: str
) -> None:
    """alpha_tdpo = 0, gamma = 0: -log sigmoid(beta [sum w l(y_w) - sum w l(y_l)])."""
    objective = TI_DPO.make_objective(
        nll=0.0, beta=beta, alpha_tdpo=0.0, gamma=0.0, lam=lam, span=span
    )
    weights = tuple(
        batch_weights_oracle(getattr(batch, role), lam, 4.0, span)
        for role in ("chosen", "rejected")
    )
    expected = weighted_tdpo2_oracle(batch, weights, beta, alpha=0.0)
    assert_close(objective(batch).loss.item(), expected, rtol=1e-9, atol=1e-10)


@given(batch=pair_batches(BATCH_NEEDS), beta=st.floats(0.01, 2.0))
def test_with_unit_weights_ti_dpo_without_kl_and_triplet_is_dpo(
    batch: PairBatch, beta: float
) -> None:
    """lam = 1 and uniform scores give w = 1: plain DPO, except that the released
    code gives a one-token response weight 0 (its log-ratio drops out)."""
    uniform = {
        role: getattr(batch, role).replace(
            attribution_scores=torch.ones_like(getattr(batch, role).policy_logps)
        )
        for role in ("chosen", "rejected")
    }
    batch = PairBatch(**uniform)
    objective = TI_DPO.make_objective(
        nll=0.0, beta=beta, alpha_tdpo=0.0, gamma=0.0, lam=1.0
    )
    masks = (batch.chosen.response_mask, batch.rejected.response_mask)
    ones = tuple(m.to(F64) * (m.sum(-1, keepdim=True) > 1) for m in masks)
    expected = weighted_tdpo2_oracle(batch, ones, beta, alpha=0.0)
    assert_close(objective(batch).loss.item(), expected, rtol=1e-9, atol=1e-10)


@given(
    batch=pair_batches(BATCH_NEEDS),
    beta=st.floats(0.01, 2.0),
    alpha=st.floats(0.0, 2.0),
)
@example(batch=random_batch(BATCH_NEEDS, seed=0), beta=0.1, alpha=0.5)
def test_without_triplet_ti_dpo_is_weighted_tdpo2(
    batch: PairBatch, beta: float, alpha: float
) -> None:
    """gamma = 0: the released base, TDPO2 with attribution weights on the
    log-ratios and an unweighted forward KL (docs/recipe_notes/ti_dpo.md)."""
    objective = TI_DPO.make_objective(nll=0.0, beta=beta, alpha_tdpo=alpha, gamma=0.0)
    weights = tuple(
        batch_weights_oracle(getattr(batch, role), 0.7, 4.0, "response")
        for role in ("chosen", "rejected")
    )
    expected = weighted_tdpo2_oracle(batch, weights, beta, alpha=alpha)
    assert_close(objective(batch).loss.item(), expected, rtol=1e-9, atol=1e-10)


def test_tdpo2_stop_gradient_is_on_the_chosen_kl_only() -> None:
    batch = random_batch(BATCH_NEEDS, seed=6, requires_grad=True)
    TI_DPO.make_objective(nll=0.0, gamma=0.0)(batch).loss.backward()
    assert batch.chosen.kl_forward is not None and batch.rejected.kl_forward is not None
    assert batch.chosen.kl_forward.grad is None
    rejected_grad = batch.rejected.kl_forward.grad
    assert rejected_grad is not None
    assert bool((rejected_grad[batch.rejected.response_mask] != 0).all())


def test_weights_receive_no_gradient_through_the_objective() -> None:
    batch = random_batch(BATCH_NEEDS, seed=7, requires_grad=True)
    live = {
        role: getattr(batch, role).replace(
            attribution_scores=getattr(batch, role)
            .attribution_scores.clone()
            .requires_grad_(True)
        )
        for role in ("chosen", "rejected")
    }
    batch = PairBatch(**live)
    TI_DPO.make_objective(nll=0.0, gamma=0.0)(batch).loss.backward()
    for role in ("chosen", "rejected"):
        assert getattr(batch, role).attribution_scores.grad is None


def test_full_ti_dpo_adds_gamma_times_the_triplet_per_pair() -> None:
    """loss = mean(base + gamma T): compare with gamma = 0 plus the term's own mean."""
    batch = random_batch(frozenset(BATCH_NEEDS) | {Need.ANCHOR}, seed=8)
    full = TI_DPO.make_objective(nll=0.0, gamma=0.3)(batch)
    base = TI_DPO.make_objective(nll=0.0, gamma=0.0)(batch)
    triplet = full.metrics["terms/triplet"]
    assert_close(full.loss, base.loss + 0.3 * triplet)
    assert "terms/triplet" not in base.metrics
    assert bool(np.isfinite(full.loss.item()))
