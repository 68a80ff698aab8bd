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
is $\le 0$ ($\sum_j \max(I_j, 0) = 0$) the prior is used alone ($s = p$). A span
of at most one position gets weight 0, as in the released code. The weights are
constants (detached).

The ``"sequence"`` span is the released code's: every non-padding token of the
*unshifted* row, the first prompt token included. That token predicts nothing,
so it has no place on mipo's shifted axis; its score travels in
``Side.first_token_attribution`` and it takes index $k = 0$, counts in $n$ and
in $\sum_j \max(I_j, 0)$, and its own weight is dropped afterwards, exactly as
the code drops the weights' first column.

References:
    Yang et al., arXiv 2505.19653 v3, Sec. 4.2, Eq. 7-8 ($\sigma = T/4$, i.e.
    $d = 4$); released code ``trainers.py``
    (``_compute_token_importance_weights``) at ``e04a0926``: the normalisation of
    $p$, the mean-1 rescale, the $\sigma \ge 1$ floor, the $d \ge 1$ clamp and the
    zero weights of a one-token span are the code's; the paper does not state
    them. Notes: ``docs/recipe_notes/ti_dpo.md``.
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
        prior_sigma_div: $d \ge 1$ in $\sigma = \max(1, n/d)$; 4 is the paper's
            $\sigma = T/4$ (Eq. 7), 8 the released ``tidpo.yaml``. Values below 1
            are refused: the released code silently raises them to 1.
        span: the positions the weights are spread over. ``"response"`` (the
            paper's intent): the response tokens, EOS included. ``"sequence"``
            (the released code): every non-padding token of the row, the first
            prompt token included (read from ``first_token_attribution``); only
            the response weights enter the loss, so their total then depends on
            the prompt length.

    Example:
        >>> import torch
        >>> from mipo import Side
        >>> side = Side(policy_logps=torch.zeros(1, 3),
        ...             response_mask=torch.tensor([[False, True, True]]),
        ...             attribution_scores=torch.tensor([[5.0, 1.0, 3.0]]))
        >>> GradientAttributionWeights(lam=1.0).weigh(side)  # 2 * (1/4, 3/4)
        tensor([[0.0000, 0.5000, 1.5000]])

    References:
        arXiv 2505.19653 v3, Eq. 7-8; ``docs/recipe_notes/ti_dpo.md``.
    """

    lam: float = 0.7
    prior_sigma_div: float = 4.0
    span: Literal["response", "sequence"] = "response"

    def __post_init__(self) -> None:
        if not 0.0 <= self.lam <= 1.0:
            raise CompositionError(
                f"GradientAttributionWeights.lam: must be in [0, 1], got {self.lam}"
            )
        if not (math.isfinite(self.prior_sigma_div) and self.prior_sigma_div >= 1.0):
            raise CompositionError(
                "GradientAttributionWeights.prior_sigma_div: must be finite and >= 1 "
                "(the released code raises smaller values to 1), got "
                f"{self.prior_sigma_div}"
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
        # Everything below is a constant: the weights carry no gradient.
        scores = scores.detach()
        span, lead = self._span(side)
        zero = torch.zeros_like(scores)
        # ``lead`` (0 or 1 per row) is the first token of the "sequence" span: it
        # has index 0 and enters every sum, but holds no place on the shifted axis.
        has_lead = (lead is not None) * 1.0
        n = span.sum(dim=-1).to(scores.dtype) + has_lead
        k = torch.cumsum(span.to(scores.dtype), dim=-1) - 1.0 + has_lead
        centre = ((n - 1.0) / 2.0)[:, None]
        sigma = (n / self.prior_sigma_div).clamp(min=1.0)[:, None]
        gauss = torch.where(span, torch.exp(-0.5 * ((k - centre) / sigma) ** 2), zero)
        lead_gauss = has_lead * torch.exp(-0.5 * (centre[:, 0] / sigma[:, 0]) ** 2)
        gauss_total = gauss.sum(dim=-1) + lead_gauss
        prior, lead_prior = gauss / gauss_total[:, None], lead_gauss / gauss_total
        positive = torch.where(span, scores.clamp(min=0.0), zero)
        lead_positive = zero[:, 0] if lead is None else lead.detach().clamp(min=0.0)
        total = positive.sum(dim=-1) + lead_positive
        has_mass = total > 0.0
        safe = torch.where(has_mass, total, torch.ones_like(total))
        share = torch.where(has_mass[:, None], positive / safe[:, None], prior)
        lead_share = torch.where(has_mass, lead_positive / safe, lead_prior)
        mixed = self.lam * share + (1.0 - self.lam) * prior
        lead_mixed = self.lam * lead_share + (1.0 - self.lam) * lead_prior
        scale = n / (mixed.sum(dim=-1) + has_lead * lead_mixed)
        weights = torch.where(span, mixed * scale[:, None], zero)
        # the released code gives a span of at most one token weight 0
        return torch.where((n > 1.0)[:, None], weights, zero)

    def _span(self, side: Side) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.span == "response":
            return side.response_mask, None
        if side.sequence_mask is None:
            raise BatchError(
                "sequence_mask: GradientAttributionWeights(span='sequence') needs the "
                "non-padding mask"
            )
        if side.first_token_attribution is None:
            raise BatchError(
                "first_token_attribution: GradientAttributionWeights(span='sequence') "
                "needs the score of each row's first token (the trainer supplies it)"
            )
        outside = side.response_mask & ~side.sequence_mask
        bad = outside.any(dim=-1).nonzero().flatten().tolist()
        if bad:
            raise BatchError(
                f"sequence_mask: rows {bad} have response tokens outside the sequence "
                f"mask"
            )
        return side.sequence_mask, side.first_token_attribution


__all__ = ["GradientAttributionWeights"]
