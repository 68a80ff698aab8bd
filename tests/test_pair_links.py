"""The pair-link family and the TRL-motivated primitives, one by one.

Hand-worked values, the identities each docstring states, the neutral elements,
and the one-line errors for bad arguments or missing columns. TRL parity is in
``tests/test_trl_parity.py``; which of these are the MI objective in
``tests/test_trl_reductions.py``.
"""

import dataclasses
import math
import re

import hypothesis.strategies as st
import pytest
import torch
from builders import pair, random_batch, side
from hypothesis import given
from jaxtyping import TypeCheckError
from strategies import PairLogits, betas, pair_logits
from torch.testing import assert_close

from mipo import Need, Objective
from mipo.errors import BatchError, CompositionError
from mipo.primitives import (
    AbstractPairLink,
    AlphaDivergence,
    APODownLink,
    APOZeroLink,
    BCOPairLink,
    DiscoPOPLink,
    ExoLink,
    FDivergenceLink,
    ForwardKL,
    HingeLink,
    IPOLink,
    JensenShannon,
    LabelSmoothedLink,
    LengthDesensitisedWeights,
    LinkSum,
    LogSigmoidLink,
    NCAPairLink,
    OddsRatioLink,
    ReverseKL,
    SortedLink,
    SPPOHardLink,
    UniformPrior,
    WPOLink,
)
from mipo.primitives.odds_ratio import log_odds

F64 = torch.float64
TOL = {"rtol": 1e-12, "atol": 1e-12}


def one_token_pair(chosen: list[float], rejected: list[float]):
    """Pairs of one-token responses with log-ratios ``chosen`` / ``rejected``
    (policy log-prob -1 plus the ratio, reference -1)."""
    return pair(
        side([[-1.0 + c] for c in chosen], reference_logps=[[-1.0]] * len(chosen)),
        side([[-1.0 + r] for r in rejected], reference_logps=[[-1.0]] * len(rejected)),
    )


def per_pair(
    link: AbstractPairLink, chosen: list[float], rejected: list[float], beta=1.0
):
    return Objective(link=link, beta=beta)(one_token_pair(chosen, rejected)).per_pair


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_sided_links_hand_worked() -> None:
    """u_w = 2, u_l = -1 (beta = 1)."""
    values = {
        NCAPairLink(): softplus(-2) + 0.5 * softplus(2) + 0.5 * softplus(-1),
        BCOPairLink(): softplus(-2) + softplus(-1),
        BCOPairLink(delta=0.5): softplus(-1.5) + softplus(-1.5),
        APOZeroLink(): (1 - 1 / (1 + math.exp(-2))) + 1 / (1 + math.exp(1)),
        APODownLink(): 1 / (1 + math.exp(-2)) + (1 - 1 / (1 + math.exp(-3))),
        SPPOHardLink(): (2 - 0.5) ** 2 + (-1 + 0.5) ** 2,
    }
    for link, expected in values.items():
        got = per_pair(link, [2.0], [-1.0])
        assert_close(got, torch.tensor([expected], dtype=F64), **TOL, msg=repr(link))


def test_exo_link_is_zero_at_the_smoothed_label_and_positive_elsewhere() -> None:
    epsilon = 0.1
    at = math.log((1 - epsilon) / epsilon)  # sigma(z) = 1 - eps
    z = torch.tensor([at, 0.0, 3.0, -3.0], dtype=F64)
    values = ExoLink(epsilon=epsilon)(z, beta=1.0)
    assert abs(float(values[0])) < 1e-12
    assert bool((values[1:] > 0).all())


def test_discopop_link_is_finite_where_the_naive_blend_is_not() -> None:
    z = torch.tensor([-200.0, 0.0, 1.0], dtype=torch.float32)
    values = DiscoPOPLink()(z, beta=1.0)
    assert bool(torch.isfinite(values).all())
    blend = torch.sigmoid(z / 0.05)
    naive = (1 - blend) * -torch.nn.functional.logsigmoid(z) + blend * torch.exp(-z)
    assert not bool(torch.isfinite(naive[0]))
    assert_close(values[1:], naive[1:])


@pytest.mark.parametrize(
    ("divergence", "score"),
    [
        (ReverseKL(), lambda x: x),
        (ForwardKL(), lambda x: 1 - math.exp(-x)),
        (JensenShannon(), lambda x: math.log(2 * math.exp(x) / (1 + math.exp(x)))),
        (AlphaDivergence(alpha=0.3), lambda x: (1 - math.exp(x) ** -0.3) / 0.3),
    ],
)
def test_f_divergence_scores(divergence, score) -> None:
    """g(x) = f'(e^x) - f'(1): g(0) = 0 and the textbook f' elsewhere."""
    x = torch.tensor([0.0, -1.5, 0.7], dtype=F64)
    expected = torch.tensor([score(v) for v in x.tolist()], dtype=F64)
    assert_close(divergence.score(x), expected, **TOL)
    assert float(divergence.score(x)[0]) == 0.0


