r"""Pair links: the per-pair loss as a function of both implied rewards.

The link slot of :class:`~mipo.Objective` takes a pair link. Most links read
only the logit $z = \beta[r(y_w) - r(y_l)] - m$
(:class:`~mipo.primitives.AbstractLink`); a pair link may also read each
side's reward on its own, which is what losses such as NCA, BCO, APO and SPPO
need:

$$ \ell_i = \ell\big(r(y_w)_i,\ r(y_l)_i,\ m_i;\ \beta\big), $$

and it may couple the pairs of a batch (AOT sorts them). The objective hands
every pair link the same :class:`PairRewards`, computed once from the prior,
the weighter and the margin.
"""

import abc
from dataclasses import dataclass
from typing import final

from mipo.batch import PairBatch, Side
from mipo.needs import NO_NEEDS, Need
from mipo.typing import PerPair, TokenWeights


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class PairRewards:
    r"""What the prior, weighter and margin give a link, per pair.

    Args:
        chosen: $r(y_w) = \sum_t w_t l_t(y_w) + o(y_w)$, before $\beta$ (live).
        rejected: $r(y_l)$, before $\beta$ (live).
        margin: $m$.
        logits: $z = \beta[r(y_w) - r(y_l)] - m$.
        chosen_weights: the weighter's $w_t$ on the chosen side.
        rejected_weights: the weighter's $w_t$ on the rejected side.
    """

    chosen: PerPair
    rejected: PerPair
    margin: PerPair
    logits: PerPair
    chosen_weights: TokenWeights
    rejected_weights: TokenWeights

    def policy_logps(self, batch: PairBatch) -> tuple[PerPair, PerPair]:
        r"""$\sum_t w_t \log\pi_\theta(y_t|s_t)$ per side: the policy's share of
        each reward (the rest, $\sum_t w_t l_t + o - $ this, is the prior's)."""
        return (
            _weighted_sum(batch.chosen, self.chosen_weights),
            _weighted_sum(batch.rejected, self.rejected_weights),
        )


def _weighted_sum(side: Side, weights: TokenWeights) -> PerPair:
    return side.masked_sum(weights * side.policy_logps)


class AbstractPairLink(abc.ABC):
    """Per-pair loss from both implied rewards (and, if it must, the batch)."""

    @property
    def needs(self) -> frozenset[Need]:
        """The batch fields this link reads (most read none)."""
        return NO_NEEDS

    @abc.abstractmethod
    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        """The loss of each pair."""


__all__ = ["AbstractPairLink", "PairRewards"]
