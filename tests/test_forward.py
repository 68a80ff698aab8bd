"""The batch builder supplies exactly the needed fields, with the values of an
independent full-logits computation (the Hugging Face forward)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from tiny import tiny_llama

from mipo.data.builtin import arithmetic_records
from mipo.data.collate import collate
from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
from mipo.data.tokenize import encode_record
from mipo.needs import Need
from mipo.training.batching import BatchBuilder
from mipo.training.models import FrozenCopyReference
from mipo.training.services import Models, ReferenceCacheService

# The shared tiny Llama with LlamaConfig's default token ids (no pad), 256 positions.
LLAMA = {"max_position_embeddings": 256, "pad_token_id": None}


@pytest.fixture(scope="module")
def setup() -> tuple:
    tokenizer = tiny_chat_tokenizer()
    records = arithmetic_records(n=3, seed=1)
    pairs = []
    for i, record in enumerate(records):
        pair = encode_record(record, tokenizer, max_length=128, max_prompt_length=96)
        # give each pair token weights so the weight columns can be checked
        weights = [0.1 * (i + 1) + 0.01 * t for t in range(len(pair.chosen_ids))]
        rejected = [0.5 + 0.01 * t for t in range(len(pair.rejected_ids))]
        pairs.append(
            type(pair)(
                prompt_ids=pair.prompt_ids,
                chosen_ids=pair.chosen_ids,
                rejected_ids=pair.rejected_ids,
                chosen_token_weights=weights,
                rejected_token_weights=rejected,
                source=pair.source,
            )
        )
    tensors = collate(pairs, pad_token_id=tokenizer.pad_token_id)
    policy = tiny_llama(0, **LLAMA)
    # a reference that differs from the policy, so KLs are not zero
    reference_model = tiny_llama(1, **LLAMA)
    for p in reference_model.parameters():
        p.requires_grad_(False)
    return tokenizer, tensors, policy, reference_model


def build_pair_batch(
    needs,
    policy,
    reference,
    tensors,
    *,
    pad_token_id,
    chunk_size=None,
    services=(),
    indices=None,
):
    """One batch through the trainer's single entry point."""
    from mipo.training.loaders import IndexedBatch

    builder = BatchBuilder(needs=needs, services=services, chunk_size=chunk_size)
    models = Models(policy=policy, reference=reference, pad_token_id=pad_token_id)
    return builder(models, IndexedBatch(indices=indices, tensors=tensors))


def oracle(model: torch.nn.Module, side) -> tuple[torch.Tensor, torch.Tensor]:
    """Full log-softmax over the vocabulary from the HF forward, shifted."""
    logits = model(
        input_ids=side.input_ids, attention_mask=side.attention_mask
    ).logits.double()
    return F.log_softmax(logits[:, :-1], dim=-1), side.labels[:, 1:]


def test_reference_logps_only(setup: tuple) -> None:
    tokenizer, tensors, policy, reference_model = setup
    batch = build_pair_batch(
        frozenset({Need.REFERENCE_LOGPS}),
        policy,
        FrozenCopyReference(reference_model),
        tensors,
        pad_token_id=tokenizer.pad_token_id,
    )
    for side, data in (
        (batch.chosen, tensors.chosen),
        (batch.rejected, tensors.rejected),
    ):
        assert side.kl_forward is None and side.kl_reverse is None
        assert side.hidden_states is None and side.token_weights is None
        assert side.attribution_scores is None and side.sequence_mask is None
        mask = data.labels[:, 1:] != -100
        assert torch.equal(side.response_mask, mask)
        for values, model in (
            (side.policy_logps, policy),
            (side.reference_logps, reference_model),
        ):
            full, labels = oracle(model, data)
            picked = full.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            expected = torch.where(mask, picked, torch.zeros_like(picked))
            torch.testing.assert_close(values.double(), expected, rtol=1e-5, atol=1e-5)
    assert batch.chosen.policy_logps.requires_grad
    assert not batch.chosen.reference_logps.requires_grad
    assert batch.anchor is None and batch.example_weights is None


