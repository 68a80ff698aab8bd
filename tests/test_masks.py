r"""SparsePO / MaPO masks (``docs/recipe_notes/sparsepo.md``).

Oracles are written here from the spec: the min-max rescale in NumPy, the MaPO
residual-group mask from Hugging Face's ``output_hidden_states`` (an independent
path to the same activations), the L1 halving by hand.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from tiny import tiny_llama
from torch.testing import assert_close

from mipo import CompositionError, Need, Objective, TrainConfig
from mipo.data.builtin import arithmetic_records
from mipo.data.collate import collate
from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
from mipo.data.tokenize import encode_record
from mipo.primitives import ActivationMasks, DataMasks, LearnedMasks
from mipo.training.batching import BatchBuilder
from mipo.training.models import FrozenCopyReference
from mipo.training.recipes import load_recipe
from mipo.training.services import Models, ServiceSetup, build_services
from mipo.training.services.masks import (
    ActivationMaskModel,
    LearnedMaskModel,
    minmax_over_response,
)

SPARSEPO = load_recipe("sparsepo")


@st.composite
def rows_with_masks(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    batch, seq = draw(st.integers(1, 4)), draw(st.integers(2, 9))
    values = draw(
        arrays(np.float32, (batch, seq), elements=st.floats(-50.0, 50.0, width=32))
    )
    starts = draw(st.lists(st.integers(0, seq - 2), min_size=batch, max_size=batch))
    mask = np.zeros((batch, seq), dtype=bool)
    for row, start in enumerate(starts):
        mask[row, start:] = True
    # distinct values inside each response, so min-max is defined everywhere
    values = values + np.arange(seq, dtype=np.float32)[None, :] * 1e-2
    return values, mask


@given(rows_with_masks())
def test_minmax_equals_z_normalise_then_minmax(
    case: tuple[np.ndarray, np.ndarray],
) -> None:
    """MaPO's zn_rescale (z-normalise over the response, then min-max) is plain
    min-max; values lie in [0, 1] with 0 and 1 attained; 0 off the response."""
    values, mask = case
    oracle = np.zeros_like(values, dtype=np.float64)
    for row in range(values.shape[0]):
        v = values[row, mask[row]].astype(np.float64)
        z = (v - v.mean()) / v.std()
        oracle[row, mask[row]] = (z - z.min()) / (z.max() - z.min())
    got = minmax_over_response(torch.from_numpy(values), torch.from_numpy(mask))
    assert_close(got.double().numpy(), oracle, rtol=1e-4, atol=1e-5)
    assert bool((got >= 0).all()) and bool((got <= 1).all())
    assert bool((got[~torch.from_numpy(mask)] == 0).all())
    for row in range(values.shape[0]):
        inside = got[row][torch.from_numpy(mask[row])]
        assert float(inside.max()) == 1.0 and float(inside.min()) == 0.0


def test_minmax_of_a_constant_response_is_one() -> None:
    values = torch.tensor([[3.0, 5.0, 5.0], [1.0, 2.0, 3.0]])
    mask = torch.tensor([[False, True, True], [False, False, True]])
    got = minmax_over_response(values, mask)
    assert_close(got, torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))


@pytest.fixture(scope="module")
def setup() -> tuple:
    tokenizer = tiny_chat_tokenizer()
    pairs = [
        encode_record(r, tokenizer, max_length=128, max_prompt_length=96)
        for r in arithmetic_records(n=3, seed=2)
    ]
    tensors = collate(pairs, pad_token_id=tokenizer.pad_token_id)
    policy = tiny_llama(0).train()
    reference_model = tiny_llama(1)
    for p in reference_model.parameters():
        p.requires_grad_(False)
    return tokenizer, tensors, policy, FrozenCopyReference(reference_model)


def _models(setup: tuple) -> Models:
    tokenizer, _, policy, reference = setup
    return Models(
        policy=policy, reference=reference, pad_token_id=tokenizer.pad_token_id
    )


def _mask_model(setup: tuple, objective: Objective) -> torch.nn.Module:
    """The mask model the objective's mask service builds for the tiny policy."""
    services = build_services(
        objective.services,
        ServiceSetup(
            config=TrainConfig(), models=_models(setup), device=torch.device("cpu")
        ),
    )
    (service,) = services
    return service.module


