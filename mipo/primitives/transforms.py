r"""Weight transforms: raw per-token scores of one response → token weights.

TIS-DPO estimates a raw score per response token from a contrastive pair of
models, $r_t = \log p_+(y_t) - \log p_-(y_t)$ for the chosen response and the
sign-flipped $\log p_-(y_t) - \log p_+(y_t)$ for the rejected one, and maps the
scores of each response to bounded weights. A transform acts on each row
separately, over the positions of ``mask`` only; other positions get 0.

:class:`TransformedWeights` is the token weighter that applies a transform to a
per-token column of the batch, optionally giving the last response token (the
EOS) a fixed weight outside the transform — the authors' code gives it 0.

References:
    Liu et al. (TIS-DPO), ICLR 2025, arXiv 2410.04350; the transforms follow the
    authors' ``preference_datasets.py`` and ``config/transform/*.yaml`` (exlaw/TIS-DPO
    at ``cbad7c1``; notes: ``docs/recipe_notes/tis_dpo.md``).
"""

import abc
import math
from dataclasses import dataclass
from typing import final

import torch

from mipo.batch import PairBatch, Side
from mipo.errors import CompositionError
from mipo.needs import Need
from mipo.primitives.weighter import AbstractTokenWeighter, BatchTokenWeights
from mipo.typing import TokenMask, TokenValues, TokenWeights


class AbstractWeightTransform(abc.ABC):
    """Maps raw scores to weights, row by row, over the masked positions."""

    @abc.abstractmethod
    def __call__(self, scores: TokenValues, mask: TokenMask) -> TokenWeights:
        """Weights (0 outside ``mask``)."""


