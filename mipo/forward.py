r"""From token tensors to a :class:`~mipo.batch.PairBatch` holding exactly what the
objective needs.

One policy forward covers chosen, rejected (and the generated anchor, when
``Need.ANCHOR`` is asked for) stacked along the batch axis; one reference
forward, without gradient, runs only when a reference quantity is needed. The
per-token quantities come from :func:`mipo.logps.token_stats` on the shifted
axis: position $t$ holds the label $y_t$ predicted from the hidden state at
unshifted position $t$, so every unshifted data column ``c`` maps to ``c[:, 1:]``.

Every decision below reads ``Need`` membership; nothing asks which method runs.
"""

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mipo.batch import PairBatch, Side
from mipo.logps import IGNORE_INDEX, TokenStats, final_hidden_states, token_stats
from mipo.model import REFERENCE_NEEDS, AbstractReference
from mipo.needs import Need
from mipo.packing import pack_sequences

ATTRIBUTION_NEEDS = frozenset({Need.ATTRIBUTION_SCORES, Need.SEQUENCE_MASK})
MASK_NEEDS = frozenset({Need.REFERENCE_ACTIVATIONS, Need.REFERENCE_HIDDEN_LAYERS})
"""Needs served by a mask model hooked into the reference forward."""


class CausalLMBody(nn.Module):
    """A causal LM as the module accelerate wraps (DDP, FSDP, DeepSpeed): its
    ``forward`` runs the decoder body *and* the head through
    :func:`~mipo.logps.token_stats`, so sharded parameters (the tied head
    included) are gathered for the whole policy computation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        labels: Tensor,
        reference_hidden: Tensor | None = None,
        reference_head: nn.Module | None = None,
        kl_forward: bool = False,
        kl_reverse: bool = False,
        chunk_size: int | None = None,
        position_ids: Tensor | None = None,
    ) -> tuple[Tensor, TokenStats]:
        hidden = final_hidden_states(
            self.model, input_ids, attention_mask, position_ids=position_ids
        )
        stats = token_stats(
            hidden,
            self.model.get_output_embeddings(),
            labels,
            reference_hidden=reference_hidden,
            reference_head=reference_head,
            kl_forward=kl_forward,
            kl_reverse=kl_reverse,
            chunk_size=chunk_size,
        )
        return hidden, stats


def stack_sequences(
    sequences: Sequence[Any], *, pad_token_id: int
) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Right-pad several ``SequenceTensors`` to one length and stack them along
    the batch axis: ``(input_ids, attention_mask, labels, rows_per_part)``."""
    length = max(s.input_ids.shape[1] for s in sequences)

    def pad(tensor: Tensor, value: int) -> Tensor:
        extra = length - tensor.shape[1]
        if extra == 0:
            return tensor
        filler = tensor.new_full((tensor.shape[0], extra), value)
        return torch.cat([tensor, filler], dim=1)

    ids = torch.cat([pad(s.input_ids, pad_token_id) for s in sequences])
    mask = torch.cat([pad(s.attention_mask, 0) for s in sequences])
    labels = torch.cat([pad(s.labels, IGNORE_INDEX) for s in sequences])
    return ids, mask, labels, [s.input_ids.shape[0] for s in sequences]


def _shifted_column(column: Tensor | None, length: int, name: str) -> Tensor:
    if column is None:
        raise ValueError(
            f"the objective needs {name}, but the data set has no such column; add "
            f"chosen_{name}/rejected_{name} to the data (see mipo.data.records)"
        )
    shifted = column[:, 1:].float()
    extra = length - shifted.shape[1]
    if extra > 0:
        shifted = torch.cat([shifted, shifted.new_zeros(shifted.shape[0], extra)], 1)
    return shifted