def _batch(setup: tuple, objective: Objective, mask_model: torch.nn.Module):
    """One batch through the trainer's builder, with ``mask_model`` as the mask
    service's model."""
    services = build_services(
        objective.services,
        ServiceSetup(
            config=TrainConfig(), models=_models(setup), device=torch.device("cpu")
        ),
    )
    (service,) = services
    service.module = mask_model
    builder = BatchBuilder(needs=objective.needs, services=services)
    return builder(_models(setup), setup[1])


@pytest.mark.parametrize(
    "groups", [("mlp", "attn", "resid", "logits"), ("mlp",), ("attn", "logits")]
)
def test_mapo_masks_lie_in_unit_interval_without_gradient(
    setup: tuple, groups: tuple[str, ...]
) -> None:
    source = ActivationMasks(groups=groups)
    objective = SPARSEPO.make_objective(masks=source)
    assert objective.services == source.services
    model = _mask_model(setup, objective)
    batch = _batch(setup, objective, model)
    for side in (batch.chosen, batch.rejected):
        masks = side.token_weights
        assert not masks.requires_grad
        assert bool((masks >= 0).all()) and bool((masks <= 1).all())
        assert bool((masks[~side.response_mask] == 0).all())
        # the same mask for the reward and the KL
        assert_close(side.kl_weights, masks, rtol=0, atol=0)
    out = objective(batch)
    assert bool(torch.isfinite(out.loss))


def test_mapo_residual_mask_matches_hidden_state_oracle(setup: tuple) -> None:
    """resid = embedding output, every layer's output, final norm: Hugging Face's
    ``hidden_states`` tuple (whose last entry is after the final norm)."""
    tokenizer, tensors, _, reference = setup
    objective = SPARSEPO.make_objective(masks=ActivationMasks(groups=("resid",)))
    batch = _batch(setup, objective, ActivationMaskModel(("resid",)))
    for side, data in (
        (batch.chosen, tensors.chosen),
        (batch.rejected, tensors.rejected),
    ):
        with torch.no_grad():
            states = reference.model(
                input_ids=data.input_ids,
                attention_mask=data.attention_mask,
                output_hidden_states=True,
            ).hidden_states
        response = side.response_mask.numpy()
        oracle = np.zeros(response.shape)
        for state in states:
            means = state.double().mean(-1)[:, :-1].numpy()
            for row in range(response.shape[0]):
                v = means[row, response[row]]
                oracle[row, response[row]] += (v - v.min()) / (v.max() - v.min())
        oracle /= len(states)
        width = oracle.shape[1]
        assert_close(
            side.token_weights[:, :width].double().numpy(), oracle, rtol=1e-4, atol=1e-5
        )
    del tokenizer


def test_learned_masks_send_gradient_to_mask_parameters_only(setup: tuple) -> None:
    source = LearnedMasks(independent_masks=True, dropout=0.0)
    objective = SPARSEPO.make_objective(masks=source, l1_reward=0.01, l1_kl=0.01)
    assert Need.REFERENCE_HIDDEN_LAYERS in objective.needs
    model = _mask_model(setup, objective)
    assert isinstance(model, LearnedMaskModel)
    _, _, policy, reference = setup
    policy.zero_grad(set_to_none=True)
    batch = _batch(setup, objective, model)
    assert batch.chosen.token_weights.requires_grad
    out = objective(batch)
    # the policy's gradient is the same with the masks frozen: none flows
    # through the masks into the policy
    mask_grads = torch.autograd.grad(
        out.loss, list(model.parameters()), retain_graph=True, allow_unused=True
    )
    assert all(g is not None for g in mask_grads)
    assert any(float(g.abs().sum()) > 0 for g in mask_grads)
    assert all(p.grad is None for p in reference.model.parameters())
    out.loss.backward(retain_graph=True)
    assert all(not p.requires_grad for p in reference.model.parameters())
    policy_grad = torch.cat([p.grad.flatten() for p in policy.parameters()])
    frozen = objective(
        batch.__class__(
            chosen=batch.chosen.replace(
                token_weights=batch.chosen.token_weights.detach(),
                kl_weights=batch.chosen.kl_weights.detach(),
            ),
            rejected=batch.rejected.replace(
                token_weights=batch.rejected.token_weights.detach(),
                kl_weights=batch.rejected.kl_weights.detach(),
            ),
        )
    )
    again = torch.autograd.grad(frozen.loss, list(policy.parameters()))
    assert_close(torch.cat([g.flatten() for g in again]), policy_grad)
    policy.zero_grad(set_to_none=True)


