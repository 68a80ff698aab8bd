r"""From token tensors to a :class:`~mipo.batch.PairBatch` holding exactly what the
objective needs: the one entry point used by training, evaluation and every tool.

A :class:`BatchBuilder` is made once per run from the needs and the services of
the objective; calling it on a micro-batch runs, in order:

1. the services' generated sides (TI-DPO's anchor);
2. the services' values computed from the chosen and rejected rows, stacked
   along the batch axis (attribution scores);
3. one reference forward without gradient of those rows, when a need reads the
   reference (the table of needs, :data:`mipo.needs.NEEDS`), with every
   service's hooks on it (mask models);
4. one policy forward of those rows, with every service's hooks on it (the
   attribution reads its graph);
5. the services' values computed from the forwards (masks, a fitted prior's
   log-probs, cached reference log-probs, attribution scores);
6. the generated sides stacked on their own, and their own reference and
   policy forwards (no service hooks), so chosen and rejected are never padded
   to a generated side's length; a generated side gets what these forwards
   compute (policy and reference log-probs, KLs, hidden states), no service
   values;
7. the sides: each needed field from the service that provides it, else from
   what the table says computes it (policy, reference, data).

:meth:`BatchBuilder.build` also returns TRL's metrics of the policy's
next-token distribution (``logits/chosen``, ``logits/rejected``, ``entropy``,
``mean_token_accuracy``; :mod:`mipo.training.token_metrics`), computed by the
same policy forward, detached.

The per-token quantities come from :func:`mipo.training.logps.token_stats` on
the shifted axis: position $t$ holds the label $y_t$ predicted from the hidden
state at unshifted position $t$, so every unshifted data column ``c`` maps to
``c[:, 1:]``. Every decision reads the table of needs; nothing asks which method
runs.
"""

import contextlib
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mipo.batch import PairBatch, Side, valid_weights, values_checked
from mipo.needs import Need, Scope, Source
from mipo.training.attention import prepare_packed_attention
from mipo.training.loaders import IndexedBatch
from mipo.training.logps import (
    IGNORE_INDEX,
    TokenStats,
    final_hidden_states,
    token_stats,
)
from mipo.training.models import reads_reference
from mipo.training.packing import pack_sequences
from mipo.training.services.base import Forward, Models, Service, Stacked
from mipo.training.token_metrics import token_metrics

_SIDE_SCOPES = (Scope.SIDE, Scope.PAIR)


