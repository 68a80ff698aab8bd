r"""WPO: each pair's loss weighted by how likely the current policy is to say it.

$$ \ell_i = c_i\,\ell^{base}_i, \qquad
   c_i = \min\big(c_{max},\ \exp(\bar a(y_w) + \bar a(y_l))\big), \qquad
   \bar a(y) = \frac{1}{|y|}\sum_t \big[\log\pi_\theta(y_t|s_t) - \log\textstyle\sum_v\pi_\theta(v|s_t)^2\big], $$

with $c$ detached. Subtracting the log collision probability
$\log\sum_v\pi_\theta(v|s_t)^2$ ("sampled alignment") makes the expected weight
of a response sampled from the policy itself 1 at every token; without it
(``aligned=False``) the weight is the length-normalised sequence probability.
The authors' code caps $c$ at 1; TRL 1.16 does not cap (``max_weight=None``).

The weight multiplies the link only; a :class:`~mipo.Term` beside it (the SFT
term) is not weighted, whereas TRL also weights its ``sft`` loss type. No prior
can produce $c_i$: it scales the loss outside the link
(``proofs/trl_losses_outside_mi.md``).

References:
    Zhou et al. (WPO), arXiv 2406.11827, the weighted DPO loss with sampled
    weight alignment; wzhouad/WPO ``scripts/run_wpo.py`` (the cap at 1); TRL
    ``use_weighting``.
"""

import math
from dataclasses import dataclass
from typing import final

import torch

from mipo.batch import PairBatch, Side
from mipo.errors import BatchError, CompositionError
from mipo.needs import Need
from mipo.primitives.link import LogSigmoidLink
from mipo.primitives.pair_link import AbstractPairLink, PairRewards
from mipo.typing import PerPair


def _mean_aligned_logp(side: Side, aligned: bool, role: str) -> PerPair:
    per_token = side.policy_logps
    if aligned:
        if side.log_collision is None:
            raise BatchError(f"{role}.log_collision: WPOLink(aligned=True) needs it")
        per_token = per_token - side.log_collision
    return side.masked_sum(per_token.detach()) / side.lengths


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class WPOLink(AbstractPairLink):
    r"""``link``'s loss times the WPO weight $c_i$ (detached).

    Args:
        link: the weighted pair link (DPO's log-sigmoid by default).
        aligned: subtract the log collision probability (the paper's sampled
            alignment; needs ``log_collision``).
        max_weight: cap on $c_i$ (1 in the authors' code); ``None`` for no cap
            (TRL 1.16).
    """

    link: AbstractPairLink = LogSigmoidLink()
    aligned: bool = True
    max_weight: float | None = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.link, AbstractPairLink):
            raise CompositionError(f"WPOLink.link: {self.link!r} is not a link")
        cap = self.max_weight
        if cap is not None and not (math.isfinite(cap) and cap > 0):
            raise CompositionError(
                f"WPOLink.max_weight: must be > 0 or None, got {cap}"
            )

    @property
    def needs(self) -> frozenset[Need]:
        own = frozenset({Need.LOG_COLLISION}) if self.aligned else frozenset()
        return own | self.link.needs

    def weights(self, batch: PairBatch) -> PerPair:
        """$c_i$ for each pair (detached)."""
        total = _mean_aligned_logp(batch.chosen, self.aligned, "chosen")
        total = total + _mean_aligned_logp(batch.rejected, self.aligned, "rejected")
        if self.max_weight is not None:
            total = torch.clamp(total, max=math.log(self.max_weight))
        return torch.exp(total)

    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        return self.weights(batch) * self.link.pair_loss(rewards, batch, beta=beta)


__all__ = ["WPOLink"]