def test_common_mask_halves_each_l1_coefficient(setup: tuple) -> None:
    """sparse-common: with identical masks, its L1 total is half of sparse-indp's."""
    common = SPARSEPO.make_objective(masks=LearnedMasks(), l1_reward=0.3, l1_kl=0.2)
    independent = SPARSEPO.make_objective(
        masks=LearnedMasks(independent_masks=True), l1_reward=0.3, l1_kl=0.2
    )
    data = SPARSEPO.make_objective(masks=DataMasks(), l1_reward=0.3, l1_kl=0.2)
    assert [t.weight for t in common.terms] == [0.15, 0.1]
    assert [t.weight for t in independent.terms] == [0.3, 0.2]
    assert [t.weight for t in data.terms] == [0.3, 0.2]
    torch.manual_seed(0)
    model = LearnedMaskModel(
        hidden_size=64, num_layers=2, independent=False, dropout=0.0
    )
    batch = _batch(setup, common, model)
    assert_close(batch.chosen.kl_weights, batch.chosen.token_weights, rtol=0, atol=0)

    def l1_total(objective: Objective) -> torch.Tensor:
        return sum(t.weight * t.term(batch) for t in objective.terms).mean()

    hand = sum(
        (side.token_weights.abs() * side.response_mask).sum(-1)
        for side in (batch.chosen, batch.rejected)
    ).mean()
    assert_close(l1_total(common), 0.5 * l1_total(independent))
    assert_close(l1_total(independent), (0.3 + 0.2) * hand)


def test_two_mask_sources_are_refused() -> None:
    """Two mask models would both fill the reward mask: refused when the
    objective is built, not when it trains."""
    objective = SPARSEPO.make_objective(masks=LearnedMasks())
    with pytest.raises(CompositionError, match="two different services would fill"):
        Objective(
            prior=objective.prior,
            weighter=SPARSEPO.make_objective(
                masks=ActivationMasks()
            ).prior.base.weights,
        )


def test_mixer_init_starts_from_the_mean_of_layer_scores(setup: tuple) -> None:
    """mixer_init=c sets every mixer weight to c/L, so m_t = mean over layers of
    the per-layer ReLU scores (dropout off): checked against that formula."""
    source = LearnedMasks(mixer_init=1.0, dropout=0.0)
    objective = SPARSEPO.make_objective(masks=source)
    model = _mask_model(setup, objective)
    assert_close(model.reward.combine.weight, torch.full((1, 2), 0.5))
    _, tensors, _, reference = setup
    batch = _batch(setup, objective, model)
    with torch.no_grad():
        states = reference.model(
            input_ids=tensors.chosen.input_ids,
            attention_mask=tensors.chosen.attention_mask,
            output_hidden_states=True,
        ).hidden_states[1:]
        network = model.reward
        scores = [
            torch.relu(linear(network.norm(state[:, :-1])))[..., 0]
            for linear, state in zip(network.per_layer, states, strict=True)
        ]
        oracle = torch.stack(scores).mean(0)
    side = batch.chosen
    width = oracle.shape[1]
    expected = torch.where(side.response_mask[:, :width], oracle, 0.0)
    assert_close(side.token_weights[:, :width].detach(), expected, rtol=1e-5, atol=1e-6)
    assert float(side.token_weights.detach().sum()) > 0
