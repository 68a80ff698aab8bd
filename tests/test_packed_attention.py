"""Padding-free packing never builds a dense attention mask: an SDPA model runs
SDPA once per packed sequence (no mask, causal), eager attention is refused, and
the attention implementation is a setting with a per-device default."""

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from test_padding_free import NEEDS, _tensors
from tiny import tiny_llama
from torch import Tensor
from torch.testing import assert_close

from mipo.training import attention
from mipo.training.attention import (
    PACKED_SDPA,
    prepare_packed_attention,
    resolve_attention,
    segment_lengths,
)
from mipo.training.batching import BatchBuilder
from mipo.training.config import TrainConfig
from mipo.training.logps import final_hidden_states
from mipo.training.models import FrozenCopyReference
from mipo.training.packing import pack_sequences
from mipo.training.services import Models

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@contextlib.contextmanager
def sdpa_calls() -> Iterator[list[tuple[int, tuple[int, ...] | None]]]:
    """Every ``scaled_dot_product_attention`` call as (query length, mask shape)."""
    calls: list[tuple[int, tuple[int, ...] | None]] = []
    original = torch.nn.functional.scaled_dot_product_attention

    def spy(query: Tensor, key: Tensor, value: Tensor, *args: Any, **kwargs: Any):
        mask = kwargs.get("attn_mask", args[0] if args else None)
        calls.append((query.shape[-2], None if mask is None else tuple(mask.shape)))
        return original(query, key, value, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        yield calls
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


def test_plain_sdpa_would_build_a_dense_mask_over_the_pack() -> None:
    """The control: transformers' own SDPA path gives a packed row an N x N mask
    (what the batch builder avoids)."""
    model = tiny_llama()
    ids, mask = torch.randint(3, 100, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    mask[1, 5:] = 0
    packed = pack_sequences(ids, mask, ids.clone())
    with torch.no_grad(), sdpa_calls() as calls:
        final_hidden_states(
            model, packed.input_ids, None, position_ids=packed.position_ids
        )
    n = packed.num_tokens
    assert calls and all(shape == (1, 1, n, n) for _, shape in calls)


def test_packed_builds_never_pass_a_mask_and_equal_padded() -> None:
    """Through the batch builder, every attention call of the packed policy and
    reference forwards is one sequence long with no mask, and the batch equals
    the padded build."""
    policy = tiny_llama(seed=1)
    reference = FrozenCopyReference(copy.deepcopy(policy))
    tensors = _tensors()
    models = Models(policy=policy, reference=reference, pad_token_id=2)
    lengths = torch.cat(
        [tensors.chosen.attention_mask.sum(-1), tensors.rejected.attention_mask.sum(-1)]
    ).tolist()
    padded = BatchBuilder(needs=NEEDS, chunk_size=16)(models, tensors)
    with sdpa_calls() as calls:
        packed = BatchBuilder(needs=NEEDS, chunk_size=16, padding_free=True)(
            models, tensors
        )
    layers = policy.config.num_hidden_layers
    assert [shape for _, shape in calls] == [None] * (2 * layers * len(lengths))
    assert sorted(n for n, _ in calls) == sorted(lengths * 2 * layers)
    assert policy.config._attn_implementation == PACKED_SDPA
    assert reference.model.config._attn_implementation == PACKED_SDPA
    for role in ("chosen", "rejected"):
        a, b = getattr(padded, role), getattr(packed, role)
        for field in ("policy_logps", "reference_logps", "kl_forward"):
            assert_close(getattr(b, field), getattr(a, field), rtol=1e-5, atol=1e-6)


def test_packed_sdpa_is_sdpa_on_every_other_input() -> None:
    """A padded batch and greedy generation give bit-identical results after
    the switch (the switch is permanent, so it must not change them)."""
    sdpa, switched = tiny_llama(), tiny_llama()
    prepare_packed_attention(switched)
    ids = torch.randint(3, 100, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.no_grad():
        assert torch.equal(
            final_hidden_states(switched, ids, mask),
            final_hidden_states(sdpa, ids, mask),
        )
        left = mask.flip(-1)
        kwargs = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 2}
        assert torch.equal(
            switched.generate(input_ids=ids, attention_mask=left, **kwargs),
            sdpa.generate(input_ids=ids, attention_mask=left, **kwargs),
        )


def test_packed_gradients_survive_gradient_checkpointing() -> None:
    """The recompute of a checkpointed layer (in the backward pass, outside the
    batch build) still attends per sequence: gradients equal the padded ones."""
    grads = []
    for padding_free in (False, True):
        policy = tiny_llama(seed=2)
        policy.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        policy.train()
        models = Models(policy=policy, pad_token_id=2)
        builder = BatchBuilder(
            needs=frozenset(), chunk_size=16, padding_free=padding_free
        )
        batch = builder(models, _tensors())
        (batch.chosen.policy_logps.sum() - batch.rejected.policy_logps.sum()).backward()
        grads.append([p.grad.clone() for p in policy.parameters()])
    for got, want in zip(*grads, strict=True):
        assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_segment_lengths_from_positions_and_from_packing() -> None:
    ids = torch.randint(3, 100, (4, 7))
    mask = torch.zeros_like(ids)
    for row, n in enumerate([7, 2, 5, 1]):
        mask[row, :n] = 1
    packed = pack_sequences(ids, mask, ids.clone())
    assert packed.lengths == (7, 2, 5, 1)
    assert segment_lengths(packed.position_ids) == (7, 2, 5, 1)  # remembered
    fresh = packed.position_ids.clone()  # not remembered: read from the restarts
    assert segment_lengths(fresh) == (7, 2, 5, 1)


def test_eager_attention_is_refused_for_padding_free() -> None:
    with pytest.raises(ValueError, match="'eager' attention implementation would"):
        TrainConfig(padding_free=True, attn_implementation="eager")
    TrainConfig(padding_free=False, attn_implementation="eager")
    model = tiny_llama(attn_implementation="eager")
    builder = BatchBuilder(needs=frozenset(), padding_free=True)
    with pytest.raises(ValueError, match="dense \\[N, N\\] mask"):
        builder(Models(policy=model, pad_token_id=2), _tensors())


def test_sliding_window_models_are_refused_with_sdpa_packing() -> None:
    model = tiny_llama()
    model.config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(ValueError, match="local attention layers"):
        prepare_packed_attention(model)


def test_attention_implementation_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_attention("auto", device=CPU, precision="bf16") == "sdpa"
    assert resolve_attention("eager", device=CPU) == "eager"
    with pytest.raises(ValueError, match="flash_attention_2.*CUDA device"):
        resolve_attention("flash_attention_2", device=CPU)
    with pytest.raises(ValueError, match="no flex-attention backward on CPU"):
        resolve_attention("flex_attention", device=CPU)
    assert resolve_attention("flex_attention", device=CUDA) == "flex_attention"
    with pytest.raises(ValueError, match="expected one of auto, sdpa"):
        resolve_attention("paged", device=CPU)
    installed = type("Spec", (), {})()
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda _name: installed)
    assert (
        resolve_attention("auto", device=CUDA, precision="bf16") == "flash_attention_2"
    )
    assert resolve_attention("auto", device=CUDA, precision="fp32") == "sdpa"
    monkeypatch.setattr(attention.importlib.util, "find_spec", lambda _name: None)
    assert resolve_attention("auto", device=CUDA, precision="bf16") == "sdpa"
