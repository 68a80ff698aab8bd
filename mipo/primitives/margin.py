r"""Margins $m$: a per-pair offset subtracted inside the link.

$z = \beta\,[r(y_w) - r(y_l)] - m$. A margin is where role-dependent constants
live (class M of ``objective.md``: no prior that is a function of $y$ alone can
produce SimPO's $\gamma$). Margins compose by sum (:class:`SumMargin`);
:class:`NoMargin` is the neutral element.
"""

import abc
from dataclasses import dataclass
from typing import final

import torch

from mipo.batch import PairBatch
from mipo.errors import CompositionError
from mipo.needs import NO_NEEDS, Need
from mipo.typing import PerPair


class AbstractMargin(abc.ABC):
    """Pair-level offset m subtracted inside the link: z = beta (r_c - r_r) - m."""

    @property
    def needs(self) -> frozenset[Need]:
        """The batch fields this margin reads."""
        return NO_NEEDS

    @abc.abstractmethod
    def __call__(self, batch: PairBatch) -> PerPair:
        """m for each pair."""


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class NoMargin(AbstractMargin):
    """m = 0. The neutral margin."""

    def __call__(self, batch: PairBatch) -> PerPair:
        return torch.zeros_like(batch.chosen.policy_logps[:, 0]).detach()


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ConstantMargin(AbstractMargin):
    r"""$m = \gamma$ for every pair: SimPO's target reward margin.

    SimPO writes $\beta(\bar{s}_w - \bar{s}_l) - \gamma$; later configs give
    $\gamma/\beta$ (``gamma_beta_ratio``), so $\gamma = \beta \cdot$ ratio.

    Args:
        gamma: the absolute margin $\gamma$, in logit units (after $\beta$).

    References:
        Meng, Xia, Chen (SimPO), arXiv 2405.14734, Eq. 6.
    """

    gamma: float

    def __post_init__(self) -> None:
        if not abs(self.gamma) < float("inf"):
            raise CompositionError("ConstantMargin: gamma must be finite")

    def __call__(self, batch: PairBatch) -> PerPair:
        zeros = torch.zeros_like(batch.chosen.policy_logps[:, 0]).detach()
        return zeros + self.gamma


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class LengthDifferenceMargin(AbstractMargin):
    r"""$m = -\alpha_{len}(|y_w| - |y_l|)$, so $z = \beta h + \alpha_{len}(|y_w| - |y_l|)$.

    R-DPO's length regulariser in margin form; lengths in tokens, EOS included.
    Equal to the length-penalised reference prior with rate $\alpha_{len}/\beta$
    (``proofs/rdpo_margin_is_length_prior.md``). The sign is unverified against
    the R-DPO PDF (``docs/recipe_notes/rdpo.md``).

    Args:
        alpha_len: $\alpha_{len}$.

    References:
        Park et al. (R-DPO), arXiv 2403.19159.
    """

    alpha_len: float

    def __call__(self, batch: PairBatch) -> PerPair:
        return -self.alpha_len * (batch.chosen.lengths - batch.rejected.lengths)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class SumMargin(AbstractMargin):
    r"""$m = \sum_k m_k$."""

    margins: tuple[AbstractMargin, ...]

    def __post_init__(self) -> None:
        for margin in self.margins:
            if not isinstance(margin, AbstractMargin):
                raise CompositionError(f"SumMargin: {margin!r} is not a margin")

    @property
    def needs(self) -> frozenset[Need]:
        return NO_NEEDS.union(*(margin.needs for margin in self.margins))

    def __call__(self, batch: PairBatch) -> PerPair:
        total = NoMargin()(batch)
        for margin in self.margins:
            total = total + margin(batch)
        return total


__all__ = [
    "AbstractMargin",
    "ConstantMargin",
    "LengthDifferenceMargin",
    "NoMargin",
    "SumMargin",
]
