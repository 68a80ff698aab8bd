r"""Weighted sums of pair links: several loss types in one objective.

$$ \ell_i = \sum_k \lambda_k\,\ell_k(r_w, r_l, m;\ \beta), $$

every part seeing the same rewards. This is TRL's ``loss_type=[...]`` with
``loss_weights=[...]`` for the parts that are links; TRL's ``sft`` part is a
:class:`~mipo.Term` (:class:`~mipo.primitives.ChosenNLL`) whose weight is its
``loss_weights`` entry. MPO is ``LinkSum(links=(LogSigmoidLink(), BCOPairLink()),
weights=(0.8, 0.2))`` plus the ``sft`` term at weight 1.

References:
    Wang et al. (MPO), arXiv 2411.10442, the mixed preference loss; TRL
    ``loss_type`` lists with ``loss_weights``.
"""

import math
from dataclasses import dataclass
from typing import final

import torch

from mipo.batch import PairBatch
from mipo.errors import CompositionError
from mipo.needs import NO_NEEDS, Need
from mipo.primitives.pair_link import AbstractPairLink, PairRewards
from mipo.typing import PerPair


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class LinkSum(AbstractPairLink):
    r"""$\ell = \sum_k \lambda_k \ell_k$.

    Args:
        links: the pair links $\ell_k$.
        weights: their weights $\lambda_k$ (finite), one per link.
    """

    links: tuple[AbstractPairLink, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.links:
            raise CompositionError("LinkSum.links: needs at least one link")
        if len(self.weights) != len(self.links):
            raise CompositionError(
                f"LinkSum.weights: {len(self.weights)} weights for "
                f"{len(self.links)} links"
            )
        for index, (weight, link) in enumerate(
            zip(self.weights, self.links, strict=True)
        ):
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise CompositionError(
                    f"LinkSum.weights[{index}]: {weight!r} is not a number"
                )
            if not math.isfinite(weight):
                raise CompositionError(f"LinkSum.weights[{index}]: must be finite")
            if not isinstance(link, AbstractPairLink):
                raise CompositionError(
                    f"LinkSum.links[{index}]: {link!r} is not a link"
                )

    @property
    def needs(self) -> frozenset[Need]:
        return NO_NEEDS.union(*(link.needs for link in self.links))

    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        parts = (
            weight * link.pair_loss(rewards, batch, beta=beta)
            for weight, link in zip(self.weights, self.links, strict=True)
        )
        return sum(parts, torch.zeros_like(rewards.logits))


__all__ = ["LinkSum"]
