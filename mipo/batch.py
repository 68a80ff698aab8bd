"""Token-level pair batches: what every primitive reads.

A :class:`PairBatch` holds the chosen and the rejected response of each pair as
two separate :class:`Side` objects (never an unchecked "chosen first"
concatenation). Every tensor is per token, on the shifted ``seq`` axis: position
``t`` holds the label ``y_t`` and the quantities computed from the state
``s_t = (x, y_<t)`` that predicts it. Prompt and padding positions are simply
outside ``response_mask``.

Only ``policy_logps`` and ``response_mask`` are always present. Everything else
is optional and supplied by the trainer only when the objective declares the
matching :class:`~mipo.needs.Need`.

Construction checks every field's shape, dtype and device (free), and two
*values*: every response has a token, and example weights are finite and
non-negative. A value check reads the tensor back to the host, which on an
accelerator waits for all queued work (a host sync). Inside
:func:`values_checked`, a caller that has checked the values itself (the
trainer's batch builder does it once per micro-batch, for every side at
once) skips them.
"""

import contextlib
import dataclasses
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import final

import torch
from torch import Tensor

from mipo.errors import BatchError
from mipo.typing import (
    Hidden,
    PerPair,
    TokenLogps,
    TokenMask,
    TokenValues,
    TokenWeights,
)

_VALUE_CHECKS: ContextVar[bool] = ContextVar("mipo_batch_value_checks", default=True)


@contextlib.contextmanager
def values_checked() -> Iterator[None]:
    """Sides and pair batches built in the block skip the value checks (the
    caller has made them); shapes, dtypes and devices are still checked."""
    token = _VALUE_CHECKS.set(False)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


_TOKEN_FLOAT_FIELDS = (
    "policy_logps",
    "reference_logps",
    "kl_forward",
    "kl_reverse",
    "token_weights",
    "kl_weights",
    "attribution_scores",
    "prior_logps",
    "log_collision",
)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class Side:
    """Per-token tensors of one response (chosen, rejected or anchor) of each pair.

    Args:
        policy_logps: log pi_theta(y_t | s_t), live (carries the policy gradient).
        response_mask: True on response tokens, the appended EOS included.
        reference_logps: log pi_ref(y_t | s_t); a constant.
        kl_forward: KL(pi_ref(.|s_t) || pi_theta(.|s_t)) over the full vocabulary,
            live through pi_theta (TDPO, SparsePO, TI-DPO).
        kl_reverse: KL(pi_theta(.|s_t) || pi_ref(.|s_t)) over the full vocabulary,
            live (TIS-DPO's token-level variant).
        hidden_states: the policy's last hidden state (after the final norm) that
            predicts y_t, i.e. taken at position t-1 of the unshifted sequence.
        token_weights: per-token weights from the data (TIS-DPO columns,
            SparsePO/MaPO reward masks).
        kl_weights: per-token weights on the KL from the data (SparsePO KL mask).
        attribution_scores: per-token gradient-attribution scores (TI-DPO).
        sequence_mask: True on every non-padding position, prompt included
            (TI-DPO's "sequence" span).
        first_token_attribution: ``[batch]``, the attribution score of each row's
            first input token, which predicts nothing and so has no place on the
            shifted axis; TI-DPO's "sequence" span counts it.
        prior_logps: log zeta(y_t | s_t) from a separately trained prior.
        log_collision: log sum_v pi_theta(v | s_t)^2 over the full vocabulary,
            detached (WPO's aligned weights).
    """

    policy_logps: TokenLogps
    response_mask: TokenMask
    reference_logps: TokenLogps | None = None
    kl_forward: TokenValues | None = None
    kl_reverse: TokenValues | None = None
    hidden_states: Hidden | None = None
    token_weights: TokenWeights | None = None
    kl_weights: TokenWeights | None = None
    attribution_scores: TokenValues | None = None
    sequence_mask: TokenMask | None = None
    prior_logps: TokenLogps | None = None
    log_collision: TokenValues | None = None
    first_token_attribution: PerPair | None = None

    def __post_init__(self) -> None:
        validate_side(self, "side")

    @property
    def lengths(self) -> PerPair:
        """|y|: the number of response tokens per row, EOS included (float)."""
        return self.response_mask.sum(dim=-1).to(self.policy_logps.dtype)

    def masked_sum(self, values: TokenValues) -> PerPair:
        """Sum of ``values`` over the response positions of each row."""
        return torch.where(self.response_mask, values, torch.zeros_like(values)).sum(-1)

    def replace(self, **changes: Tensor | None) -> "Side":
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)


