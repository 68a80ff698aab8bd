r"""OTPO's transport token weights and loss (``docs/recipe_notes/otpo.md``).

The oracle :func:`authors_weights` restates the authors' per-pair procedure in
NumPy float64: zero the masked hidden states, the Euclidean cost over the whole
padded grid plus 1e-6, divided by its maximum when that exceeds 1, POT's
stabilised unbalanced Sinkhorn with ``reg_type="entropy"``, and the plan
marginals scaled to the min-length budget. The loss oracle weights policy and
reference log-probs with the same weights.
"""

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np
import ot
import pytest
import torch
from jaxtyping import TypeCheckError
from torch.testing import assert_close

from mipo import BatchError, CompositionError, Need, Objective, PairBatch, Side
from mipo._ot import PotSinkhorn
from mipo.primitives import (
    ReferencePrior,
    SumOverResponse,
    TransportTokenWeights,
    UniformBudgetWeights,
)
from mipo.primitives.otpo import budget_weights, transport_cost
from mipo.sinkhorn import TorchSinkhorn
from mipo.training.recipes import load_recipe

F64 = torch.float64
HIDDEN = 16


def authors_weights(
    h_c: np.ndarray, h_r: np.ndarray, m_c: np.ndarray, m_r: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """One pair, padded arrays ``[L, d]`` and masks ``[L]``."""
    p = m_c[:, None] * h_c
    q = m_r[:, None] * h_r
    cost = np.sqrt(((p[:, None, :] - q[None, :, :]) ** 2).sum(-1)) + 1e-6
    if cost.max() > 1:
        cost = cost / cost.max()
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.simplefilter("ignore")
        plan = ot.unbalanced.sinkhorn_unbalanced(
            m_c,
            m_r,
            cost,
            reg=eps,
            reg_m=(0.2,),
            method="sinkhorn_stabilized",
            reg_type="entropy",
            numItermax=1000,
            stopThr=1e-6,
        )
    s = plan.sum() / min(m_c.sum(), m_r.sum())
    return plan.sum(1) / s, plan.sum(0) / s


def random_batch(
    seed: int, *, batch: int = 3, seq: int = 24, equal: bool = False
) -> PairBatch:
    """Hidden states offset by +3 (norms dominate the distances), a prompt of 2-6
    positions, responses of 1-14 tokens (equal lengths if ``equal``)."""
    generator = torch.Generator().manual_seed(seed)

    def draw(lengths: list[int], starts: list[int]) -> Side:
        mask = torch.zeros(batch, seq, dtype=torch.bool)
        for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
            mask[row, start : start + length] = True
        hidden = torch.randn(batch, seq, HIDDEN, generator=generator, dtype=F64) + 3
        return Side(
            policy_logps=-torch.rand(batch, seq, generator=generator, dtype=F64) * 5,
            reference_logps=-torch.rand(batch, seq, generator=generator, dtype=F64) * 5,
            response_mask=mask,
            hidden_states=hidden,
        )

    starts = torch.randint(2, 7, (batch,), generator=generator).tolist()
    lengths_c = torch.randint(1, 15, (batch,), generator=generator).tolist()
    lengths_r = lengths_c if equal else torch.randint(1, 15, (batch,)).tolist()
    return PairBatch(chosen=draw(lengths_c, starts), rejected=draw(lengths_r, starts))


def oracle(batch: PairBatch, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [
        authors_weights(
            batch.chosen.hidden_states[k].numpy(),
            batch.rejected.hidden_states[k].numpy(),
            batch.chosen.response_mask[k].double().numpy(),
            batch.rejected.response_mask[k].double().numpy(),
            eps,
        )
        for k in range(batch.size)
    ]
    return (
        torch.from_numpy(np.stack([r[0] for r in rows])),
        torch.from_numpy(np.stack([r[1] for r in rows])),
    )


def weighter(eps: float, **kwargs: object) -> TransportTokenWeights:
    return TransportTokenWeights(eps=eps, tau=0.2, precision="float64", **kwargs)


@pytest.mark.parametrize("eps", [1.0, 0.1])
@pytest.mark.parametrize("seed", range(3))
def test_weights_equal_the_authors_pot_pipeline(eps: float, seed: int) -> None:
    batch = random_batch(seed)
    expected_c, expected_r = oracle(batch, eps)
    for solver in (TorchSinkhorn(), PotSinkhorn()):
        chosen, rejected = weighter(eps, solver=solver)(batch)
        assert_close(chosen, expected_c, rtol=0.0, atol=1e-6)
        assert_close(rejected, expected_r, rtol=0.0, atol=1e-6)


@pytest.mark.parametrize("eps", [1.0, 0.1])
def test_budget_and_exact_zeros(eps: float) -> None:
    batch = random_batch(7)
    chosen, rejected = weighter(eps)(batch)
    n_c = batch.chosen.response_mask.sum(-1).double()
    n_r = batch.rejected.response_mask.sum(-1).double()
    budget = torch.minimum(n_c, n_r)
    assert_close(chosen.sum(-1), budget)
    assert_close(rejected.sum(-1), budget)
    assert bool((chosen[~batch.chosen.response_mask] == 0).all())
    assert bool((rejected[~batch.rejected.response_mask] == 0).all())
    assert bool((chosen[batch.chosen.response_mask] > 0).all())
    # not mean-1: the longer side of an unequal pair has mean weight < 1
    longer = torch.where(n_c > n_r, chosen.sum(-1) / n_c, rejected.sum(-1) / n_r)
    assert bool((longer[n_c != n_r] < 1).all())


@pytest.mark.parametrize("eps", [1.0, 0.1])
def test_padded_and_sliced_agree(eps: float) -> None:
    """Slicing out the valid tokens changes nothing when the sliced cost keeps the
    hidden-state norms the padded one holds (both rows have prompt positions);
    the pairwise normaliser does change the weights."""
    batch = random_batch(11, batch=1, seq=30)
    chosen, rejected = weighter(eps)(batch)
    m_c, m_r = batch.chosen.response_mask[0], batch.rejected.response_mask[0]
    h_c = batch.chosen.hidden_states[:, m_c]
    h_r = batch.rejected.hidden_states[:, m_r]
    ones_c = torch.ones(h_c.shape[:2], dtype=torch.bool)
    ones_r = torch.ones(h_r.shape[:2], dtype=torch.bool)
    cost = transport_cost(h_c, h_r, ones_c, ones_r, normaliser="max_including_norms")
    plan = TorchSinkhorn()(
        cost, ones_c.double(), ones_r.double(), eps=eps, tau=(0.2, 0.2)
    )
    sliced_c, sliced_r = budget_weights(plan.sum(2), plan.sum(1), ones_c, ones_r)
    assert_close(chosen[:, m_c], sliced_c, rtol=0.0, atol=1e-9)
    assert_close(rejected[:, m_r], sliced_r, rtol=0.0, atol=1e-9)
    pairwise_c, _ = weighter(eps, normaliser="pairwise")(batch)
    assert float((pairwise_c - chosen).abs().max()) > 1e-3


def _filled(batch: PairBatch, role: str) -> PairBatch:
    """Row 0 of ``role`` becomes a response over every position: no masked row on
    that side (a one-token prompt on the batch's longest sequence)."""
    side = getattr(batch, role)
    mask = side.response_mask.clone()
    mask[0] = True
    return dataclasses.replace(batch, **{role: side.replace(response_mask=mask)})


@pytest.mark.parametrize("eps", [1.0, 0.1])
@pytest.mark.parametrize("roles", [("chosen",), ("rejected",), ("chosen", "rejected")])
def test_a_side_without_masked_positions_keeps_the_authors_normaliser(
    eps: float, roles: tuple[str, ...]
) -> None:
    """The padded maximum holds the opposite side's norms only through a zeroed
    row. With none on ``roles`` the default follows the authors' pipeline, and
    always counting both sides' norms moves the weights. The side whose norms
    drop out is scaled by 3, so that its norms would be the maximum."""
    batch = random_batch(4, batch=2, seq=18)
    for role in roles:
        batch = _filled(batch, role)
        other = "rejected" if role == "chosen" else "chosen"
        side = getattr(batch, other)
        assert side.hidden_states is not None
        batch = dataclasses.replace(
            batch, **{other: side.replace(hidden_states=3.0 * side.hidden_states)}
        )
    expected_c, expected_r = oracle(batch, eps)
    chosen, rejected = weighter(eps)(batch)
    assert_close(chosen, expected_c, rtol=0.0, atol=1e-6)
    assert_close(rejected, expected_r, rtol=0.0, atol=1e-6)
    always_c, always_r = weighter(eps, normaliser="max_including_norms")(batch)
    moved = torch.maximum((always_c - chosen).abs(), (always_r - rejected).abs())
    assert float(moved[0].max()) > 1e-3
    assert_close(always_c[1], chosen[1], rtol=0.0, atol=1e-9)  # row 1 has prompts


def test_padding_a_full_row_changes_the_authors_normaliser_only() -> None:
    """A padding column gives a full row a zeroed position, which (as in the
    authors' padded grid) brings the other side's norms into the maximum; the
    padding-independent ``"max_including_norms"`` does not move."""
    batch = _filled(random_batch(4, batch=2, seq=18), "chosen")
    rejected = batch.rejected
    assert rejected.hidden_states is not None
    batch = dataclasses.replace(
        batch, rejected=rejected.replace(hidden_states=3.0 * rejected.hidden_states)
    )

    def widen(side: Side) -> Side:
        def cat(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, torch.zeros_like(t[:, :1])], dim=1)

        return Side(
            policy_logps=cat(side.policy_logps),
            response_mask=cat(side.response_mask),
            hidden_states=cat(side.hidden_states),
        )

    wide = PairBatch(chosen=widen(batch.chosen), rejected=widen(batch.rejected))
    padded, padded_wide = weighter(1.0)(batch)[0], weighter(1.0)(wide)[0]
    assert float((padded_wide[0, :-1] - padded[0]).abs().max()) > 1e-3
    assert_close(oracle(wide, 1.0)[0], padded_wide, rtol=0.0, atol=1e-6)
    always = weighter(1.0, normaliser="max_including_norms")
    assert_close(always(wide)[0][:, :-1], always(batch)[0], rtol=0.0, atol=1e-9)


def test_more_padding_changes_nothing() -> None:
    """The same responses at a different prompt offset and padded length."""
    batch = random_batch(5, batch=2, seq=20)
    shift = 9

    def pad(side: Side) -> Side:
        def widen(t: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
            pad = torch.full((t.shape[0], shift, *t.shape[2:]), fill, dtype=t.dtype)
            return torch.cat([pad, t, pad], dim=1)

        return Side(
            policy_logps=widen(side.policy_logps),
            response_mask=widen(side.response_mask),
            hidden_states=widen(side.hidden_states, 7.0),  # junk off the mask
        )

    wide = PairBatch(chosen=pad(batch.chosen), rejected=pad(batch.rejected))
    for eps in (1.0, 0.1):
        chosen, rejected = weighter(eps)(batch)
        wide_c, wide_r = weighter(eps)(wide)
        assert_close(wide_c[:, shift:-shift], chosen, rtol=0.0, atol=1e-9)
        assert_close(wide_r[:, shift:-shift], rejected, rtol=0.0, atol=1e-9)


def test_uniform_budget_weights_are_min_over_length() -> None:
    batch = random_batch(3)
    chosen, rejected = UniformBudgetWeights()(batch)
    n_c = batch.chosen.response_mask.sum(-1, keepdim=True).double()
    n_r = batch.rejected.response_mask.sum(-1, keepdim=True).double()
    budget = torch.minimum(n_c, n_r)
    assert_close(chosen, batch.chosen.response_mask * budget / n_c)
    assert_close(rejected, batch.rejected.response_mask * budget / n_r)
    assert UniformBudgetWeights().needs == frozenset()


def otpo_oracle_loss(
    batch: PairBatch, w_c: torch.Tensor, w_r: torch.Tensor, beta: float
) -> torch.Tensor:
    """softplus(-beta [(sum w lp_pol[c] - sum w lp_pol[r]) - (sum w lp_ref[c]
    - sum w lp_ref[r])]), the same weights on policy and reference, batch mean."""
    c, r = batch.chosen, batch.rejected
    pol = (w_c * c.policy_logps).sum(-1) - (w_r * r.policy_logps).sum(-1)
    ref = (w_c * c.reference_logps).sum(-1) - (w_r * r.reference_logps).sum(-1)
    z = beta * (pol - ref)
    return torch.log1p(torch.exp(-z)).mean()


@pytest.mark.parametrize(("beta", "eps"), [(0.01, 1.0), (0.1, 0.1)])
def test_objective_gives_the_otpo_loss(beta: float, eps: float) -> None:
    batch = random_batch(13)
    w_c, w_r = oracle(batch, eps)
    objective = Objective(prior=ReferencePrior(), weighter=weighter(eps), beta=beta)
    out = objective(batch)
    assert_close(out.loss, otpo_oracle_loss(batch, w_c, w_r, beta), rtol=0, atol=1e-9)


def test_all_ones_weights_and_equal_length_uniform_plan_are_dpo() -> None:
    batch = random_batch(17, equal=True)
    beta = 0.1
    ones_c = batch.chosen.response_mask.double()
    ones_r = batch.rejected.response_mask.double()
    dpo = Objective(prior=ReferencePrior(), weighter=SumOverResponse(), beta=beta)
    assert_close(dpo(batch).loss, otpo_oracle_loss(batch, ones_c, ones_r, beta))
    uniform = dataclasses.replace(dpo, weighter=UniformBudgetWeights())
    assert_close(uniform(batch).loss, dpo(batch).loss)


def test_no_gradient_reaches_the_hidden_states() -> None:
    batch = random_batch(19)
    hidden_c = batch.chosen.hidden_states.clone().requires_grad_(True)
    hidden_r = batch.rejected.hidden_states.clone().requires_grad_(True)
    logps = batch.chosen.policy_logps.clone().requires_grad_(True)
    batch = PairBatch(
        chosen=batch.chosen.replace(hidden_states=hidden_c, policy_logps=logps),
        rejected=batch.rejected.replace(hidden_states=hidden_r),
    )
    weights = weighter(1.0)
    chosen, rejected = weights(batch)
    assert not chosen.requires_grad and not rejected.requires_grad
    Objective(weighter=weights, beta=0.1)(batch).loss.backward()
    assert hidden_c.grad is None and hidden_r.grad is None
    assert logps.grad is not None


def test_needs_and_missing_hidden_states() -> None:
    objective = Objective(weighter=TransportTokenWeights(), beta=0.01)
    assert objective.needs == {Need.HIDDEN_STATES, Need.REFERENCE_LOGPS}
    batch = random_batch(1)
    bare = PairBatch(
        chosen=batch.chosen.replace(hidden_states=None), rejected=batch.rejected
    )
    with pytest.raises(BatchError, match=r"chosen\.hidden_states"):
        objective(bare)
    with pytest.raises(BatchError, match=r"chosen\.hidden_states"):
        TransportTokenWeights()(bare)


@pytest.mark.parametrize("kwargs", [{"eps": 0.0}, {"eps": math.nan}, {"tau": -0.2}])
def test_bad_values_fail_at_construction(kwargs: dict) -> None:
    with pytest.raises(CompositionError, match="TransportTokenWeights"):
        TransportTokenWeights(**kwargs)


@pytest.mark.parametrize(
    "kwargs", [{"normaliser": "mean"}, {"precision": "float16"}, {"solver": "pot"}]
)
def test_bad_choices_fail_at_construction(kwargs: dict) -> None:
    """Outside pytest ``__post_init__`` names the field; under pytest the run-time
    type check may already reject the value, naming it too."""
    (field,) = kwargs
    with pytest.raises((CompositionError, TypeCheckError), match=field):
        TransportTokenWeights(**kwargs)


def test_float32_default_is_close_to_float64() -> None:
    batch = random_batch(23)
    chosen64, _ = weighter(0.1)(batch)
    chosen32, _ = TransportTokenWeights(eps=0.1)(batch)
    assert chosen32.dtype == F64  # returned in the log-prob dtype
    assert_close(chosen32, chosen64, rtol=0.0, atol=1e-4)


def test_pot_version_trap_on_padded_input() -> None:
    """POT >= 0.9.5 defaults to reg_type="kl": on padded input it stops at
    iteration 0 and the weights move; the explicit entropy does not.
    Measured on this batch: the kl weights differ by up to 0.18 at eps 0.1
    (0.0036 at eps 1), e.g. 0.500 vs 0.653 for one chosen token."""
    batch = random_batch(29, batch=2)
    expected, _ = weighter(0.1)(batch)
    entropy, _ = weighter(0.1, solver=PotSinkhorn(reg_type="entropy"))(batch)
    assert_close(entropy, expected, rtol=0.0, atol=1e-9)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kl, _ = weighter(0.1, solver=PotSinkhorn(reg_type="kl"))(batch)
    messages = [str(w.message) for w in caught]
    assert any("Numerical errors at iteration 0" in m for m in messages), messages
    assert float((kl - expected).abs().max()) > 0.05


def test_recipe_defaults_and_3b_preset() -> None:
    recipe = load_recipe("recipes/otpo.py")
    objective = recipe.objective
    assert objective.beta == 0.01
    assert objective.weighter == TransportTokenWeights(eps=1.0, tau=0.2)
    assert isinstance(objective.prior, ReferencePrior)
    small = recipe.make_objective(beta=0.1, eps=0.1)
    assert small.beta == 0.1 and small.weighter.eps == 0.1
    train = recipe.train
    assert (train.learning_rate, train.lr_schedule, train.warmup_ratio) == (
        5e-7,
        "cosine",
        0.1,
    )
    assert (train.max_grad_norm, train.optimizer) == (20.0, "adamw")


def test_recipe_trains_two_steps_on_a_tiny_model(tmp_path: Path) -> None:
    """Through the trainer: hidden states from the policy forward, OT weights,
    reference log-probs; first step at the reference gives log 2."""
    import json

    from tiny import build_tiny_model_dir

    from mipo.training.trainer import train

    # 2048 is LlamaConfig's default, which this test was written against.
    model_dir = build_tiny_model_dir(tmp_path / "tiny", max_position_embeddings=2048)
    overrides = {
        "train.model": str(model_dir),
        "train.output_dir": str(tmp_path / "runs"),
        "train.max_steps": 2,
        "train.max_examples": 24,
        "train.batch_size": 2,
        "train.gradient_accumulation_steps": 1,
        "train.eval_max_examples": 2,
        "train.eval_max_new_tokens": 2,
    }
    result = train("recipes/otpo.py", overrides, progress=False)
    assert result.step == 2
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    # training records only (evaluation records carry no loss)
    records = [r for r in map(json.loads, lines) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert all(math.isfinite(float(r["loss"])) for r in records)