def build_pair_batch(
    needs: frozenset[Need],
    policy: nn.Module,
    reference: AbstractReference | None,
    tensors: Any,
    *,
    policy_body: nn.Module | None = None,
    chunk_size: int | None = None,
    precomputed_reference: tuple[Tensor, Tensor] | None = None,
    anchor_sampling: Any = None,
    pad_token_id: int,
    eos_token_id: int | None = None,
    mask_model: Any = None,
    prior_model: Any = None,
    padding_free: bool = False,
) -> PairBatch:
    """The :class:`PairBatch` of one micro-batch with the fields in ``needs``.

    Args:
        needs: ``objective.needs``.
        policy: the (unwrapped) causal LM; its output embedding is the head, and
            attribution and anchor generation read it.
        reference: the reference model, or ``None`` when none is needed or its
            log-probs are precomputed.
        tensors: a ``mipo.data.collate.PairTensors`` on the policy's device.
        policy_body: the module that runs the policy forward and head (a
            :class:`CausalLMBody`, possibly wrapped by accelerate); built from
            ``policy`` when omitted.
        chunk_size: ``None`` for the eager log-prob path, else the chunk size.
        precomputed_reference: cached ``(chosen, rejected)`` reference token
            log-probs on the shifted axis, used when ``reference`` is ``None``.
        anchor_sampling: the ``AnchorSampling`` of the term that needs the anchor.
        pad_token_id: padding id for stacking sequences of different lengths.
        eos_token_id: stops anchor generation.
        mask_model: the :class:`~mipo.masks.AbstractMaskModel` that serves
            ``Need.REFERENCE_ACTIVATIONS`` / ``Need.REFERENCE_HIDDEN_LAYERS``: it
            hooks the reference forward, and its masks fill ``token_weights``
            (reward mask) and ``kl_weights`` (KL mask) instead of data columns.
        prior_model: the :class:`~mipo.learned_prior.LogitBiasPrior` that serves
            ``Need.LEARNED_PRIOR``: its detached log-probs fill ``prior_logps``.
        padding_free: run the policy and reference forwards on one packed row
            (:mod:`mipo.packing`: no compute on padding; attention kept within each
            sequence) and unpack the per-token results; equal to the padded path.

    Returns:
        A validated :class:`PairBatch`.
    """
    body = CausalLMBody(policy) if policy_body is None else policy_body
    parts = [tensors.chosen, tensors.rejected]
    if Need.ANCHOR in needs:
        if anchor_sampling is None:
            raise ValueError("Need.ANCHOR: pass the term's anchor_sampling")
        from mipo.anchor import generate_anchor

        parts.append(
            generate_anchor(
                policy,
                tensors.prompt_input_ids,
                tensors.prompt_attention_mask,
                sampling=anchor_sampling,
                pad_token_id=pad_token_id,
                eos_token_id=eos_token_id,
            )
        )
    ids, mask, labels, rows = stack_sequences(parts, pad_token_id=pad_token_id)
    scores = None
    if needs & ATTRIBUTION_NEEDS:
        from mipo.attribution import attribution_scores

        # Chosen and rejected rows only: the anchor's weights are never read.
        pairs = rows[0] + rows[1]
        scores = attribution_scores(policy, ids[:pairs], mask[:pairs])
    needs_reference = bool(needs & REFERENCE_NEEDS)
    reference_hidden = reference_head = None
    if needs & MASK_NEEDS and mask_model is None:
        names = ", ".join(sorted(n.value for n in needs & MASK_NEEDS))
        raise ValueError(f"the objective needs {names}: pass the trainer's mask_model")
    if Need.LEARNED_PRIOR in needs and prior_model is None:
        raise ValueError("the objective needs learned_prior: pass the prior_model")
    if padding_free and needs & MASK_NEEDS:
        raise ValueError(
            "padding_free: not supported with mask models (hooked forwards)"
        )
    run_ids, run_mask, run_labels, run_positions = ids, mask, labels, None
    packed = None
    if padding_free:
        packed = pack_sequences(ids, mask, labels)
        run_ids, run_mask = packed.input_ids, None
        run_labels, run_positions = packed.labels, packed.position_ids
    captured: dict[str, list[Tensor]] = {}
    if needs_reference and reference is not None:
        hooks = contextlib.nullcontext(captured)
        if mask_model is not None:
            reference_model = getattr(reference, "model", None)
            if reference_model is None:
                raise ValueError(
                    f"{type(reference).__name__}: the mask model needs the reference "
                    f"model's modules (a .model attribute) to hook"
                )
            hooks = mask_model.capturing(reference_model)
        with hooks as captured:
            reference_hidden = reference.hidden_states(
                run_ids, run_mask, position_ids=run_positions
            )
        reference_head = reference.head
    elif needs & (REFERENCE_NEEDS - {Need.REFERENCE_LOGPS}):
        raise ValueError("the objective needs reference KLs but no reference model")
    elif Need.REFERENCE_LOGPS in needs and precomputed_reference is None:
        raise ValueError(
            "the objective needs reference_logps but neither a reference model nor "
            "precomputed reference log-probs were given"
        )
    hidden, stats = body(
        run_ids,
        run_mask,
        run_labels,
        reference_hidden=reference_hidden,
        reference_head=reference_head,
        kl_forward=Need.KL_FORWARD in needs,
        kl_reverse=Need.KL_REVERSE in needs,
        chunk_size=chunk_size,
        position_ids=run_positions,
    )
    if packed is not None:
        stats = packed.unpack_token_stats(stats)
        hidden = packed.unpack(hidden)
        if reference_hidden is not None:
            reference_hidden = packed.unpack(reference_hidden)
    length = labels.shape[1] - 1
    sequence_mask = mask[:, 1:].bool()
    prior_logps = None
    if prior_model is not None and Need.PRIOR_LOGPS in needs:
        prior_logps = prior_model.token_logps(reference_hidden, reference_head, labels)
    masks = None
    if mask_model is not None:
        masks = mask_model.masks(
            captured, reference_hidden, reference_head, stats.response_mask
        )
    sides: list[Side] = []
    start = 0
    for index, count in enumerate(rows):
        part = slice(start, start + count)
        start += count
        fields: dict[str, Tensor | None] = {
            "policy_logps": stats.policy_logps[part],
            "response_mask": stats.response_mask[part],
        }
        if Need.REFERENCE_LOGPS in needs:
            if stats.reference_logps is not None:
                fields["reference_logps"] = stats.reference_logps[part]
            elif index < 2 and precomputed_reference is not None:
                cached = precomputed_reference[index].to(stats.policy_logps.dtype)
                fields["reference_logps"] = _pad_to(cached, length)
        if prior_logps is not None:
            fields["prior_logps"] = prior_logps[part].to(stats.policy_logps.dtype)
        if Need.KL_FORWARD in needs:
            fields["kl_forward"] = stats.kl_forward[part]
        if Need.KL_REVERSE in needs:
            fields["kl_reverse"] = stats.kl_reverse[part]
        if Need.HIDDEN_STATES in needs:
            fields["hidden_states"] = hidden[part, :-1].detach()
        if index < 2 and masks is not None:
            if Need.TOKEN_WEIGHTS in needs:
                fields["token_weights"] = masks[0][part]
            if Need.KL_WEIGHTS in needs:
                fields["kl_weights"] = masks[1][part]
        elif index < 2:
            data = parts[index]
            if Need.TOKEN_WEIGHTS in needs:
                fields["token_weights"] = _shifted_column(
                    data.token_weights, length, "token_weights"
                )
            if Need.KL_WEIGHTS in needs:
                fields["kl_weights"] = _shifted_column(
                    data.kl_weights, length, "kl_weights"
                )
        if scores is not None and index < 2:
            if Need.ATTRIBUTION_SCORES in needs:
                fields["attribution_scores"] = scores[part, 1:].float()
            if Need.SEQUENCE_MASK in needs:
                fields["sequence_mask"] = sequence_mask[part]
                fields["first_token_attribution"] = scores[part, 0].float()
        sides.append(Side(**fields))
    weights = tensors.example_weights
    return PairBatch(
        chosen=sides[0],
        rejected=sides[1],
        anchor=sides[2] if len(sides) > 2 else None,
        example_weights=None if weights is None else weights.float(),
    )


def _pad_to(values: Tensor, length: int) -> Tensor:
    extra = length - values.shape[1]
    if extra <= 0:
        return values[:, :length]
    return torch.cat([values, values.new_zeros(values.shape[0], extra)], dim=1)


def count_tokens(tensors: Any) -> int:
    """Non-padding tokens of chosen plus rejected (for tokens/s)."""
    return int(
        tensors.chosen.attention_mask.sum() + tensors.rejected.attention_mask.sum()
    )


__all__ = ["CausalLMBody", "build_pair_batch", "count_tokens", "stack_sequences"]
