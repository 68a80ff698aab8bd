"""LogRatioTriplet against a per-row float64 oracle of the released triplet term
(``docs/recipe_notes/ti_dpo.md``).

The oracle extracts each response's log-ratios with a Python loop (token k of the
response is its k-th masked position) and sums squared differences up to the
shorter of the two responses; it never calls mipo.
"""

import hypothesis.strategies as st
import pytest
import torch
from builders import F64, pair_batches, random_batch, side
from hypothesis import given
from torch import Tensor
from torch.testing import assert_close

from mipo import BatchError, CompositionError, Need, PairBatch
from mipo.primitives import LogRatioTriplet
from mipo.services import AnchorSampling

NEEDS = (Need.REFERENCE_LOGPS, Need.ANCHOR)


def _response_log_ratios(policy: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
    values = [policy[t] - reference[t] for t in range(mask.shape[0]) if bool(mask[t])]
    return torch.stack(values)


def triplet_oracle(batch: PairBatch, margin: float) -> Tensor:
    """relu(sum_k (d_k - b_k)^2 - sum_k (d_k - c_k)^2 + margin) per pair; torch
    float64 ops on the batch's own tensors so autograd gives the oracle gradient."""
    out = []
    assert batch.anchor is not None
    for row in range(batch.size):
        packed = []
        for side_ in (batch.anchor, batch.chosen, batch.rejected):
            assert side_.reference_logps is not None
            packed.append(
                _response_log_ratios(
                    side_.policy_logps[row],
                    side_.reference_logps[row],
                    side_.response_mask[row],
                )
            )
        d, b, c = packed
        pos = min(len(d), len(b))
        neg = min(len(d), len(c))
        gap = ((d[:pos] - b[:pos]) ** 2).sum() - ((d[:neg] - c[:neg]) ** 2).sum()
        out.append(torch.clamp(gap + margin, min=0.0))
    return torch.stack(out)


def _live(batch: PairBatch) -> PairBatch:
    def fresh(side_):
        return side_.replace(
            policy_logps=side_.policy_logps.detach().clone().requires_grad_(True)
        )

    assert batch.anchor is not None
    return PairBatch(
        chosen=fresh(batch.chosen),
        rejected=fresh(batch.rejected),
        anchor=fresh(batch.anchor),
    )


def _grads(batch: PairBatch) -> list[Tensor]:
    assert batch.anchor is not None
    sides = (batch.anchor, batch.chosen, batch.rejected)
    grads = [s.policy_logps.grad for s in sides]
    assert all(g is not None for g in grads)
    return [g for g in grads if g is not None]


def test_hand_worked_value_and_gradient() -> None:
    """One pair; prompt positions differ per side and the anchor is longer.
    anchor d = (0.5, -1.0, 0.25), chosen b = (0.0, -0.5), rejected c = (2.0,):
    D+ = 0.25 + 0.25 = 0.5 (k < 2), D- = (0.5 - 2)^2 = 2.25 (k < 1),
    margin 2: T = relu(0.5 - 2.25 + 2) = 0.25.
    dT/dd = (2(d0-b0) - 2(d0-c0), 2(d1-b1), 0) = (1 + 3, -1, 0) = (4, -1, 0);
    dT/db = (-1, 1); dT/dc = (-3) (the reference is zero, so l = policy)."""
    zeros = [[0.0, 0.0, 0.0, 0.0]]
    batch = _live(
        PairBatch(
            anchor=side(
                [[-9.0, 0.5, -1.0, 0.25]],
                [[False, True, True, True]],
                reference_logps=zeros,
            ),
            chosen=side(
                [[-9.0, -9.0, 0.0, -0.5]],
                [[False, False, True, True]],
                reference_logps=zeros,
            ),
            rejected=side(
                [[2.0, -9.0, -9.0, -9.0]],
                [[True, False, False, False]],
                reference_logps=zeros,
            ),
        )
    )
    value = LogRatioTriplet(margin=2.0)(batch)
    assert_close(value, torch.tensor([0.25], dtype=F64))
    value.sum().backward()
    anchor, chosen, rejected = _grads(batch)
    assert_close(anchor, torch.tensor([[0.0, 4.0, -1.0, 0.0]], dtype=F64))
    assert_close(chosen, torch.tensor([[0.0, 0.0, -1.0, 1.0]], dtype=F64))
    assert_close(rejected, torch.tensor([[-3.0, 0.0, 0.0, 0.0]], dtype=F64))


@given(batch=pair_batches(NEEDS), margin=st.floats(1e-6, 50.0))
def test_value_and_gradient_match_the_oracle(batch: PairBatch, margin: float) -> None:
    mipo_batch, oracle_batch = _live(batch), _live(batch)
    value = LogRatioTriplet(margin=margin)(mipo_batch)
    expected = triplet_oracle(oracle_batch, margin)
    assert_close(value, expected)
    value.sum().backward()
    expected.sum().backward()
    for got, want in zip(_grads(mipo_batch), _grads(oracle_batch), strict=True):
        assert_close(got, want)


def test_value_and_gradient_when_the_anchor_is_longer_than_the_responses() -> None:
    batch = random_batch(NEEDS, seed=3, batch=4, seq=5)  # anchor seq = 6
    mipo_batch, oracle_batch = _live(batch), _live(batch)
    value = LogRatioTriplet(margin=1000.0)(mipo_batch)  # hinge active
    expected = triplet_oracle(oracle_batch, 1000.0)
    assert_close(value, expected)
    value.sum().backward()
    expected.sum().backward()
    for got, want in zip(_grads(mipo_batch), _grads(oracle_batch), strict=True):
        assert_close(got, want)


@given(batch=pair_batches(NEEDS))
def test_triplet_is_zero_when_the_anchor_equals_chosen_and_rejected_is_far(
    batch: PairBatch,
) -> None:
    """anchor = chosen: D+ = 0. Rejected shifted by 1 on every token: D- =
    min(|a|, |y_l|) >= 1 > margin 0.5, so T = 0."""
    chosen = batch.chosen
    assert chosen.reference_logps is not None
    rejected = chosen.replace(reference_logps=chosen.reference_logps + 1.0)
    same = PairBatch(chosen=chosen, rejected=rejected, anchor=chosen)
    value = LogRatioTriplet(margin=0.5)(same)
    assert_close(value, torch.zeros_like(value))


def test_inactive_hinge_gives_zero_gradient() -> None:
    """anchor = chosen (D+ = 0), rejected log-ratios 10 away (D- >= 100): the
    hinge at margin 1 is inactive, so no input gets a gradient."""
    base = random_batch(NEEDS, seed=5)
    chosen = base.chosen
    assert chosen.reference_logps is not None
    far = chosen.replace(reference_logps=chosen.reference_logps + 10.0)
    batch = _live(PairBatch(chosen=chosen, rejected=far, anchor=chosen))
    value = LogRatioTriplet(margin=1.0)(batch)
    assert_close(value, torch.zeros_like(value))
    value.sum().backward()
    for grad in _grads(batch):
        assert_close(grad, torch.zeros_like(grad))


def test_needs_and_sampling() -> None:
    term = LogRatioTriplet()
    assert term.needs == {Need.ANCHOR, Need.REFERENCE_LOGPS}
    assert term.sampling == AnchorSampling()
    assert LogRatioTriplet(sampling=AnchorSampling(max_new_tokens=8)).sampling == (
        AnchorSampling(max_new_tokens=8, top_k=50, top_p=0.95, temperature=0.8)
    )


def test_missing_anchor_or_anchor_reference_names_the_field() -> None:
    batch = random_batch(NEEDS, seed=6)
    assert batch.anchor is not None
    with pytest.raises(BatchError, match=r"^anchor: LogRatioTriplet"):
        LogRatioTriplet()(PairBatch(chosen=batch.chosen, rejected=batch.rejected))
    no_reference = batch.anchor.replace(reference_logps=None)
    with pytest.raises(BatchError, match=r"^anchor\.reference_logps: "):
        LogRatioTriplet()(
            PairBatch(chosen=batch.chosen, rejected=batch.rejected, anchor=no_reference)
        )


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), 0.0, -0.5])
def test_a_margin_the_released_code_would_skip_is_refused(margin: float) -> None:
    """The release computes the term only for a margin > 0; at 0 it drops it,
    where relu(D+ - D-) would still train. mipo refuses and says how to switch
    the term off."""
    with pytest.raises(CompositionError, match=r"LogRatioTriplet.margin: .*gamma=0"):
        LogRatioTriplet(margin=margin)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_sampling_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"AnchorSampling.{field}"):
        AnchorSampling(**kwargs)
