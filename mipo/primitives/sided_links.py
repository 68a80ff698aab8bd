r"""Pair links over each side's reward: NCA, BCO, APO, SPPO.

These losses score the chosen and the rejected response against an absolute
target rather than against each other, so they read $u_w = \beta\,r(y_w)$ and
$u_l = \beta\,r(y_l)$ separately. With the reference prior and the sum weighter
$r(y) = \log\pi_\theta(y|x) - \log\pi_{ref}(y|x)$, TRL's ``chosen_logratios``.
No prior gives them the MI-DPO form: on a pair whose two responses are the same,
every MI-DPO loss is a constant, and NCA, BCO, APO-down and SPPO are not; APO-zero
breaks the swap identity instead (``proofs/trl_losses_outside_mi.md``;
``docs/objective.md``, "What a prior cannot express").
The margin slot does not enter them (:class:`APODownLink` excepted).
"""

from dataclasses import dataclass
from typing import final

import torch
import torch.nn.functional as F

from mipo.batch import PairBatch
from mipo.primitives.pair_link import AbstractPairLink, PairRewards
from mipo.typing import PerPair


def _softplus_neg(values: PerPair) -> PerPair:
    """$-\\log\\sigma(x)$, exact for every x."""
    return -F.logsigmoid(values)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class NCAPairLink(AbstractPairLink):
    r"""NCA's pairwise loss.

    $$ \ell = -\log\sigma(u_w) - \tfrac12\log\sigma(-u_w) - \tfrac12\log\sigma(-u_l). $$

    References:
        Chen et al. (NCA), arXiv 2402.05369, pairwise NCA (K = 2); TRL
        ``loss_type="nca_pair"``.
    """

    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        del batch
        chosen, rejected = beta * rewards.chosen, beta * rewards.rejected
        return (
            _softplus_neg(chosen)
            + 0.5 * _softplus_neg(-chosen)
            + 0.5 * _softplus_neg(-rejected)
        )


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class BCOPairLink(AbstractPairLink):
    r"""BCO's binary classifier on pairs: chosen as class 1, rejected as class 0.

    $$ \ell = -\log\sigma(u_w - \delta) - \log\sigma(-(u_l - \delta)). $$

    BCO's paper shifts both rewards by $\delta$, a running mean of the rewards
    over training; TRL 1.16's ``bco_pair`` has no shift. Here $\delta$ is a
    constant (0 = TRL); a running mean needs trainer state (``docs/trl.md``).

    Args:
        delta: the reward shift $\delta$, in reward units (after $\beta$).

    References:
        Jung et al. (BCO), arXiv 2404.04656, the pairwise BCO loss; TRL ``loss_type="bco_pair"``.
    """

    delta: float = 0.0

    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        del batch
        chosen = beta * rewards.chosen - self.delta
        rejected = beta * rewards.rejected - self.delta
        return _softplus_neg(chosen) + _softplus_neg(-rejected)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class APOZeroLink(AbstractPairLink):
    r"""APO-zero: raise the chosen and lower the rejected likelihood.

    $$ \ell = [1 - \sigma(u_w)] + \sigma(u_l), $$

    for data whose chosen answers beat the model's own.

    References:
        D'Oosterlinck et al. (APO), arXiv 2408.06266, Eq. 7; TRL
        ``loss_type="apo_zero"``.
    """

    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        del batch
        chosen, rejected = beta * rewards.chosen, beta * rewards.rejected
        return torch.sigmoid(-chosen) + torch.sigmoid(rejected)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class APODownLink(AbstractPairLink):
    r"""APO-down: lower both likelihoods, the rejected one more.

    $$ \ell = \sigma(u_w) + [1 - \sigma(z)], \qquad z = u_w - u_l - m, $$

    for data whose chosen answers are worse than the model's own.

    References:
        D'Oosterlinck et al. (APO), arXiv 2408.06266, Eq. 8; TRL
        ``loss_type="apo_down"``.
    """

    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        del batch
        return torch.sigmoid(beta * rewards.chosen) + torch.sigmoid(-rewards.logits)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class SPPOHardLink(AbstractPairLink):
    r"""SPPO with hard win probabilities (1 for the chosen, 0 for the rejected).

    $$ \ell = \big(r(y_w) - \tfrac{1}{2\beta}\big)^2 + \big(r(y_l) + \tfrac{1}{2\beta}\big)^2, $$

    the squared regression of each log-ratio on $\eta(P - \tfrac12)$ with
    $\eta = 1/\beta$.

    References:
        Wu et al. (SPPO), arXiv 2405.00675, Eq. 4.7; TRL ``loss_type="sppo_hard"``.
    """

    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        del batch
        target = 0.5 / beta
        return (rewards.chosen - target) ** 2 + (rewards.rejected + target) ** 2


__all__ = [
    "APODownLink",
    "APOZeroLink",
    "BCOPairLink",
    "NCAPairLink",
    "SPPOHardLink",
]
