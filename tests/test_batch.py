"""Construction-time validation: malformed batches and incompatible compositions
are refused with one error that names the field.

Under pytest the jaxtyping import hook checks annotated dataclass fields before
``__post_init__`` runs, so a dtype or shape mismatch of an annotated field may
surface as ``jaxtyping.TypeCheckError`` rather than mipo's ``BatchError``. The
tests accept either where both can fire and assert that the field is named, and
exercise mipo's own checks directly through :func:`mipo.batch.validate_side`.
"""

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import final

import pytest
import torch
from builders import pair, random_batch, side
from jaxtyping import TypeCheckError

from mipo import BatchError, CompositionError, Need, Objective, PairBatch, Side, Term
from mipo.batch import validate_side
from mipo.primitives import (
    AbstractTerm,
    BatchPrior,
    ChosenNLL,
    ConstantMargin,
    LabelSmoothedLink,
    MeanOverResponse,
    ProductPrior,
    ProductWeighter,
    ReferencePrior,
    RobustLink,
    SequentialKLPenalty,
    SumMargin,
    SumOverResponse,
    TemperedReferencePrior,
    TokenInterpolationPrior,
)
from mipo.typing import PerPair

F64 = torch.float64
EITHER = (BatchError, TypeCheckError)
COMPOSE = (CompositionError, TypeCheckError)


def _good(rows: int = 2, seq: int = 3) -> Side:
    mask = torch.zeros(rows, seq, dtype=torch.bool)
    mask[:, -1] = True
    return Side(
        policy_logps=-torch.ones(rows, seq, dtype=F64),
        reference_logps=-torch.ones(rows, seq, dtype=F64),
        response_mask=mask,
    )


def _forced(base: Side, **fields: object) -> Side:
    """A side with fields set behind the validator's back (to call it directly)."""
    forced = dataclasses.replace(base)
    for name, value in fields.items():
        object.__setattr__(forced, name, value)
    return forced


# --- Side: mipo's own validation path -----------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("response_mask", torch.ones(2, 3), "chosen.response_mask: expected a 2-D"),
        (
            "response_mask",
            torch.ones(6, dtype=torch.bool),
            "chosen.response_mask: expected a 2-D",
        ),
        (
            "reference_logps",
            torch.zeros(2, 4, dtype=F64),
            "chosen.reference_logps: expected shape (2, 3)",
        ),
        (
            "reference_logps",
            torch.zeros(2, 3, dtype=torch.int64),
            "chosen.reference_logps: expected a floating dtype",
        ),
        ("kl_forward", [[0.0]], "chosen.kl_forward: expected a tensor, got list"),
        (
            "sequence_mask",
            torch.ones(2, 3, dtype=F64),
            "chosen.sequence_mask: expected torch.bool",
        ),
        (
            "hidden_states",
            torch.zeros(2, 3, dtype=F64),
            "chosen.hidden_states: expected shape (2, 3, hidden)",
        ),
        (
            "prior_logps",
            torch.zeros(2, 3, dtype=F64, device="meta"),
            "chosen.prior_logps: on meta, but chosen.response_mask is on cpu",
        ),
    ],
)
def test_validate_side_names_the_offending_field(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(BatchError, match=re.escape(message)):
        validate_side(_forced(_good(), **{field: value}), "chosen")


def test_validate_side_refuses_rows_without_a_response_token() -> None:
    mask = torch.tensor([[False, True], [False, False]])
    with pytest.raises(BatchError, match=re.escape("chosen.response_mask: rows [1]")):
        validate_side(_forced(_good(2, 2), response_mask=mask), "chosen")


def test_validate_side_accepts_a_well_formed_side() -> None:
    validate_side(_good(), "chosen")


# --- Side and PairBatch construction ------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reference_logps", torch.zeros(2, 4, dtype=F64)),
        ("reference_logps", torch.zeros(2, 3, dtype=torch.int64)),
        ("kl_forward", torch.zeros(3, 3, dtype=F64)),
        ("sequence_mask", torch.ones(2, 3, dtype=F64)),
        ("hidden_states", torch.zeros(2, 4, 5, dtype=F64)),
    ],
)
def test_side_construction_names_the_field(field: str, value: torch.Tensor) -> None:
    base = _good()
    with pytest.raises(EITHER, match=field):
        Side(
            policy_logps=base.policy_logps,
            response_mask=base.response_mask,
            **{field: value},
        )


