"""collate: padding layout, labels, weights, left-padded prompts."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from mipo.data import IGNORE_INDEX, EncodedPair, collate

PAD = 0

ids = st.lists(st.integers(1, 50), min_size=1, max_size=6)


@st.composite
def encoded_pairs(draw: st.DrawFn) -> list[EncodedPair]:
    """1-4 pairs with random lengths; weights on every pair or none."""
    n = draw(st.integers(1, 4))
    with_weights = draw(st.booleans())
    pairs = []
    for i in range(n):
        chosen, rejected = draw(ids), draw(ids)
        weight = st.floats(-2.0, 2.0, width=32)
        pairs.append(
            EncodedPair(
                prompt_ids=draw(ids),
                chosen_ids=chosen,
                rejected_ids=rejected,
                chosen_token_weights=[draw(weight) for _ in chosen]
                if with_weights
                else None,
                rejected_kl_weights=[draw(weight) for _ in rejected]
                if with_weights
                else None,
                example_weight=draw(st.floats(0.0, 5.0, width=32))
                if with_weights
                else None,
                source=f"f:{i}",
            )
        )
    return pairs


@given(pairs=encoded_pairs())
def test_every_pair_can_be_read_back_from_the_tensors(pairs: list[EncodedPair]) -> None:
    batch = collate(pairs, pad_token_id=PAD)
    length = max(
        len(p.prompt_ids) + len(c)
        for p in pairs
        for c in (p.chosen_ids, p.rejected_ids)
    )
    weighted = pairs[0].chosen_token_weights is not None
    for side in ("chosen", "rejected"):
        tensors = getattr(batch, side)
        assert tensors.input_ids.shape == (len(pairs), length)
        assert tensors.input_ids.dtype == tensors.labels.dtype == torch.long
        assert tensors.attention_mask.dtype == torch.long
        for row, pair in enumerate(pairs):
            completion = getattr(pair, f"{side}_ids")
            start, end = len(pair.prompt_ids), len(pair.prompt_ids) + len(completion)
            expected_ids = [*pair.prompt_ids, *completion] + [PAD] * (length - end)
            assert tensors.input_ids[row].tolist() == expected_ids
            assert tensors.attention_mask[row].tolist() == [1] * end + [0] * (
                length - end
            )
            expected_labels = (
                [IGNORE_INDEX] * start + completion + [IGNORE_INDEX] * (length - end)
            )
            assert tensors.labels[row].tolist() == expected_labels
        token_weights = (
            tensors.token_weights if side == "chosen" else tensors.kl_weights
        )
        absent = tensors.kl_weights if side == "chosen" else tensors.token_weights
        assert absent is None
        if not weighted:
            assert token_weights is None
            continue
        assert token_weights is not None and token_weights.dtype == torch.float32
        for row, pair in enumerate(pairs):
            values = (
                pair.chosen_token_weights
                if side == "chosen"
                else pair.rejected_kl_weights
            )
            assert values is not None
            start = len(pair.prompt_ids)
            expected = torch.zeros(length)
            expected[start : start + len(values)] = torch.tensor(values)
            assert_close(token_weights[row], expected)
    prompt_length = max(len(p.prompt_ids) for p in pairs)
    for row, pair in enumerate(pairs):
        pad = prompt_length - len(pair.prompt_ids)
        assert batch.prompt_input_ids[row].tolist() == [PAD] * pad + pair.prompt_ids
        assert batch.prompt_attention_mask[row].tolist() == [0] * pad + [1] * len(
            pair.prompt_ids
        )
    if weighted:
        assert batch.example_weights is not None
        assert_close(
            batch.example_weights,
            torch.tensor([p.example_weight for p in pairs], dtype=torch.float32),
        )
    else:
        assert batch.example_weights is None
    assert batch.sources == tuple(p.source for p in pairs)


def test_to_moves_every_tensor() -> None:
    pair = EncodedPair(
        prompt_ids=[1],
        chosen_ids=[2],
        rejected_ids=[3],
        chosen_token_weights=[1.0],
        rejected_token_weights=[0.5],
        example_weight=1.0,
    )
    batch = collate([pair], pad_token_id=PAD).to(torch.device("cpu"))
    assert batch.chosen.token_weights is not None
    assert batch.chosen.token_weights.device.type == "cpu"
    assert batch.rejected.labels.tolist() == [[IGNORE_INDEX, 3]]


def test_mixed_weight_presence_is_an_error_naming_the_pairs() -> None:
    with_weights = EncodedPair(
        prompt_ids=[1],
        chosen_ids=[2],
        rejected_ids=[3],
        chosen_token_weights=[1.0],
        source="a:1",
    )
    without = EncodedPair(
        prompt_ids=[1], chosen_ids=[2], rejected_ids=[3], source="a:2"
    )
    with pytest.raises(ValueError, match="chosen_token_weights.*missing for a:2"):
        collate([with_weights, without], pad_token_id=PAD)


def test_empty_batch_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty batch"):
        collate([], pad_token_id=PAD)
