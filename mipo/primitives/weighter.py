r"""Token weighters: the per-token weights $w_t$ in $r(y) = \sum_t w_t\,l_t + o(y)$.

A weighter returns one weight tensor per side. The objective multiplies the
weights by the response mask, so padding and prompt positions never count.
Weighters compose by product (:class:`ProductWeighter`); :class:`SumOverResponse`
(all ones) is the neutral element.

Pair-coupled weighters (OTPO's transport weights) see both sides of a pair
together, which is why the interface takes the whole :class:`~mipo.PairBatch`.
Per-sequence weighters subclass :class:`AbstractSequenceWeighter` and implement
:meth:`AbstractSequenceWeighter.weigh` for one side.
"""

import abc
from dataclasses import dataclass
from typing import Literal, final

import torch

from mipo.batch import PairBatch, Side
from mipo.errors import BatchError, CompositionError
from mipo.needs import NO_NEEDS, Need
from mipo.typing import TokenWeights


class AbstractTokenWeighter(abc.ABC):
    """Maps a pair batch to per-token weights ``(chosen, rejected)``."""

    @property
    def needs(self) -> frozenset[Need]:
        """The batch fields this weighter reads."""
        return NO_NEEDS

    @abc.abstractmethod
    def __call__(self, batch: PairBatch) -> tuple[TokenWeights, TokenWeights]:
        """Weights for the chosen and the rejected side."""


class AbstractSequenceWeighter(AbstractTokenWeighter):
    """A weighter that looks at one response at a time."""

    @abc.abstractmethod
    def weigh(self, side: Side) -> TokenWeights:
        """Weights for one side."""

    def __call__(self, batch: PairBatch) -> tuple[TokenWeights, TokenWeights]:
        return self.weigh(batch.chosen), self.weigh(batch.rejected)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class SumOverResponse(AbstractSequenceWeighter):
    r"""$w_t = 1$: the summed sequence log-ratio of DPO. The neutral weighter.

    References:
        Rafailov et al., arXiv 2305.18290, Eq. 7 (sums over response tokens, EOS
        included).
    """

    def weigh(self, side: Side) -> TokenWeights:
        return torch.ones_like(side.policy_logps).detach()


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class MeanOverResponse(AbstractSequenceWeighter):
    r"""$w_t = 1/|y|$: the length-averaged log-ratio (TRL's IPO, SimPO, ORPO).

    $|y|$ counts the response tokens including the appended EOS.

    References:
        Meng, Xia, Chen, arXiv 2405.14734, Eq. 4; TRL ``loss_type="ipo"``.
    """

    def weigh(self, side: Side) -> TokenWeights:
        lengths = side.lengths.clamp(min=1.0)
        return (torch.ones_like(side.policy_logps) / lengths[:, None]).detach()


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class BatchTokenWeights(AbstractSequenceWeighter):
    r"""$w_t$ read from the data: TIS-DPO's weight columns, SparsePO/MaPO masks.

    Args:
        field: which per-token column of each side to read: ``token_weights`` (the
            reward-side weights) or ``kl_weights`` (SparsePO's KL mask).

    References:
        Liu et al. (TIS-DPO), arXiv 2410.04350; Christopoulou et al. (SparsePO),
        arXiv 2410.05102.
    """

    field: Literal["token_weights", "kl_weights"] = "token_weights"

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need(self.field)})

    def weigh(self, side: Side) -> TokenWeights:
        weights = getattr(side, self.field)
        if weights is None:
            raise BatchError(f"{self.field}: BatchTokenWeights needs this column")
        return weights


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ProductWeighter(AbstractTokenWeighter):
    r"""$w_t = \prod_k w^{(k)}_t$: the product of several weighters.

    Example: TRL-style length-averaged TIS-DPO weights are
    ``ProductWeighter(factors=(BatchTokenWeights(), MeanOverResponse()))``.
    """

    factors: tuple[AbstractTokenWeighter, ...]

    def __post_init__(self) -> None:
        if not self.factors:
            raise CompositionError("ProductWeighter: needs at least one factor")
        for factor in self.factors:
            if not isinstance(factor, AbstractTokenWeighter):
                raise CompositionError(
                    f"ProductWeighter: factor {factor!r} is not a token weighter"
                )
        normalisers = [f for f in self.factors if isinstance(f, MeanOverResponse)]
        if len(normalisers) > 1:
            raise CompositionError(
                "ProductWeighter: MeanOverResponse appears twice (weights would be 1/|y|^2)"
            )

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset().union(*(f.needs for f in self.factors))

    def __call__(self, batch: PairBatch) -> tuple[TokenWeights, TokenWeights]:
        chosen, rejected = self.factors[0](batch)
        for factor in self.factors[1:]:
            more_chosen, more_rejected = factor(batch)
            chosen, rejected = chosen * more_chosen, rejected * more_rejected
        return chosen, rejected


__all__ = [
    "AbstractSequenceWeighter",
    "AbstractTokenWeighter",
    "BatchTokenWeights",
    "MeanOverResponse",
    "ProductWeighter",
    "SumOverResponse",
]