def test_side_construction_refuses_an_empty_response() -> None:
    with pytest.raises(BatchError, match=r"side\.response_mask: rows \[0\]"):
        side([[-1.0, -1.0]], [[False, False]])


def test_side_construction_refuses_a_device_mismatch() -> None:
    base = _good()
    with pytest.raises(EITHER, match="reference_logps"):
        Side(
            policy_logps=base.policy_logps,
            response_mask=base.response_mask,
            reference_logps=torch.zeros(2, 3, dtype=F64, device="meta"),
        )


def test_pair_batch_refuses_different_row_counts() -> None:
    with pytest.raises(EITHER, match="rejected"):
        PairBatch(chosen=_good(2), rejected=_good(3))


def test_pair_batch_refuses_different_padded_lengths() -> None:
    with pytest.raises(EITHER, match="rejected"):
        PairBatch(chosen=_good(2, 3), rejected=_good(2, 4))


def test_pair_batch_refuses_a_non_side() -> None:
    with pytest.raises(EITHER, match="chosen"):
        PairBatch(chosen="not a side", rejected=_good())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        (torch.ones(3, dtype=F64), "example_weights"),
        (torch.ones(2, dtype=torch.int64), "example_weights"),
        (torch.tensor([1.0, -0.5], dtype=F64), "example_weights"),
        (torch.tensor([1.0, math.nan], dtype=F64), "example_weights"),
        (torch.tensor([math.inf, 1.0], dtype=F64), "example_weights"),
    ],
)
def test_pair_batch_validates_example_weights(
    weights: torch.Tensor, message: str
) -> None:
    with pytest.raises(EITHER, match=message):
        PairBatch(chosen=_good(), rejected=_good(), example_weights=weights)


def test_pair_batch_example_weights_mipo_messages() -> None:
    """mipo's own messages (values the type hook cannot see)."""
    with pytest.raises(BatchError, match="example_weights: must be finite"):
        PairBatch(
            chosen=_good(),
            rejected=_good(),
            example_weights=torch.tensor([1.0, -1.0], dtype=F64),
        )


def test_swapped_exchanges_the_sides() -> None:
    batch = pair(side([[-1.0]]), side([[-2.0]]))
    swapped = batch.swapped()
    assert swapped.chosen is batch.rejected and swapped.rejected is batch.chosen


# --- Objective.check: missing needed fields -----------------------------------


def test_objective_refuses_a_batch_without_reference_logps() -> None:
    batch = pair(side([[-1.0, -2.0]]), side([[-1.0, -3.0]]))
    with pytest.raises(
        BatchError,
        match=re.escape("chosen.reference_logps: the objective needs it (prior=Refer"),
    ):
        Objective()(batch)


def test_objective_names_the_missing_field_and_its_owner() -> None:
    objective = Objective(
        prior=ProductPrior(
            base=ReferencePrior(), factors=(SequentialKLPenalty(kappa=0.5),)
        )
    )
    batch = random_batch({Need.REFERENCE_LOGPS})
    with pytest.raises(BatchError, match=r"chosen\.kl_forward.*ProductPrior"):
        objective.check(batch)


def test_objective_names_a_missing_field_on_the_rejected_side() -> None:
    chosen = side([[-1.0]], reference_logps=[[-1.0]])
    batch = pair(chosen, side([[-1.0]]))
    with pytest.raises(BatchError, match=r"rejected\.reference_logps"):
        Objective().check(batch)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class _AnchorTerm(AbstractTerm):
    """A test-only term that reads the batch-level anchor."""

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.ANCHOR})

    def __call__(self, batch: PairBatch) -> PerPair:
        assert batch.anchor is not None
        return batch.anchor.masked_sum(batch.anchor.policy_logps)


def test_objective_refuses_a_batch_without_a_needed_anchor() -> None:
    objective = Objective(terms=(Term(name="anchor", term=_AnchorTerm()),))
    batch = random_batch({Need.REFERENCE_LOGPS})
    with pytest.raises(BatchError, match=r"^anchor: .*terms\[anchor\]=_AnchorTerm"):
        objective(batch)


