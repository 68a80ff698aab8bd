r"""Extra terms: additive losses outside the link.

A term returns one value per pair; the objective adds ``weight * value`` to each
pair's loss before the batch mean, and logs the batch mean of ``value`` under
``terms/<name>``. None of these can come from a prior
(``docs/objective.md#what-a-prior-cannot-express``).
"""

import abc
from dataclasses import dataclass
from typing import Literal, final

import torch

from mipo.batch import PairBatch
from mipo.errors import BatchError
from mipo.needs import NO_NEEDS, Need
from mipo.typing import PerPair


class AbstractTerm(abc.ABC):
    """An additive per-pair loss outside the link."""

    @property
    def needs(self) -> frozenset[Need]:
        """The batch fields this term reads."""
        return NO_NEEDS

    @abc.abstractmethod
    def __call__(self, batch: PairBatch) -> PerPair:
        """The term's value for each pair (before its weight)."""


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ChosenNLL(AbstractTerm):
    r"""Negative log-likelihood of the chosen response (RPO, SimPO's ``sft_weight``).

    - ``"batch_tokens"``: $\frac{B}{N}\sum_t -\log\pi_\theta(y^w_t)$ per pair, with
      $N$ the chosen tokens in the whole batch, so the batch mean is the
      token-level mean cross-entropy (SimPO's and TRL's ``sft`` loss).
    - ``"sequence_mean"``: $-\frac{1}{|y_w|}\sum_t\log\pi_\theta(y^w_t)$.
    - ``"sequence_sum"``: $-\sum_t\log\pi_\theta(y^w_t)$.

    References:
        Pang et al. (RPO), arXiv 2404.19733, Eq. 4; TRL ``loss_type="sft"``;
        SimPO ``sft_weight``.
    """

    normalise: Literal["batch_tokens", "sequence_mean", "sequence_sum"] = "batch_tokens"

    def __call__(self, batch: PairBatch) -> PerPair:
        chosen = batch.chosen
        nll = -chosen.masked_sum(chosen.policy_logps)
        lengths = chosen.lengths
        if self.normalise == "sequence_sum":
            return nll
        if self.normalise == "sequence_mean":
            return nll / lengths
        return nll * (batch.size / lengths.sum())


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class MaskL1(AbstractTerm):
    r"""$\|m[y_w] \odot M\|_1 + \|m[y_l] \odot M\|_1$: SparsePO's L1 on its masks.

    Add it once per mask with its coefficient as the term weight; with one mask
    shared by reward and KL ("sparse-common") the authors halve each coefficient.

    Args:
        field: the mask column (``token_weights`` = reward mask, ``kl_weights``).

    References:
        Christopoulou et al. (SparsePO), arXiv 2410.05102; HEBO/SparsePO
        ``sparse_trainer.py``.
    """

    field: Literal["token_weights", "kl_weights"] = "token_weights"

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need(self.field)})

    def __call__(self, batch: PairBatch) -> PerPair:
        total = torch.zeros_like(batch.chosen.policy_logps[:, 0])
        for role, side in (("chosen", batch.chosen), ("rejected", batch.rejected)):
            mask = getattr(side, self.field)
            if mask is None:
                raise BatchError(f"{role}.{self.field}: MaskL1 needs this column")
            total = total + side.masked_sum(mask.abs())
        return total


__all__ = ["AbstractTerm", "ChosenNLL", "MaskL1"]