class CausalLMBody(nn.Module):
    """A causal LM as the module accelerate wraps (DDP, FSDP, DeepSpeed): its
    ``forward`` runs the decoder body *and* the head through
    :func:`~mipo.training.logps.token_stats`, so sharded parameters (the tied head
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
        policy_stats: bool = False,
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
            policy_stats=policy_stats,
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


@dataclass(frozen=True, kw_only=True, eq=False)
class BatchBuilder:
    """Builds the :class:`PairBatch` of a micro-batch with the fields in ``needs``.

    Args:
        needs: what the objective reads (``objective.needs``, plus any extra
            field a caller wants, e.g. evaluation's ``kl_reverse``).
        services: the running services of the objective's specs (and of the
            run's settings); each fills the fields its spec provides.
        chunk_size: ``None`` for the eager log-prob path, else the chunk size.
        padding_free: run the forwards on one packed row (:mod:`mipo.training.packing`:
            no compute on padding; attention kept within each sequence) and
            unpack the per-token results; equal to the padded path.
        metrics: compute the token metrics that :meth:`build` returns (they
            change no batch field and no gradient).
    """

    needs: frozenset[Need]
    services: tuple[Service, ...] = ()
    chunk_size: int | None = None
    padding_free: bool = False
    metrics: bool = True
    provided: frozenset[Need] = field(init=False)

    def __post_init__(self) -> None:
        provided = frozenset().union(*(s.spec.provides for s in self.services))
        object.__setattr__(self, "provided", provided)
        check_served(self.needs, provided)
        if self.padding_free:
            for service in self.services:
                if not service.supports_packing:
                    raise ValueError(
                        f"padding_free: not supported with the {service.description} "
                        f"(it hooks the reference forward)"
                    )

    def __call__(self, models: Models, batch: Any) -> PairBatch:
        """The validated :class:`PairBatch` of ``batch`` (an
        :class:`~mipo.training.loaders.IndexedBatch`, or ``PairTensors``)."""
        return self.build(models, batch)[0]

    def build(self, models: Models, batch: Any) -> tuple[PairBatch, dict[str, Tensor]]:
        """The :class:`PairBatch` of ``batch`` and the sums and counts behind the
        micro-batch's token metrics (:func:`~mipo.training.token_metrics.token_metrics`,
        detached, on the device; :func:`~mipo.training.token_metrics.pooled_means`
        turns them into the logged means)."""
        batch = _indexed(batch)
        tensors = batch.tensors
        pairs = [("chosen", tensors.chosen), ("rejected", tensors.rejected)]
        generated = [
            (need.value, sequences)
            for service in self.services
            for need, sequences in service.extra_sides(batch, models).items()
        ]
        stacked = self._stacked(models, pairs)
        values: dict[Need | str, Tensor] = {}
        for service in self.services:
            values |= service.before_forward(stacked, batch, models)
        forward = self._forward(models, stacked)
        for service in self.services:
            values |= service.after_forward(forward, batch, models)
        sides: dict[str, Side] = {}
        if generated:  # their own forward; their sides check themselves
            extra = self._forward(models, self._stacked(models, generated), hooks=False)
            sides |= self._sides(extra, {}, generated, first=len(pairs))
        weights = tensors.example_weights
        weights = None if weights is None else weights.float()
        # one host sync checks the values of every side at once; a failure is
        # built again with the sides' own checks, which name the field
        checked = values_checked() if _values_ok(forward, weights) else nullcontext()
        with checked:
            sides = self._sides(forward, values, pairs) | sides
            pair_batch = PairBatch(**sides, example_weights=weights)
        return pair_batch, token_metrics(forward.stats, stacked.rows)

    def _stacked(self, models: Models, parts: list[tuple[str, Any]]) -> Stacked:
        """The parts' sequences right-padded to one length and stacked."""
        ids, mask, labels, rows = stack_sequences(
            [sequences for _, sequences in parts], pad_token_id=models.pad_token_id
        )
        return Stacked(
            input_ids=ids,
            attention_mask=mask,
            labels=labels,
            rows=tuple(rows),
            needs=self.needs,
        )

    def _forward(
        self, models: Models, stacked: Stacked, *, hooks: bool = True
    ) -> Forward:
        """The reference forward and the policy forward, each with the services'
        hooks on it when ``hooks``."""
        run_ids, run_mask, run_labels = (
            stacked.input_ids,
            stacked.attention_mask,
            stacked.labels,
        )
        positions, packed = None, None
        if self.padding_free:
            _prepare_packing(models)
            packed = pack_sequences(run_ids, run_mask, run_labels)
            run_ids, run_mask = packed.input_ids, None
            run_labels, positions = packed.labels, packed.position_ids
        reference = models.reference
        reference_hidden = reference_head = None
        services = self.services if hooks else ()
        captured: dict[Service, Any] = {}
        if self._reads_reference(models):
            with contextlib.ExitStack() as stack:
                model = getattr(reference, "model", None)
                for service in services:
                    captured[service] = stack.enter_context(
                        service.reference_hooks(model)
                    )
                reference_hidden = reference.hidden_states(
                    run_ids, run_mask, position_ids=positions
                )
            reference_head = reference.head
        body = CausalLMBody(models.policy) if models.body is None else models.body
        policy_captured: dict[Service, Any] = {}
        with contextlib.ExitStack() as stack:
            for service in services:
                policy_captured[service] = stack.enter_context(
                    service.policy_hooks(models.policy)
                )
            hidden, stats = body(
                run_ids,
                run_mask,
                run_labels,
                reference_hidden=reference_hidden,
                reference_head=reference_head,
                kl_forward=Need.KL_FORWARD in self.needs,
                kl_reverse=Need.KL_REVERSE in self.needs,
                chunk_size=self.chunk_size,
                position_ids=positions,
                policy_stats=(self.metrics and hooks)
                or Need.LOG_COLLISION in self.needs,
            )
        if packed is not None:
            stats = packed.unpack_token_stats(stats)
            hidden = packed.unpack(hidden)
            if reference_hidden is not None:
                reference_hidden = packed.unpack(reference_hidden)
        return Forward(
            stacked=stacked,
            stats=stats,
            hidden=hidden,
            reference_hidden=reference_hidden,
            reference_head=reference_head,
            captured=captured,
            policy_captured=policy_captured,
        )

    def _reads_reference(self, models: Models) -> bool:
        """Whether the reference forward runs; refuses needs nothing can serve."""
        if not reads_reference(self.needs):
            return False
        if models.reference is not None:
            return True
        live = sorted(
            n.value
            for n in self.needs
            if n.info.reads_reference
            and n not in self.provided
            and not n.info.cacheable
        )
        if live:
            raise ValueError(
                f"the objective needs {', '.join(live)}, which read the reference "
                f"model, but there is none"
            )
        if (
            Need.REFERENCE_LOGPS in self.needs
            and Need.REFERENCE_LOGPS not in self.provided
        ):
            raise ValueError(
                "the objective needs reference_logps but neither a reference model nor "
                "precomputed reference log-probs were given"
            )
        return False

    def _sides(
        self,
        forward: Forward,
        values: dict[Need | str, Tensor],
        parts: list[tuple[str, Any]],
        *,
        first: int = 0,
    ) -> dict[str, Side]:
        """One :class:`Side` per part, each needed field from its provider; the
        parts are the ``first``-th onwards of the batch (0: chosen)."""
        computed = _computed_fields(forward, self.needs)
        length = forward.stacked.length
        needs = sorted(
            (n for n in self.needs if n.info.scope in _SIDE_SCOPES),
            key=lambda n: n.value,
        )
        sides: dict[str, Side] = {}
        start = 0
        for index, ((name, data), count) in enumerate(
            zip(parts, forward.stacked.rows, strict=True), start=first
        ):
            part = slice(start, start + count)
            start += count
            fields: dict[str, Tensor] = {
                "policy_logps": forward.stats.policy_logps[part],
                "response_mask": forward.stats.response_mask[part],
            }
            for need in needs:
                if need.info.scope is Scope.PAIR and index >= 2:
                    continue
                value = values.get(need, computed.get(need))
                if value is not None and value.shape[0] >= part.stop:
                    fields[need.value] = value[part]
                elif need.info.source is Source.DATA and value is None:
                    fields[need.value] = _shifted_column(
                        getattr(data, need.value), length, need.value
                    )
            if index < 2:  # companion fields no need names (module docstring)
                fields |= {k: v[part] for k, v in values.items() if isinstance(k, str)}
            sides[name] = Side(**fields)
        return sides