def test_zero_weight_term_needs_nothing() -> None:
    """A zero-weight term is the neutral element: its needs are not asked for."""
    objective = Objective(terms=(Term(name="anchor", term=_AnchorTerm(), weight=0.0),))
    assert Need.ANCHOR not in objective.needs
    objective(random_batch({Need.REFERENCE_LOGPS}))


# --- Incompatible compositions ------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Objective(prior=SumOverResponse()), "prior"),
        (lambda: Objective(weighter=ReferencePrior()), "weighter"),
        (lambda: Objective(margin=LabelSmoothedLink(epsilon=0.1)), "margin"),
        (lambda: Objective(link=ConstantMargin(gamma=1.0)), "link"),
        (lambda: Objective(terms=("sft",)), "terms"),
        (lambda: Term(name="sft", term=ReferencePrior()), "term"),
        (lambda: ProductPrior(base=SumOverResponse(), factors=()), "base"),
        (
            lambda: ProductPrior(base=ReferencePrior(), factors=(ReferencePrior(),)),
            "factor",
        ),
        (lambda: ProductWeighter(factors=(ReferencePrior(),)), "factor"),
        (lambda: SumMargin(margins=(SumOverResponse(),)), "margin"),
        (lambda: TokenInterpolationPrior(weights=ReferencePrior()), "weights"),
    ],
)
def test_wrong_slot_types_are_refused_at_construction(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(COMPOSE, match=message):
        build()


@pytest.mark.parametrize("beta", [0.0, -0.1, math.nan, math.inf])
def test_non_positive_or_non_finite_beta_is_refused(beta: float) -> None:
    with pytest.raises(CompositionError, match=r"Objective\.beta"):
        Objective(beta=beta)


def test_duplicate_term_names_are_refused() -> None:
    term = Term(name="sft", term=ChosenNLL())
    with pytest.raises(CompositionError, match=r"duplicate names \['sft'\]"):
        Objective(terms=(term, Term(name="sft", term=ChosenNLL(), weight=2.0)))


@pytest.mark.parametrize("name", ["", "SFT", "sft-loss", "terms/sft"])
def test_bad_term_names_are_refused(name: str) -> None:
    with pytest.raises(CompositionError, match="name"):
        Term(name=name, term=ChosenNLL())


def test_non_finite_term_weight_is_refused() -> None:
    with pytest.raises(CompositionError, match="weight must be finite"):
        Term(name="sft", term=ChosenNLL(), weight=math.nan)


@pytest.mark.parametrize("link", [LabelSmoothedLink, RobustLink])
@pytest.mark.parametrize("epsilon", [-0.1, 0.5, 0.7])
def test_bad_epsilon_is_refused(link: type, epsilon: float) -> None:
    with pytest.raises(CompositionError, match=rf"{link.__name__}: epsilon"):
        link(epsilon=epsilon)


def test_double_mean_over_response_in_a_product_is_refused() -> None:
    with pytest.raises(CompositionError, match="MeanOverResponse appears twice"):
        ProductWeighter(factors=(MeanOverResponse(), MeanOverResponse()))


def test_empty_product_weighter_is_refused() -> None:
    with pytest.raises(CompositionError, match="at least one factor"):
        ProductWeighter(factors=())


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ConstantMargin(gamma=math.inf), "gamma must be finite"),
        (lambda: TemperedReferencePrior(temperature=0.0), "temperature must be > 0"),
        (lambda: TemperedReferencePrior(temperature=-1.0), "temperature must be > 0"),
    ],
)
def test_bad_hyperparameters_are_refused(
    build: Callable[[], object], message: str
) -> None:
    with pytest.raises(CompositionError, match=message):
        build()


def test_batch_prior_refuses_a_prior_that_requires_grad() -> None:
    """Optimising zeta through J is degenerate (docs/objective.md#the-degeneracy)."""
    prior = torch.zeros(1, 2, dtype=F64, requires_grad=True)
    batch = pair(
        side([[-1.0, -2.0]], prior_logps=prior),
        side([[-1.0, -3.0]], prior_logps=prior.detach()),
    )
    with pytest.raises(CompositionError, match="prior_logps requires grad"):
        Objective(prior=BatchPrior())(batch)
