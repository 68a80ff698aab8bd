r"""AOT: a link applied to batch-sorted rewards (distributional alignment).

AOT asks the policy's distribution of margins to dominate the reference's (or
the chosen rewards' distribution to dominate the rejected ones'), which in one
dimension is a comparison of sorted samples: the $i$-th smallest against the
$i$-th smallest. The loss of "pair" $i$ therefore mixes different pairs, and the
batch loss is not a sum of per-pair terms (``proofs/trl_losses_outside_mi.md``).
"""

from dataclasses import dataclass
from typing import final

import torch

from mipo.batch import PairBatch
from mipo.errors import CompositionError
from mipo.primitives.link import AbstractLink, LogSigmoidLink
from mipo.primitives.pair_link import AbstractPairLink, PairRewards
from mipo.typing import PerPair


def _sorted(values: PerPair) -> PerPair:
    return torch.sort(values, dim=0).values


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class SortedLink(AbstractPairLink):
    r"""A logit link on sorted batch quantities: AOT (paired and unpaired).

    - ``paired=True``: $z_{(i)} = \beta\,[\mathrm{sort}(P_w - P_l)_i -
      \mathrm{sort}(Z_w - Z_l)_i]$, with $P = \sum_t w_t\log\pi_\theta$ the
      policy's share of the reward and $Z = P - r$ the prior's (with the
      reference prior, TRL's ``aot``).
    - ``paired=False``: $z_{(i)} = \beta\,[\mathrm{sort}(r_w)_i - \mathrm{sort}(r_l)_i]$
      (TRL's ``aot_unpaired``).

    The loss at rank $i$ is ``link`` at $z_{(i)}$, booked to the pair whose
    policy margin (paired) or chosen reward (unpaired) has rank $i$ (tied pairs
    share their ranks' mean), so permuting the pairs permutes ``per_pair``; the
    batch mean is TRL's. TRL uses the
    label-smoothed link (``LabelSmoothedLink(epsilon=label_smoothing)``). Sorting
    is ascending over the micro-batch, so the loss depends on how pairs are
    batched; the margin slot does not enter.

    Args:
        link: the logit link on the sorted logits.
        paired: sort the policy and prior margins (True) or the two sides'
            rewards (False).

    References:
        Melnyk et al. (AOT), arXiv 2406.05882, the paired and unpaired AOT losses;
        TRL ``loss_type="aot"`` / ``"aot_unpaired"``.
    """

    link: AbstractLink = LogSigmoidLink()
    paired: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.link, AbstractLink):
            raise CompositionError(
                f"SortedLink.link: {self.link!r} is not a logit link"
            )

    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        if self.paired:
            policy_chosen, policy_rejected = rewards.policy_logps(batch)
            anchor = policy_chosen - policy_rejected
            other = anchor - (rewards.chosen - rewards.rejected)
        else:
            anchor, other = rewards.chosen, rewards.rejected
        ranked, order = torch.sort(anchor, dim=0, stable=True)
        losses = _tie_mean(
            ranked, self.link(beta * (ranked - _sorted(other)), beta=beta)
        )
        # row order[i] holds the anchor of rank i: it gets that rank's loss
        return torch.zeros_like(losses).scatter(0, order, losses)


def _tie_mean(ranked: PerPair, losses: PerPair) -> PerPair:
    """Pairs whose anchors tie share their ranks' mean loss (no tie-break by
    position, so permuting the pairs permutes the result exactly)."""
    _, group = torch.unique_consecutive(ranked, return_inverse=True)
    totals = torch.zeros_like(losses).scatter_add(0, group, losses)
    counts = torch.zeros_like(losses).scatter_add(0, group, torch.ones_like(losses))
    return (totals / counts.clamp(min=1.0))[group]


__all__ = ["SortedLink"]
