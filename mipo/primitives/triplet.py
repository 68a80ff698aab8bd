r"""TI-DPO's triplet term on per-token log-ratios of anchor, chosen and rejected.

With the unweighted per-token log-ratios $l_t = \log\pi_\theta(y_t|s_t) -
\log\pi_{ref}(y_t|s_t)$ of the anchor $a$ (sampled from the policy, see
:mod:`mipo.training.services.anchor`), the chosen $y_w$ and the rejected $y_l$, each restricted to
its response tokens and indexed from the first response token ($k = 0, 1,
\dots$): $d_k$ (anchor), $b_k$ (chosen), $c_k$ (rejected),

$$ D_+ = \sum_{k < \min(|a|, |y_w|)} (d_k - b_k)^2, \qquad
   D_- = \sum_{k < \min(|a|, |y_l|)} (d_k - c_k)^2, \qquad
   T = \max(0,\ D_+ - D_- + \alpha_{triplet}) . $$

Gradients flow through all three log-ratio vectors (the anchor's policy
log-probs are live; its tokens are not). The objective adds $\gamma T$ per pair.

References:
    Yang et al., arXiv 2505.19653 v3, Sec. 4.3, Eq. 13 (as printed the sums run
    to $T_w$ and $T_l$; the released code ``trainers.py`` at ``e04a0926`` packs
    the responses left-aligned and compares position $k$ with position $k$,
    truncated to the shorter response, as here). The code computes the term only
    when its margin is positive (at margin <= 0 it adds nothing); mipo refuses
    such a margin rather than change the formula at one value. Notes:
    ``docs/recipe_notes/ti_dpo.md``.
"""

import math
from dataclasses import dataclass, field
from typing import final

import torch
from torch import Tensor

from mipo.batch import PairBatch, Side
from mipo.errors import BatchError, CompositionError
from mipo.needs import Need
from mipo.primitives.terms import AbstractTerm
from mipo.services import AbstractServiceSpec, AnchorSampling
from mipo.typing import PerPair


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class LogRatioTriplet(AbstractTerm):
    r"""$T = \max(0, \sum_k (d_k - b_k)^2 - \sum_k (d_k - c_k)^2 + \alpha_{triplet})$
    per pair (module docstring).

    Args:
        margin: $\alpha_{triplet} > 0$, in log-ratio units squared. The paper
            gives no value; the released code's default is 0.1, its
            ``tidpo.yaml`` 0.001. The code skips the whole term at a margin <= 0,
            so such a margin is refused: switch the term off with its weight.
        sampling: how the trainer samples the anchor (``Need.ANCHOR``).

    References:
        arXiv 2505.19653 v3, Eq. 13; ``docs/recipe_notes/ti_dpo.md``.
    """

    margin: float = 0.1
    sampling: AnchorSampling = field(default_factory=AnchorSampling)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin > 0.0):
            raise CompositionError(
                f"LogRatioTriplet.margin: must be finite and > 0, got {self.margin}; "
                "the released TI-DPO code drops the triplet term at a margin <= 0, "
                "so switch the term off with its weight instead (TI-DPO recipe: "
                "--objective.gamma=0)"
            )
        if not isinstance(self.sampling, AnchorSampling):
            raise CompositionError(
                f"LogRatioTriplet.sampling: expected an AnchorSampling, got "
                f"{self.sampling!r}"
            )

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.ANCHOR, Need.REFERENCE_LOGPS})

    @property
    def services(self) -> tuple[AbstractServiceSpec, ...]:
        return (self.sampling,)

    def __call__(self, batch: PairBatch) -> PerPair:
        if batch.anchor is None:
            raise BatchError("anchor: LogRatioTriplet needs the sampled anchor")
        anchor, anchor_lengths = _packed_log_ratio(batch.anchor, "anchor")
        chosen, chosen_lengths = _packed_log_ratio(batch.chosen, "chosen")
        rejected, rejected_lengths = _packed_log_ratio(batch.rejected, "rejected")
        width = max(anchor.shape[1], chosen.shape[1], rejected.shape[1])
        anchor, chosen, rejected = (
            _pad(values, width) for values in (anchor, chosen, rejected)
        )
        k = torch.arange(width, device=anchor.device)
        zero = torch.zeros_like(anchor)
        both_chosen = k < torch.minimum(anchor_lengths, chosen_lengths)[:, None]
        both_rejected = k < torch.minimum(anchor_lengths, rejected_lengths)[:, None]
        distance_chosen = torch.where(both_chosen, (anchor - chosen) ** 2, zero)
        distance_rejected = torch.where(both_rejected, (anchor - rejected) ** 2, zero)
        gap = distance_chosen.sum(-1) - distance_rejected.sum(-1)
        return torch.relu(gap + self.margin)


def _packed_log_ratio(side: Side, role: str) -> tuple[Tensor, Tensor]:
    """The response log-ratios left-aligned (column k = k-th response token, zero
    beyond the response) and the response lengths."""
    if side.reference_logps is None:
        raise BatchError(
            f"{role}.reference_logps: LogRatioTriplet needs reference log-probs"
        )
    mask = side.response_mask
    log_ratio = torch.where(
        mask,
        side.policy_logps - side.reference_logps,
        torch.zeros_like(side.policy_logps),
    )
    # A stable sort on "not in the response" moves the response positions to the
    # front in their original order; gather keeps the gradient.
    order = torch.sort((~mask).to(torch.int8), dim=-1, stable=True).indices
    return log_ratio.gather(-1, order), mask.sum(dim=-1)


def _pad(values: Tensor, width: int) -> Tensor:
    extra = width - values.shape[1]
    if extra == 0:
        return values
    return torch.cat([values, values.new_zeros(values.shape[0], extra)], dim=-1)


__all__ = ["LogRatioTriplet"]