def test_alpha_divergence_exponent_is_capped() -> None:
    value = AlphaDivergence(alpha=0.5).score(torch.tensor([-1000.0]))
    assert bool(torch.isfinite(value).all())
    assert_close(value, torch.tensor([-math.expm1(80.0) / 0.5]))


@given(pair=pair_logits(), beta=betas)
def test_reverse_kl_f_link_is_its_base_link(pair: PairLogits, beta: float) -> None:
    for base in (LogSigmoidLink(), HingeLink(), IPOLink()):
        wrapped = FDivergenceLink(link=base, divergence=ReverseKL())
        a = Objective(link=wrapped, beta=beta)(pair.batch()).per_pair
        b = Objective(link=base, beta=beta)(pair.batch()).per_pair
        assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_length_normalised_f_link_divides_each_score() -> None:
    batch = pair(
        side([[0.0, -1.0, -1.0]], reference_logps=[[0.0, -2.0, -2.0]]),
        side(
            [[0.0, -1.0, 0.0]],
            [[False, True, False]],
            reference_logps=[[0.0, 0.0, 0.0]],
        ),
    )
    link = FDivergenceLink(divergence=ReverseKL(), length_normalised=True)
    z = 0.5 * (2.0 / 3 - (-1.0) / 1)
    got = Objective(link=link, beta=0.5)(batch).per_pair
    assert_close(got, torch.tensor([softplus(-z)], dtype=F64), **TOL)


def test_link_sum_adds_weighted_parts_and_its_needs() -> None:
    batch = random_batch(frozenset({Need.REFERENCE_LOGPS, Need.LOG_COLLISION}), seed=4)
    parts = (LogSigmoidLink(), NCAPairLink(), WPOLink())
    total = Objective(link=LinkSum(links=parts, weights=(0.5, -1.0, 2.0)))(batch)
    expected = sum(
        w * Objective(link=link)(batch).per_pair
        for w, link in zip((0.5, -1.0, 2.0), parts, strict=True)
    )
    assert_close(total.per_pair, expected, **TOL)
    assert LinkSum(links=parts, weights=(1.0, 1.0, 1.0)).needs == {Need.LOG_COLLISION}


@given(pair=pair_logits(), beta=betas, epsilon=st.floats(0.0, 0.4))
def test_sorted_link_on_one_pair_is_its_base_link(
    pair: PairLogits, beta: float, epsilon: float
) -> None:
    """Sorting a batch of one changes nothing: AOT on one pair is cDPO."""
    base = LabelSmoothedLink(epsilon=epsilon)
    batch = pair.batch()
    for index in range(batch.size):
        one = PairLogits(
            chosen=_row(pair.chosen, index), rejected=_row(pair.rejected, index)
        ).batch()
        for paired in (True, False):
            got = Objective(link=SortedLink(link=base, paired=paired), beta=beta)(one)
            assert_close(got.loss, Objective(link=base, beta=beta)(one).loss, **TOL)


def _row(side_logits, index):
    return dataclasses.replace(
        side_logits,
        **{
            f.name: getattr(side_logits, f.name)[index : index + 1]
            for f in dataclasses.fields(side_logits)
        },
    )


def test_sorted_link_pairs_the_sorted_values() -> None:
    """Two pairs with policy margins (1, -1) and reference margins (-1, 1)."""
    batch = pair(
        side([[-1.0], [-2.0]], reference_logps=[[-2.0], [-1.0]]),
        side([[-2.0], [-1.0]], reference_logps=[[-1.0], [-2.0]]),
    )
    paired = Objective(link=SortedLink(), beta=1.0)(batch)
    assert_close(paired.per_pair, torch.full((2,), math.log(2.0), dtype=F64), **TOL)
    plain = Objective(beta=1.0)(batch)
    assert_close(plain.per_pair, torch.tensor([softplus(-2), softplus(2)], dtype=F64))


def test_length_desensitised_weights_hand_worked() -> None:
    batch = pair(
        side([[0.0] * 5], [[False, True, True, True, True]]),
        side([[0.0] * 5], [[True, True, False, False, False]]),
    )
    chosen, rejected = LengthDesensitisedWeights(alpha=0.25)(batch)
    assert chosen.tolist()[0][1:] == [1.0, 1.0, 0.25, 0.25]
    assert rejected.tolist()[0][:2] == [1.0, 1.0]


