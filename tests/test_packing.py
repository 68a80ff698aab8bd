"""Packed (padding-free) forward equals the right-padded forward on a tiny Llama."""

import pytest
import torch
from tiny import tiny_llama
from torch import Tensor
from torch.testing import assert_close

from mipo.training.logps import final_hidden_states, token_stats
from mipo.training.packing import pack_sequences

VOCAB = 97

# The shared tiny Llama over this file's vocabulary, without a pad id, 64 positions.
LLAMA = {"vocab_size": VOCAB, "max_position_embeddings": 64, "pad_token_id": None}


def padded_batch() -> tuple[Tensor, Tensor, Tensor]:
    """Four right-padded sequences (two pairs' chosen and rejected) of lengths
    7, 4, 9, 2 with prompts of 3, 2, 3, 1 tokens."""
    lengths, prompts = [7, 4, 9, 2], [3, 2, 3, 1]
    ids = torch.randint(1, VOCAB, (4, 9), generator=torch.Generator().manual_seed(0))
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for row, (n, p) in enumerate(zip(lengths, prompts, strict=True)):
        attention[row, :n] = 1
        labels[row, p:n] = ids[row, p:n]
        ids[row, n:] = 0
    return ids, attention, labels


def test_pack_layout() -> None:
    ids, attention, labels = padded_batch()
    packed = pack_sequences(ids, attention, labels)
    assert packed.num_tokens == 22
    assert packed.position_ids.tolist() == [
        [*range(7), *range(4), *range(9), *range(2)]
    ]
    assert packed.input_ids[0, 7:11].tolist() == ids[1, :4].tolist()
    starts = [0, 7, 11, 20]
    assert packed.labels[0, starts].tolist() == [-100] * 4
    assert_close(packed.unpack(packed.input_ids), ids)


@pytest.mark.parametrize(
    ("attn_implementation", "dtype", "tolerance"),
    [
        ("sdpa", torch.float64, {"rtol": 1e-9, "atol": 1e-10}),
        # Llama's eager attention runs its softmax in float32 whatever the dtype,
        # so the fp64 model is only float32-accurate there.
        ("eager", torch.float64, {"rtol": 1e-6, "atol": 1e-6}),
        ("sdpa", torch.float32, {"rtol": 1e-5, "atol": 1e-5}),
    ],
)
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_packed_token_stats_equal_padded(
    attn_implementation: str,
    dtype: torch.dtype,
    tolerance: dict[str, float],
    chunk_size: int | None,
) -> None:
    """Log-probs, forward KL and their parameter gradients from one packed row
    equal those of the padded batch (reference: the same model with its weights
    perturbed)."""
    policy = tiny_llama(attn_implementation=attn_implementation, **LLAMA).to(dtype)
    reference = tiny_llama(attn_implementation=attn_implementation, **LLAMA).to(dtype)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids, attention, labels = padded_batch()
    packed = pack_sequences(ids, attention, labels)

    def stats(hidden: Tensor, reference_hidden: Tensor, target: Tensor):
        return token_stats(
            hidden,
            policy.get_output_embeddings(),
            target,
            reference_hidden=reference_hidden,
            reference_head=reference.get_output_embeddings(),
            kl_forward=True,
            chunk_size=chunk_size,
        )

    with torch.no_grad():
        ref_padded = final_hidden_states(reference, ids, attention)
        ref_packed = final_hidden_states(
            reference, packed.input_ids, None, position_ids=packed.position_ids
        )
    padded = stats(final_hidden_states(policy, ids, attention), ref_padded, labels)
    packed_stats = packed.unpack_token_stats(
        stats(
            final_hidden_states(
                policy, packed.input_ids, None, position_ids=packed.position_ids
            ),
            ref_packed,
            packed.labels,
        )
    )
    assert torch.equal(packed_stats.response_mask, padded.response_mask)
    for field in ("policy_logps", "reference_logps", "kl_forward"):
        assert_close(getattr(packed_stats, field), getattr(padded, field), **tolerance)
    params = list(policy.parameters())
    assert padded.kl_forward is not None and packed_stats.kl_forward is not None
    grads = [
        torch.autograd.grad((s.policy_logps - s.kl_forward).sum(), params)
        for s in (padded, packed_stats)
    ]
    for g_padded, g_packed in zip(*grads, strict=True):
        assert_close(g_packed, g_padded, **tolerance)


def test_unpacked_hidden_states_equal_padded_on_real_tokens() -> None:
    model = tiny_llama(attn_implementation="sdpa", **LLAMA).double()
    ids, attention, labels = padded_batch()
    packed = pack_sequences(ids, attention, labels)
    hidden = packed.unpack(
        final_hidden_states(
            model, packed.input_ids, None, position_ids=packed.position_ids
        )
    )
    expected = final_hidden_states(model, ids, attention)
    keep = attention.bool()
    assert_close(hidden[keep], expected[keep], rtol=1e-9, atol=1e-10)
    assert bool((hidden[~keep] == 0).all())


def test_left_padding_is_refused() -> None:
    ids, attention, labels = padded_batch()
    with pytest.raises(ValueError, match=r"rows \[1\] are not right-padded"):
        pack_sequences(
            ids,
            attention.flip(-1) * (torch.arange(4) == 1)[:, None]
            + attention * (torch.arange(4) != 1)[:, None],
            labels,
        )
    attention[2] = 0
    with pytest.raises(ValueError, match=r"rows \[2\] are empty"):
        pack_sequences(ids, attention, labels)
