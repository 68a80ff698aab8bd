"""Pad encoded pairs into batch tensors.

Each side (chosen, rejected) becomes a :class:`SequenceTensors` of prompt +
completion, right-padded; both sides share one length ``L`` so the trainer can run
them through one forward. ``labels`` repeat the input ids on completion tokens and
hold ``-100`` on prompt and padding; they are **unshifted** (the trainer's
log-prob code shifts them). The prompts alone are also returned **left**-padded,
ready for generation.
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mipo.data.tokenize import EncodedPair

IGNORE_INDEX = -100
"""Label of positions outside the completion (PyTorch's cross-entropy default)."""


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class SequenceTensors:
    """One side of a batch: prompt + completion, right-padded.

    Args:
        input_ids: token ids, padded with the pad id.
        attention_mask: 1 on prompt and completion tokens, 0 on padding (long).
        labels: the completion ids, -100 on prompt and padding (unshifted).
        token_weights: per-token weights aligned with ``labels``, 0 outside the
            completion (float32), or None when the data has none.
        kl_weights: per-token KL weights, same layout, or None.
    """

    input_ids: Int[Tensor, "batch length"]
    attention_mask: Int[Tensor, "batch length"]
    labels: Int[Tensor, "batch length"]
    token_weights: Float[Tensor, "batch length"] | None = None
    kl_weights: Float[Tensor, "batch length"] | None = None

    def to(self, device: torch.device | str) -> "SequenceTensors":
        """The same tensors on ``device``."""
        return dataclasses.replace(
            self,
            **{
                field.name: None if value is None else value.to(device)
                for field in dataclasses.fields(self)
                for value in [getattr(self, field.name)]
            },
        )


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class PairTensors:
    """A padded batch of preference pairs.

    Args:
        chosen: the chosen side.
        rejected: the rejected side (same length as ``chosen``).
        prompt_input_ids: the prompts alone, **left**-padded (for generation).
        prompt_attention_mask: 1 on prompt tokens, 0 on the left padding.
        example_weights: per-pair weights from the data (float32), or None.
        sources: where each pair came from, for error messages.
    """

    chosen: SequenceTensors
    rejected: SequenceTensors
    prompt_input_ids: Int[Tensor, "batch prompt"]
    prompt_attention_mask: Int[Tensor, "batch prompt"]
    example_weights: Float[Tensor, " batch"] | None = None
    sources: tuple[str, ...] = ()

    def to(self, device: torch.device | str) -> "PairTensors":
        """The same tensors on ``device``."""
        return dataclasses.replace(
            self,
            chosen=self.chosen.to(device),
            rejected=self.rejected.to(device),
            prompt_input_ids=self.prompt_input_ids.to(device),
            prompt_attention_mask=self.prompt_attention_mask.to(device),
            example_weights=None
            if self.example_weights is None
            else self.example_weights.to(device),
        )


def collate(pairs: Sequence[EncodedPair], *, pad_token_id: int) -> PairTensors:
    """Stack encoded pairs into :class:`PairTensors` (layout in the module docstring).

    Raises:
        ValueError: on an empty batch, or when some pairs carry a weight column and
            others do not (the message names the pairs); mixing would need a fill
            value the data never stated.
    """
    if not pairs:
        raise ValueError("collate: empty batch")
    length = max(
        len(pair.prompt_ids) + len(ids)
        for pair in pairs
        for ids in (pair.chosen_ids, pair.rejected_ids)
    )
    prompt_length = max(len(pair.prompt_ids) for pair in pairs)
    batch = len(pairs)
    prompt_ids = torch.full((batch, prompt_length), pad_token_id, dtype=torch.long)
    prompt_mask = torch.zeros((batch, prompt_length), dtype=torch.long)
    for row, pair in enumerate(pairs):
        start = prompt_length - len(pair.prompt_ids)
        prompt_ids[row, start:] = torch.tensor(pair.prompt_ids, dtype=torch.long)
        prompt_mask[row, start:] = 1
    example = _column(pairs, "example_weight")
    return PairTensors(
        chosen=_side(pairs, "chosen", length, pad_token_id),
        rejected=_side(pairs, "rejected", length, pad_token_id),
        prompt_input_ids=prompt_ids,
        prompt_attention_mask=prompt_mask,
        example_weights=None
        if example is None
        else torch.tensor(example, dtype=torch.float32),
        sources=tuple(pair.source for pair in pairs),
    )


def _column(pairs: Sequence[EncodedPair], name: str) -> list | None:
    values = [getattr(pair, name) for pair in pairs]
    missing = [
        pair.source for pair, value in zip(pairs, values, strict=True) if value is None
    ]
    if len(missing) == len(pairs):
        return None
    if missing:
        raise ValueError(
            f"collate: '{name}' is set for some pairs of the batch but missing for "
            f"{', '.join(missing)}; give it for every pair or for none"
        )
    return values


def _side(
    pairs: Sequence[EncodedPair], side: str, length: int, pad_token_id: int
) -> SequenceTensors:
    batch = len(pairs)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    columns = {
        kind: _column(pairs, f"{side}_{kind}")
        for kind in ("token_weights", "kl_weights")
    }
    weights = {
        kind: None
        if values is None
        else torch.zeros((batch, length), dtype=torch.float32)
        for kind, values in columns.items()
    }
    for row, pair in enumerate(pairs):
        completion = getattr(pair, f"{side}_ids")
        start, end = len(pair.prompt_ids), len(pair.prompt_ids) + len(completion)
        input_ids[row, :start] = torch.tensor(pair.prompt_ids, dtype=torch.long)
        input_ids[row, start:end] = torch.tensor(completion, dtype=torch.long)
        attention_mask[row, :end] = 1
        labels[row, start:end] = input_ids[row, start:end]
        for kind, values in columns.items():
            target = weights[kind]
            if values is not None and target is not None:
                target[row, start:end] = torch.tensor(values[row], dtype=torch.float32)
    return SequenceTensors(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        token_weights=weights["token_weights"],
        kl_weights=weights["kl_weights"],
    )


__all__ = ["IGNORE_INDEX", "PairTensors", "SequenceTensors", "collate"]
