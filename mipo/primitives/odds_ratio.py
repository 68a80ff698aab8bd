r"""ORPO's odds-ratio link.

With the uniform prior and the mean weighter the reward is the mean token
log-probability $r(y) = \bar p(y) = \frac{1}{|y|}\sum_t\log\pi_\theta(y_t|s_t)$.
ORPO compares the *odds* $\mathrm{odds}(y) = e^{\bar p}/(1 - e^{\bar p})$:

$$ \ell = -\lambda\,\log\sigma\big(\log\mathrm{odds}(y_w) - \log\mathrm{odds}(y_l)\big),
   \qquad \log\mathrm{odds}(y) = \bar p - \log(1 - e^{\bar p}), $$

with $\lambda$ the objective's ``beta`` (TRL's convention, so that
``rewards/*`` $= \lambda\bar p$ as TRL logs them). The margin slot does not enter.
ORPO's NLL term is :class:`~mipo.primitives.ChosenNLL`.

References:
    Hong, Lee, Thorne (ORPO), arXiv 2403.07691, Eqs. 4 and 7 (odds, L_OR); TRL
    ``trl.experimental.orpo`` ``odds_ratio_loss``.
"""

from dataclasses import dataclass
from typing import final

import torch
import torch.nn.functional as F

from mipo.batch import PairBatch
from mipo.primitives.pair_link import AbstractPairLink, PairRewards
from mipo.typing import PerPair

_LOG_HALF = -0.6931471805599453
_MAX_MEAN_LOGP = -1e-6


def _log1mexp(values: PerPair) -> PerPair:
    """log(1 - e^x) for x < 0, accurate on both sides of log(1/2)."""
    return torch.where(
        values > _LOG_HALF,
        torch.log(-torch.expm1(values)),
        torch.log1p(-torch.exp(values)),
    )


def log_odds(mean_logps: PerPair) -> PerPair:
    r"""$\log\mathrm{odds} = \bar p - \log(1 - e^{\bar p})$.

    $\bar p$ is capped at $-10^{-6}$ (every dtype alike): a response of
    probability 1 ($\bar p = 0$, infinite odds) gets the log-odds 13.8 instead
    of an infinite one (TRL's ``log1mexp`` gives inf, then NaN)."""
    capped = torch.clamp(mean_logps, max=_MAX_MEAN_LOGP)
    return capped - _log1mexp(capped)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class OddsRatioLink(AbstractPairLink):
    r"""$-\lambda\log\sigma(\log\mathrm{odds}(y_w) - \log\mathrm{odds}(y_l))$ with
    $\lambda$ = ``beta``, on the rewards as composed (use the uniform prior and
    :class:`~mipo.primitives.MeanOverResponse`)."""

    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        del batch
        ratio = log_odds(rewards.chosen) - log_odds(rewards.rejected)
        return -beta * F.logsigmoid(ratio)


__all__ = ["OddsRatioLink", "log_odds"]