def validate_side(side: Side, name: str) -> None:
    """Check shapes, dtypes and non-empty responses; raise one :class:`BatchError`
    naming the offending field as ``{name}.{field}``."""
    mask = side.response_mask
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        raise BatchError(
            f"{name}.response_mask: expected a 2-D torch.bool tensor [batch, seq], "
            f"got {_describe(mask)}"
        )
    shape = tuple(mask.shape)
    for field in (*_TOKEN_FLOAT_FIELDS, "sequence_mask", "hidden_states"):
        value = getattr(side, field)
        if value is None:
            continue
        if not isinstance(value, Tensor):
            raise BatchError(
                f"{name}.{field}: expected a tensor, got {type(value).__name__}"
            )
        want_dim = 3 if field == "hidden_states" else 2
        if value.dim() != want_dim or tuple(value.shape[:2]) != shape:
            expected = f"({shape[0]}, {shape[1]}{', hidden' if want_dim == 3 else ''})"
            raise BatchError(
                f"{name}.{field}: expected shape {expected} to match "
                f"{name}.response_mask, got {tuple(value.shape)}"
            )
        if field == "sequence_mask":
            if value.dtype != torch.bool:
                raise BatchError(
                    f"{name}.{field}: expected torch.bool, got {value.dtype}"
                )
        elif not value.is_floating_point():
            raise BatchError(
                f"{name}.{field}: expected a floating dtype, got {value.dtype}"
            )
        if value.device != mask.device:
            raise BatchError(
                f"{name}.{field}: on {value.device}, but {name}.response_mask is on "
                f"{mask.device}"
            )
    first = side.first_token_attribution
    _validate_per_row(first, mask, f"{name}.first_token_attribution")
    if not _VALUE_CHECKS.get() or bool(mask.any(dim=-1).all()):
        return
    empty = (~mask.any(dim=-1)).nonzero().flatten().tolist()
    if empty:
        raise BatchError(
            f"{name}.response_mask: rows {empty} have no response token (every "
            f"response needs at least its EOS)"
        )


def _validate_per_row(value: object, mask: Tensor, name: str) -> None:
    if value is None:
        return
    if not isinstance(value, Tensor) or tuple(value.shape) != (mask.shape[0],):
        raise BatchError(
            f"{name}: expected shape ({mask.shape[0]},), one value per row, got "
            f"{_describe(value)}"
        )
    if not value.is_floating_point() or value.device != mask.device:
        raise BatchError(
            f"{name}: expected a floating tensor on {mask.device}, got "
            f"{value.dtype} on {value.device}"
        )


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class PairBatch:
    """A micro-batch of preference pairs at token level.

    Args:
        chosen: the preferred response y_w of each pair.
        rejected: the dispreferred response y_l of each pair, padded to the same
            ``seq`` as ``chosen``.
        example_weights: optional per-pair weights; they multiply the per-pair
            losses before the batch mean.
        anchor: optional third response per pair, generated by the policy
            (TI-DPO's triplet term); its ``seq`` may differ.
    """

    chosen: Side
    rejected: Side
    example_weights: PerPair | None = None
    anchor: Side | None = None

    def __post_init__(self) -> None:
        sides = {"chosen": self.chosen, "rejected": self.rejected}
        if self.anchor is not None:
            sides["anchor"] = self.anchor
        for name, side in sides.items():
            # a Side checked itself when it was built (it is frozen)
            if not isinstance(side, Side):
                raise BatchError(
                    f"{name}: expected a mipo.Side, got {type(side).__name__}"
                )
        size = self.chosen.response_mask.shape[0]
        for name, side in sides.items():
            rows = side.response_mask.shape[0]
            if rows != size:
                raise BatchError(f"{name}: has {rows} rows but chosen has {size}")
        seq, rejected_seq = (
            self.chosen.response_mask.shape[1],
            self.rejected.response_mask.shape[1],
        )
        if rejected_seq != seq:
            raise BatchError(
                f"rejected: padded to {rejected_seq} positions but chosen to {seq}; pad "
                f"both sides of a batch to a common length"
            )
        weights = self.example_weights
        if weights is not None:
            if not isinstance(weights, Tensor) or tuple(weights.shape) != (size,):
                raise BatchError(
                    f"example_weights: expected shape ({size},), got {_describe(weights)}"
                )
            if not weights.is_floating_point():
                raise BatchError(
                    f"example_weights: expected a floating dtype, got {weights.dtype}"
                )
            if _VALUE_CHECKS.get() and not bool(valid_weights(weights)):
                raise BatchError("example_weights: must be finite and non-negative")

    @property
    def size(self) -> int:
        """Number of pairs."""
        return self.chosen.response_mask.shape[0]

    def swapped(self) -> "PairBatch":
        """The same pairs with chosen and rejected exchanged."""
        return dataclasses.replace(self, chosen=self.rejected, rejected=self.chosen)


def valid_weights(weights: Tensor) -> Tensor:
    """A 0-d boolean tensor: every example weight is finite and non-negative."""
    return (torch.isfinite(weights) & (weights >= 0)).all()


__all__ = ["PairBatch", "Side", "validate_side", "valid_weights", "values_checked"]