def _values_ok(forward: Forward, weights: Tensor | None) -> bool:
    """Every stacked row has a response token and every example weight is
    finite and non-negative (what :class:`~mipo.batch.PairBatch` checks per
    side), read back in one host sync."""
    checks = [forward.stats.response_mask.any(dim=-1).all()]
    if weights is not None:
        checks.append(valid_weights(weights))
    return bool(torch.stack(checks).all())


def _prepare_packing(models: Models) -> None:
    """Every model of a packed forward attends within each sequence without a
    dense mask (:func:`mipo.training.attention.prepare_packed_attention`)."""
    prepare_packed_attention(models.policy)
    reference_model = getattr(models.reference, "model", None)
    if reference_model is not None:
        prepare_packed_attention(reference_model)


def check_served(needs: frozenset[Need], provided: frozenset[Need]) -> None:
    """Refuse batch fields that only a service computes when no service in the
    run ``provided`` them."""
    missing = sorted(
        need.value
        for need in needs
        if need.info.source is Source.SERVICE
        and need.info.scope is not Scope.SERVICE
        and need not in provided
    )
    if missing:
        raise ValueError(
            f"the objective needs {', '.join(missing)}, which only a service "
            f"computes, and none of its parts declares one (a primitive declares its "
            f"services; see docs/guides/new_primitive.md)"
        )


def _computed_fields(forward: Forward, needs: frozenset[Need]) -> dict[Need, Tensor]:
    """The needed fields the policy and reference forwards computed, over every
    stacked row."""
    stats = forward.stats
    out: dict[Need, Tensor | None] = {
        Need.REFERENCE_LOGPS: stats.reference_logps,
        Need.KL_FORWARD: stats.kl_forward,
        Need.KL_REVERSE: stats.kl_reverse,
        Need.LOG_COLLISION: stats.log_collision,
    }
    if Need.HIDDEN_STATES in needs:
        out[Need.HIDDEN_STATES] = forward.hidden[:, :-1].detach()
    if Need.SEQUENCE_MASK in needs:
        out[Need.SEQUENCE_MASK] = forward.stacked.attention_mask[:, 1:].bool()
    return {need: value for need, value in out.items() if value is not None}


def _indexed(batch: Any) -> IndexedBatch:
    """An ``IndexedBatch`` view of ``batch`` (plain ``PairTensors`` get no indices)."""
    if isinstance(batch, IndexedBatch):
        return batch
    return IndexedBatch(indices=None, tensors=batch)


def count_tokens(tensors: Any) -> Tensor:
    """Non-padding tokens of chosen plus rejected (for tokens/s), on the device."""
    return tensors.chosen.attention_mask.sum() + tensors.rejected.attention_mask.sum()


__all__ = [
    "BatchBuilder",
    "CausalLMBody",
    "check_served",
    "count_tokens",
    "stack_sequences",
]
