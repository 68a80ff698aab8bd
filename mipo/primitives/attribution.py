r"""TI-DPO's token weights: gradient attribution mixed with a Gaussian position prior.

Over the $n$ positions of a span (index $k = 0, \dots, n-1$ in order), with
attribution scores $I_k$ (:func:`mipo.training.services.attribution.attribution_scores`):

$$ s_k = \frac{\max(I_k, 0)}{\sum_j \max(I_j, 0)}, \qquad
   p_k = \frac{\exp\!\big(-\tfrac12 ((k - \mu)/\sigma)^2\big)}
              {\sum_j \exp\!\big(-\tfrac12 ((j - \mu)/\sigma)^2\big)}, \qquad
   \mu = \frac{n - 1}{2},\ \sigma = \max\!\big(1, \tfrac{n}{d}\big), $$

$$ w_k = n\,\frac{\lambda s_k + (1 - \lambda) p_k}
               {\sum_j \big(\lambda s_j + (1 - \lambda) p_j\big)} , $$

so the weights have mean 1 over the span and are 0 outside it. When every score
is $\le 0$ ($\sum_j \max(I_j, 0) = 0$) the prior is used alone ($s = p$). The
weights are constants (detached).

References:
    Yang et al., arXiv 2505.19653 v3, Sec. 4.2, Eq. 7-8 ($\sigma = T/4$, i.e.
    $d = 4$); released code ``gradient_attribution.py`` at ``e04a0926`` (the
    normalisation of $p$, the mean-1 rescale and the $\sigma \ge 1$ floor are
    the code's; the paper does not state them). methods.md §11.1, §11.3 (2)-(3).
"""

import math
from dataclasses import dataclass
from typing import Literal, final

import torch

from mipo.batch import Side
from mipo.errors import BatchError, CompositionError
from mipo.needs import Need
from mipo.primitives.weighter import AbstractSequenceWeighter
from mipo.services import AbstractServiceSpec, GradientAttribution
from mipo.typing import TokenWeights


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class GradientAttributionWeights(AbstractSequenceWeighter):
    r"""$w_t = n\,(\lambda s_t + (1-\lambda) p_t)/\sum(\cdot)$: attribution plus a
    Gaussian position prior, mean 1 over the span (module docstring).

    Args:
        lam: $\lambda \in [0, 1]$, the share of the attribution scores (1: scores
            only, 0: the position prior only).
        prior_sigma_div: $d$ in $\sigma = \max(1, n/d)$; 4 is the paper's
            $\sigma = T/4$ (Eq. 7), 8 the released ``tidpo.yaml``.
        span: the positions the weights are spread over. ``"response"`` (the
            paper's intent): the response tokens, EOS included. ``"sequence"``
            (the released code): every non-padding position of the shifted axis,
            prompt included; only the response weights enter the loss, so their
            total then depends on the prompt length.

    Note:
        On the shifted axis the first prompt token is no label, so the
        ``"sequence"`` span starts at the second token; the released code also
        counts the first token in $n$ and in $\sum_j \max(I_j, 0)$. The
        difference is one prompt token per row.

    Example:
        >>> import torch
        >>> from mipo import Side
        >>> side = Side(policy_logps=torch.zeros(1, 3),
        ...             response_mask=torch.tensor([[False, True, True]]),
        ...             attribution_scores=torch.tensor([[5.0, 1.0, 3.0]]))
        >>> GradientAttributionWeights(lam=1.0).weigh(side)  # 2 * (1/4, 3/4)
        tensor([[0.0000, 0.5000, 1.5000]])

    References:
        arXiv 2505.19653 v3, Eq. 7-8; methods.md §11.3 (2)-(3), §11.8.
    """

    lam: float = 0.7
    prior_sigma_div: float = 4.0
    span: Literal["response", "sequence"] = "response"

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise CompositionError(
                f"GradientAttributionWeights.lam: must be in [0, 1], got {self.lam}"
            )
        if not (math.isfinite(self.prior_sigma_div) and self.prior_sigma_div > 0.0):
            raise CompositionError(
                "GradientAttributionWeights.prior_sigma_div: must be finite and > 0, "
                f"got {self.prior_sigma_div}"
            )
        if self.span not in ("response", "sequence"):
            raise CompositionError(
                "GradientAttributionWeights.span: must be 'response' or 'sequence', "
                f"got {self.span!r}"
            )

    @property
    def needs(self) -> frozenset[Need]:
        if self.span == "sequence":
            return frozenset({Need.ATTRIBUTION_SCORES, Need.SEQUENCE_MASK})
        return frozenset({Need.ATTRIBUTION_SCORES})

    @property
    def services(self) -> tuple[AbstractServiceSpec, ...]:
        return (GradientAttribution(),)

    def weigh(self, side: Side) -> TokenWeights:
        scores = side.attribution_scores
        if scores is None:
            raise BatchError(
                "attribution_scores: GradientAttributionWeights needs the policy's "
                "attribution scores"
            )
        span = self._span(side)
        # Everything below is a constant: the weights carry no gradient.
        scores = scores.detach()
        zero = torch.zeros_like(scores)
        n = span.sum(dim=-1, keepdim=True).to(scores.dtype)
        # k: the index of each position within its row's span (0 .. n-1).
        k = torch.cumsum(span.to(scores.dtype), dim=-1) - 1.0
        centre = (n - 1.0) / 2.0
        sigma = (n / self.prior_sigma_div).clamp(min=1.0)
        prior = torch.where(span, torch.exp(-0.5 * ((k - centre) / sigma) ** 2), zero)
        prior = prior / prior.sum(dim=-1, keepdim=True)
        positive = torch.where(span, scores.clamp(min=0.0), zero)
        total = positive.sum(dim=-1, keepdim=True)
        has_mass = total > 0.0
        share = torch.where(
            has_mass, positive / torch.where(has_mass, total, 1.0), prior
        )
        mixed = self.lam * share + (1.0 - self.lam) * prior
        weights = n * mixed / mixed.sum(dim=-1, keepdim=True)
        return torch.where(span, weights, zero)

    def _span(self, side: Side) -> torch.Tensor:
        if self.span == "response":
            return side.response_mask
        if side.sequence_mask is None:
            raise BatchError(
                "sequence_mask: GradientAttributionWeights(span='sequence') needs the "
                "non-padding mask"
            )
        outside = side.response_mask & ~side.sequence_mask
        bad = outside.any(dim=-1).nonzero().flatten().tolist()
        if bad:
            raise BatchError(
                f"sequence_mask: rows {bad} have response tokens outside the sequence "
                f"mask"
            )
        return side.sequence_mask


__all__ = ["GradientAttributionWeights"]