def test_kls_hidden_states_and_weights(setup: tuple) -> None:
    tokenizer, tensors, policy, reference_model = setup
    needs = frozenset(
        {Need.KL_FORWARD, Need.KL_REVERSE, Need.HIDDEN_STATES, Need.TOKEN_WEIGHTS}
    )
    batch = build_pair_batch(
        needs,
        policy,
        FrozenCopyReference(reference_model),
        tensors,
        pad_token_id=tokenizer.pad_token_id,
        chunk_size=4,
    )
    side, data = batch.chosen, tensors.chosen
    assert side.reference_logps is None  # not asked for
    mask = side.response_mask
    log_p, _ = oracle(policy, data)
    log_r, _ = oracle(reference_model, data)
    forward = (log_r.exp() * (log_r - log_p)).sum(-1)
    reverse = (log_p.exp() * (log_p - log_r)).sum(-1)
    zero = torch.zeros_like(forward)
    torch.testing.assert_close(
        side.kl_forward.double(), torch.where(mask, forward, zero), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        side.kl_reverse.double(), torch.where(mask, reverse, zero), rtol=1e-4, atol=1e-5
    )
    assert bool((side.kl_forward[mask] > 0).all())
    hidden = policy(
        input_ids=data.input_ids,
        attention_mask=data.attention_mask,
        output_hidden_states=True,
    ).hidden_states[-1]
    torch.testing.assert_close(side.hidden_states, hidden[:, :-1], rtol=1e-5, atol=1e-5)
    assert not side.hidden_states.requires_grad
    torch.testing.assert_close(side.token_weights, data.token_weights[:, 1:].float())
    torch.testing.assert_close(
        batch.rejected.token_weights, tensors.rejected.token_weights[:, 1:].float()
    )


def test_chunked_path_equals_eager(setup: tuple) -> None:
    tokenizer, tensors, policy, reference_model = setup
    results = []
    for chunk_size in (None, 3):
        policy.zero_grad()
        batch = build_pair_batch(
            frozenset({Need.REFERENCE_LOGPS, Need.KL_FORWARD}),
            policy,
            FrozenCopyReference(reference_model),
            tensors,
            pad_token_id=tokenizer.pad_token_id,
            chunk_size=chunk_size,
        )
        total = (batch.chosen.policy_logps - batch.rejected.kl_forward).sum()
        total.backward()
        grad = policy.get_output_embeddings().weight.grad.clone()
        results.append((batch.chosen.policy_logps.detach(), grad))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-5)
    policy.zero_grad()


def test_precomputed_reference_is_used_as_given(setup: tuple) -> None:
    tokenizer, tensors, policy, reference_model = setup
    copy_batch = build_pair_batch(
        frozenset({Need.REFERENCE_LOGPS}),
        policy,
        FrozenCopyReference(copy.deepcopy(reference_model)),
        tensors,
        pad_token_id=tokenizer.pad_token_id,
    )
    cached = (copy_batch.chosen.reference_logps, copy_batch.rejected.reference_logps)
    # the cache holds each pair's response-token log-probs, by global index
    cache = {
        10 + row: tuple(
            values[row][side.response_mask[row]].detach()
            for values, side in zip(
                cached, (copy_batch.chosen, copy_batch.rejected), strict=True
            )
        )
        for row in range(cached[0].shape[0])
    }
    batch = build_pair_batch(
        frozenset({Need.REFERENCE_LOGPS}),
        policy,
        None,
        tensors,
        pad_token_id=tokenizer.pad_token_id,
        services=(ReferenceCacheService.from_cache(cache),),
        indices=torch.arange(10, 10 + cached[0].shape[0]),
    )
    torch.testing.assert_close(batch.chosen.reference_logps, cached[0])
    torch.testing.assert_close(batch.rejected.reference_logps, cached[1])


def test_missing_inputs_fail_clearly(setup: tuple) -> None:
    tokenizer, tensors, policy, _ = setup
    with pytest.raises(ValueError, match="neither a reference model nor precomputed"):
        build_pair_batch(
            frozenset({Need.REFERENCE_LOGPS}),
            policy,
            None,
            tensors,
            pad_token_id=tokenizer.pad_token_id,
        )
    no_weights = type(tensors)(
        chosen=type(tensors.chosen)(
            input_ids=tensors.chosen.input_ids,
            attention_mask=tensors.chosen.attention_mask,
            labels=tensors.chosen.labels,
        ),
        rejected=tensors.rejected,
        prompt_input_ids=tensors.prompt_input_ids,
        prompt_attention_mask=tensors.prompt_attention_mask,
    )
    with pytest.raises(ValueError, match="needs token_weights, but the data set"):
        build_pair_batch(
            frozenset({Need.TOKEN_WEIGHTS}),
            policy,
            None,
            no_weights,
            pad_token_id=tokenizer.pad_token_id,
        )