def test_wpo_weights_hand_worked_and_capped() -> None:
    """a(y) = mean_t [log p_t - log collision_t]."""
    batch = pair(
        side([[-1.0, -2.0]], log_collision=[[-2.0, -2.0]]),
        side([[-1.0, -3.0]], [[True, False]], log_collision=[[-1.5, 0.0]]),
    )
    expected = math.exp((1.0 + 0.0) / 2 + 0.5)
    assert_close(
        WPOLink(max_weight=None).weights(batch), torch.tensor([expected], dtype=F64)
    )
    assert_close(WPOLink().weights(batch), torch.tensor([1.0], dtype=F64))
    unaligned = math.exp((-1.0 - 2.0) / 2 + (-1.0))
    assert_close(
        WPOLink(aligned=False, max_weight=None).weights(batch),
        torch.tensor([unaligned], dtype=F64),
    )


def test_wpo_weights_carry_no_gradient() -> None:
    batch = random_batch(frozenset({Need.REFERENCE_LOGPS, Need.LOG_COLLISION}), seed=2)
    assert not WPOLink().weights(batch).requires_grad
    live = random_batch(
        frozenset({Need.REFERENCE_LOGPS, Need.LOG_COLLISION}),
        seed=2,
        requires_grad=True,
    )
    assert not WPOLink(max_weight=None).weights(live).requires_grad


def test_missing_log_collision_names_the_field_and_the_link() -> None:
    objective = Objective(link=WPOLink())
    batch = random_batch(frozenset({Need.REFERENCE_LOGPS}), seed=1)
    with pytest.raises(BatchError, match=r"chosen\.log_collision: .*link=WPOLink"):
        objective(batch)
    assert Need.LOG_COLLISION not in Objective(link=WPOLink(aligned=False)).needs


def test_odds_ratio_link_hand_worked_and_log_odds_accurate() -> None:
    p_w, p_l = -0.2, -1.5
    expected = 0.3 * softplus(
        -((p_w - math.log(-math.expm1(p_w))) - (p_l - math.log1p(-math.exp(p_l))))
    )
    objective = Objective(prior=UniformPrior(), link=OddsRatioLink(), beta=0.3)
    batch = pair(side([[p_w]]), side([[p_l]]))
    assert_close(objective(batch).per_pair, torch.tensor([expected], dtype=F64), **TOL)
    near = torch.tensor([-1e-5, -50.0], dtype=F64)
    exact = [-1e-5 - math.log(-math.expm1(-1e-5)), -50.0 - math.log1p(-math.exp(-50.0))]
    expected_near = torch.tensor(exact, dtype=F64)
    assert_close(log_odds(near), expected_near)
    # probability 1 is capped at mean log-prob -1e-6, in every dtype
    for dtype in (torch.float32, F64):
        capped = log_odds(torch.tensor([0.0, -1e-6], dtype=dtype))
        assert_close(capped[0], capped[1])
        assert abs(float(capped[0]) - 13.8155) < 1e-3


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ExoLink(epsilon=0.0), "ExoLink: epsilon"),
        (lambda: DiscoPOPLink(tau=0.0), "DiscoPOPLink: tau"),
        (lambda: AlphaDivergence(alpha=1.0), "AlphaDivergence: alpha"),
        (lambda: LinkSum(links=(), weights=()), "LinkSum.links"),
        (lambda: LinkSum(links=(HingeLink(),), weights=(1.0, 2.0)), "LinkSum.weights"),
        (lambda: LinkSum(links=(HingeLink(),), weights=(math.inf,)), "must be finite"),
        (lambda: WPOLink(max_weight=0.0), "WPOLink.max_weight"),
        (lambda: LengthDesensitisedWeights(alpha=1.5), "alpha must be in"),
    ],
)
def test_bad_arguments_raise_one_clear_error(build, message: str) -> None:
    with pytest.raises(CompositionError, match=message):
        build()


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: FDivergenceLink(link=NCAPairLink()), "FDivergenceLink.link"),
        (lambda: SortedLink(link=NCAPairLink()), "SortedLink.link"),
        (lambda: LinkSum(links=("hinge",), weights=(1.0,)), r"LinkSum.links\[0\]"),
        (lambda: Objective(link="sigmoid"), "Objective.link"),
    ],
)
def test_a_wrong_kind_of_primitive_is_refused(build, message: str) -> None:
    """Under pytest the jaxtyping hook checks the annotation first; without it
    the primitive's own check names the field."""
    with pytest.raises((CompositionError, TypeCheckError)) as error:
        build()
    if error.type is CompositionError:
        assert re.search(message, str(error.value))