def _masked(values: TokenValues, mask: TokenMask) -> TokenWeights:
    return torch.where(mask, values, torch.zeros_like(values))


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class IdentityTransform(AbstractWeightTransform):
    """``origin``: the signed scores themselves (possibly negative)."""

    def __call__(self, scores: TokenValues, mask: TokenMask) -> TokenWeights:
        return _masked(scores, mask)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ThresholdTransform(AbstractWeightTransform):
    r"""``threshold``: $w_t = \mathrm{clamp}(r_t, \text{lower}, \text{upper})$."""

    lower: float = -1.0  # config/transform: threshold lower
    upper: float = 1.0  # config/transform: threshold upper

    def __post_init__(self) -> None:
        if not self.lower < self.upper:
            raise CompositionError("ThresholdTransform: lower must be < upper")

    def __call__(self, scores: TokenValues, mask: TokenMask) -> TokenWeights:
        return _masked(scores.clamp(self.lower, self.upper), mask)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ThresholdScaleTransform(AbstractWeightTransform):
    r"""``threshold_and_scale``: clamp to $[\ell, u]$, then map linearly onto $[a, b]$.

    $w_t = a + (\mathrm{clamp}(r_t, \ell, u) - \ell)\,\frac{b - a}{u - \ell}$.
    Closest in the code to the paper's bounded weights, but linear.
    """

    min_value: float = -1.5
    max_value: float = 1.5
    min_scale: float = 0.7
    max_scale: float = 1.3

    def __post_init__(self) -> None:
        if not self.min_value < self.max_value:
            raise CompositionError(
                "ThresholdScaleTransform: min_value must be < max_value"
            )

    def __call__(self, scores: TokenValues, mask: TokenMask) -> TokenWeights:
        clamped = scores.clamp(self.min_value, self.max_value)
        slope = (self.max_scale - self.min_scale) / (self.max_value - self.min_value)
        return _masked(self.min_scale + (clamped - self.min_value) * slope, mask)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class RankTransform(AbstractWeightTransform):
    r"""``rank_based``: ascending rank within the response mapped onto $[a, b]$.

    $w_t = a + \mathrm{rank}_t\,\frac{b - a}{n - 1}$ with ranks $0 \dots n-1$ in
    stable-sort order (equal scores: the earlier position ranks lower); a
    one-token response gets 1. The authors' README uses this transform.
    """

    low: float = 0.7
    high: float = 1.3

    def __call__(self, scores: TokenValues, mask: TokenMask) -> TokenWeights:
        # Masked positions sort last, so the valid ranks are 0 .. n-1 in order.
        keyed = torch.where(mask, scores, torch.full_like(scores, math.inf))
        order = torch.sort(keyed, dim=-1, stable=True).indices
        ranks = torch.sort(order, dim=-1, stable=True).indices.to(scores.dtype)
        count = mask.sum(dim=-1, keepdim=True).to(scores.dtype)
        spread = (count - 1).clamp(min=1)
        weights = self.low + ranks * (self.high - self.low) / spread
        weights = torch.where(count > 1, weights, torch.ones_like(weights))
        return _masked(weights, mask)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class TopFractionTransform(AbstractWeightTransform):
    r"""``binary``: the authors' top-$p$ cut, exactly.

    Over the $n$ scores of a row, $K = \lfloor n\,p/100 \rfloor$ (computed in
    float64, as the code's ``int(len(nums) * top_percent / 100)``). Sorted in
    descending order, slot $i$ gets 1 when $i < K$; tied scores share one
    value, that of the *last* tied slot. So

    $$ w_t = \mathbb{1}\big[\#\{j : r_j \ge r_t\} \le K\big] , $$

    which gives exactly $K$ ones when the scores are distinct and fewer when a
    tie straddles the cut. ``top_percent=100`` maps every token to 1 (the
    authors' default config, which silently makes TIS-DPO plain DPO).

    References:
        ``binary_weight_transform`` in exlaw/TIS-DPO ``preference_datasets.py``
        (at ``cbad7c1``); ``docs/recipe_notes/tis_dpo.md``.
    """

    top_percent: float = 100.0

    def __post_init__(self) -> None:
        if not 0.0 < self.top_percent <= 100.0:
            raise CompositionError(
                "TopFractionTransform: top_percent must be in (0, 100]"
            )

    def __call__(self, scores: TokenValues, mask: TokenMask) -> TokenWeights:
        values = scores.to(torch.float64)
        count = mask.sum(dim=-1, keepdim=True).to(torch.float64)
        keep = torch.floor(count * self.top_percent / 100.0)
        # ascending valid scores, masked ones last (+inf is never below a score)
        ordered = torch.sort(torch.where(mask, values, math.inf), dim=-1).values
        below = torch.searchsorted(ordered, values.contiguous(), side="left")
        at_least = count - below.to(torch.float64)  # #{valid j: r_j >= r_t}
        return _masked((at_least <= keep).to(scores.dtype), mask)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class UniformRandomTransform(AbstractWeightTransform):
    r"""``random``: i.i.d. $U(a, b)$ weights, ignoring the scores (an ablation).

    Seeded per call from ``seed`` and the scores' shape, so a batch gets the same
    weights every time it is seen.
    """

    low: float = 0.7
    high: float = 1.3
    seed: int = 0

    def __call__(self, scores: TokenValues, mask: TokenMask) -> TokenWeights:
        generator = torch.Generator(device="cpu").manual_seed(self.seed)
        noise = torch.rand(scores.shape, generator=generator, dtype=torch.float64)
        weights = (self.low + (self.high - self.low) * noise).to(scores)
        return _masked(weights, mask)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ExponentialTransform(AbstractWeightTransform):
    r"""The paper's form $w_t = k \exp(\mu\,\mathrm{clamp}(r_t, L, U))$.

    **Unverified constants**: the form is recalled from the paper, not read from
    it (``docs/recipe_notes/tis_dpo.md``), and the values of $k, \mu, L, U$ below
    are placeholders, not the authors'. The released code has no exponential. The scores are already oriented per role
    (chosen: $\log p_+ - \log p_-$; rejected: sign-flipped), so one $\mu > 0$
    serves both sides.
    """

    k: float = 1.0
    mu: float = 1.0
    lower: float = -1.0
    upper: float = 1.0

    def __call__(self, scores: TokenValues, mask: TokenMask) -> TokenWeights:
        return _masked(
            self.k * torch.exp(self.mu * scores.clamp(self.lower, self.upper)), mask
        )


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class TransformedWeights(AbstractTokenWeighter):
    r"""Token weights $w_t = f(r)_t$: a transform applied to a per-token column.

    Args:
        source: the weighter giving the raw scores (default: the batch's
            ``token_weights`` column).
        transform: the per-response transform $f$.
        eos_weight: if set, the last response token of each row (the appended
            EOS) is left out of the transform and gets this weight — the TIS-DPO
            code gives it 0 (``docs/recipe_notes/tis_dpo.md``). ``None`` treats it
            as any token.
    """

    source: AbstractTokenWeighter = BatchTokenWeights()
    transform: AbstractWeightTransform = IdentityTransform()
    eos_weight: float | None = None

    @property
    def needs(self) -> frozenset[Need]:
        return self.source.needs

    def __call__(self, batch: PairBatch) -> tuple[TokenWeights, TokenWeights]:
        chosen_scores, rejected_scores = self.source(batch)
        return (
            self._weigh(batch.chosen, chosen_scores),
            self._weigh(batch.rejected, rejected_scores),
        )

    def _weigh(self, side: Side, scores: TokenValues) -> TokenWeights:
        mask = side.response_mask
        if self.eos_weight is None:
            return self.transform(scores.detach(), mask)
        eos = _last_true(mask)
        weights = self.transform(scores.detach(), mask & ~eos)
        return torch.where(eos, torch.full_like(weights, self.eos_weight), weights)


def _last_true(mask: TokenMask) -> TokenMask:
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, torch.full_like(positions, -1)).amax(
        -1, keepdim=True
    )
    return positions == last


__all__ = [
    "AbstractWeightTransform",
    "ExponentialTransform",
    "IdentityTransform",
    "RankTransform",
    "ThresholdScaleTransform",
    "ThresholdTransform",
    "TopFractionTransform",
    "TransformedWeights",
    "UniformRandomTransform",
]
