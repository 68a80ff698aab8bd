r"""Priors $\zeta$: what the policy's log-probability is measured against.

The MI-DPO logit is $z = \beta\,[r(y_w) - r(y_l)] - m$ with the implied reward

$$ r(y) = \log\pi_\theta(y|x) - \log\zeta(y)
        = \sum_t w_t\, l_t(y) + o(y), $$

where the prior supplies the per-token log-ratio $l_t$ (weighted by the token
weighter $w_t$) and a sequence-level offset $o(y)$ that token weights do not
touch (length and sequential-KL factors). A prior returns both as
:class:`PriorTerms`, one per side.

Priors built from $\pi_\theta$ carry a ``differentiable`` flag: the class-G
reductions of ``objective.md`` (SimPO, TIS-DPO, TDPO1, SparsePO) hold in value
always but in gradient only when autograd differentiates through $\zeta$.
TDPO2 needs a role-dependent stop-gradient (class S), which
:class:`SequentialKLPenalty` expresses with ``detach_role``.

References:
    Tutnov, Grosnit, Bou-Ammar, "Many of Your DPOs are Secretly One", arXiv
    2501.01544 (the loss); the per-method priors are mipo's own algebra
    (``docs/objective.md#exactness-classes``).
"""

import abc
from dataclasses import dataclass
from typing import Literal, final

import torch

from mipo.batch import PairBatch, Side
from mipo.errors import BatchError, CompositionError
from mipo.needs import NO_NEEDS, Need
from mipo.primitives.weighter import AbstractTokenWeighter
from mipo.typing import PerPair, TokenValues

Role = Literal["chosen", "rejected"]


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class PriorTerms:
    r"""One side's share of the implied reward: $r(y) = \sum_t w_t l_t + o(y)$.

    Args:
        token_log_ratio: $l_t$, weighted by the token weighter.
        offset: $o(y)$, added after the weighted sum.
    """

    token_log_ratio: TokenValues
    offset: PerPair


class AbstractPrior(abc.ABC):
    """A prior zeta: per side, the token log-ratio l_t and the offset o(y)."""

    @property
    def needs(self) -> frozenset[Need]:
        """The batch fields this prior reads."""
        return NO_NEEDS

    @abc.abstractmethod
    def __call__(self, batch: PairBatch) -> tuple[PriorTerms, PriorTerms]:
        """Terms for the chosen and the rejected side."""


class AbstractSequencePrior(AbstractPrior):
    """A prior that looks at one response at a time (all but pair-coupled ones)."""

    @abc.abstractmethod
    def terms(self, side: Side) -> PriorTerms:
        """Terms for one side."""

    def __call__(self, batch: PairBatch) -> tuple[PriorTerms, PriorTerms]:
        return self.terms(batch.chosen), self.terms(batch.rejected)


def _zeros(side: Side) -> PerPair:
    return torch.zeros_like(side.policy_logps[:, 0])


def _reference(side: Side, owner: str) -> TokenValues:
    if side.reference_logps is None:
        raise BatchError(f"reference_logps: {owner} needs reference log-probs")
    return side.reference_logps


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ReferencePrior(AbstractSequencePrior):
    r"""$\zeta = \pi_{ref}(y|x)$, so $l_t = \log\pi_\theta(y_t|s_t) - \log\pi_{ref}(y_t|s_t)$.

    With the sum weighter and the log-sigmoid link this is DPO. Class E: the
    reference is a constant, values and gradients are exact.

    References:
        Rafailov et al., arXiv 2305.18290, Eq. 7.
    """

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.REFERENCE_LOGPS})

    def terms(self, side: Side) -> PriorTerms:
        log_ratio = side.policy_logps - _reference(side, "ReferencePrior")
        return PriorTerms(token_log_ratio=log_ratio, offset=_zeros(side))


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class UniformPrior(AbstractSequencePrior):
    r"""$\zeta \equiv c$ (improper uniform), so $l_t = \log\pi_\theta(y_t|s_t)$.

    Reference-free DPO, and the base of SimPO and ORPO. Class E.

    References:
        Rafailov et al., arXiv 2305.18290 (``reference_free`` in the authors'
        code); ``docs/objective.md#exactness-classes``.
    """

    def terms(self, side: Side) -> PriorTerms:
        return PriorTerms(token_log_ratio=side.policy_logps, offset=_zeros(side))


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class TemperedReferencePrior(AbstractSequencePrior):
    r"""$\zeta = \pi_{ref}^{1/a}$, so $l_t = \log\pi_\theta - \tfrac{1}{a}\log\pi_{ref}$.

    With the objective's scale set to $a\beta$ this is H-DPO:
    $-\log\sigma(\beta[a S_\pi(y_w) - S_{ref}(y_w)] - \beta[a S_\pi(y_l) - S_{ref}(y_l)])$.
    Class E. (H-DPO's loss is recalled, not read from the PDF:
    ``docs/recipe_notes/hdpo.md``.)

    Args:
        temperature: H-DPO's entropy coefficient $a_H > 0$; 1 gives DPO.

    References:
        Omura, Fujita, Kataoka, "Entropy Controllable DPO", arXiv 2411.07595.
    """

    temperature: float

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise CompositionError("TemperedReferencePrior: temperature must be > 0")

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.REFERENCE_LOGPS})

    def terms(self, side: Side) -> PriorTerms:
        reference = _reference(side, "TemperedReferencePrior")
        log_ratio = side.policy_logps - reference / self.temperature
        return PriorTerms(token_log_ratio=log_ratio, offset=_zeros(side))


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class GeometricMeanPrior(AbstractSequencePrior):
    r"""$\log\zeta(y) = (1 - 1/|y|)\,S_\pi(y)$, so $S_\pi(y) - \log\zeta(y) = S_\pi(y)/|y|$.

    SimPO's length normalisation as a prior: $\zeta = \pi_\theta / GM_\theta$ with
    $GM_\theta(y) = \pi_\theta(y|x)^{1/|y|}$. Per token, $l_t = \log\pi_\theta(y_t|s_t)/|y|$.
    $|y|$ counts the EOS.

    Class G: $\zeta$ is built from $\pi_\theta$. With ``differentiable=False`` the
    prior is detached, $l_t = \log\pi_\theta - \mathrm{sg}[(1 - 1/|y|)\log\pi_\theta]$:
    the same value, but the gradient per side is $|y|$ times SimPO's.

    Args:
        differentiable: let gradients flow through $\zeta$ (SimPO's gradient).

    References:
        Meng, Xia, Chen, arXiv 2405.14734, Eq. 4; ``docs/recipe_notes/simpo.md``.
    """

    differentiable: bool = True

    def terms(self, side: Side) -> PriorTerms:
        inverse_length = 1.0 / side.lengths.clamp(min=1.0)[:, None]
        logps = side.policy_logps
        if self.differentiable:
            log_ratio = logps * inverse_length
        else:
            log_ratio = logps - (logps * (1.0 - inverse_length)).detach()
        return PriorTerms(token_log_ratio=log_ratio, offset=_zeros(side))


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class TokenInterpolationPrior(AbstractPrior):
    r"""Per-token geometric interpolation between policy and reference.

    $$ \log\zeta(y) = \sum_t \big[(1 - v_t)\log\pi_\theta(y_t|s_t) + v_t\log\pi_{ref}(y_t|s_t)\big], $$

    so $l_t = v_t\,[\log\pi_\theta(y_t|s_t) - \log\pi_{ref}(y_t|s_t)]$, computed
    directly (never as $S_\pi - \log\zeta$, which cancels badly in fp32). The
    weights $v_t$ come from any token weighter: TIS-DPO's data columns,
    SparsePO/MaPO reward masks, OTPO's transport weights. $v \equiv 1$ is the
    reference prior (DPO); $v \equiv 0$ is $\zeta = \pi_\theta$ and a constant loss
    $\log 2$.

    Class G: with ``differentiable=False``,
    $l_t = \log\pi_\theta - \mathrm{sg}[(1-v_t)\log\pi_\theta] - v_t\log\pi_{ref}$:
    equal values, different gradients.

    Args:
        weights: the weighter that gives $v_t$.
        differentiable: let gradients flow through $\zeta$.

    References:
        Liu et al. (TIS-DPO), arXiv 2410.04350; Christopoulou et al. (SparsePO),
        arXiv 2410.05102;
        ``docs/objective.md#the-general-token-factorised-prior``.
    """

    weights: AbstractTokenWeighter
    differentiable: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.weights, AbstractTokenWeighter):
            raise CompositionError(
                "TokenInterpolationPrior: weights must be a token weighter"
            )

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.REFERENCE_LOGPS}) | self.weights.needs

    def __call__(self, batch: PairBatch) -> tuple[PriorTerms, PriorTerms]:
        chosen_weights, rejected_weights = self.weights(batch)
        return (
            self._terms(batch.chosen, chosen_weights),
            self._terms(batch.rejected, rejected_weights),
        )

    def _terms(self, side: Side, weights: TokenValues) -> PriorTerms:
        reference = _reference(side, "TokenInterpolationPrior")
        logps = side.policy_logps
        if self.differentiable:
            log_ratio = weights * (logps - reference)
        else:
            log_ratio = logps - ((1.0 - weights) * logps).detach() - weights * reference
        return PriorTerms(token_log_ratio=log_ratio, offset=_zeros(side))


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class BatchPrior(AbstractSequencePrior):
    r"""$\log\zeta(y_t|s_t)$ read from the batch (``prior_logps``): a separately
    trained prior, e.g. one fitted to the policy's marginal by the Blahut–Arimoto
    prior step (``docs/objective.md#the-prior-step-blahut-arimoto``).

    $l_t = \log\pi_\theta(y_t|s_t) - \log\zeta(y_t|s_t)$.

    Minimising $J$ over an unconstrained prior is degenerate
    (``docs/objective.md#the-degeneracy``): lowering $\zeta(y_w)$ drives $J \to 0$
    with the policy fixed. So this prior refuses a
    ``prior_logps`` tensor that carries gradient: train the prior by its own
    objective and pass its log-probs detached.
    """

    def terms(self, side: Side) -> PriorTerms:
        prior = side.prior_logps
        if prior is None:
            raise BatchError("prior_logps: BatchPrior needs the prior's log-probs")
        if prior.requires_grad:
            raise CompositionError(
                "BatchPrior: prior_logps requires grad, so J would be optimised over the "
                "prior, which is degenerate (J -> 0 with the policy fixed; "
                "docs/objective.md#the-degeneracy). Train the prior by its own "
                "objective and pass it detached."
            )
        return PriorTerms(
            token_log_ratio=side.policy_logps - prior, offset=_zeros(side)
        )

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.PRIOR_LOGPS})


class AbstractPriorFactor(abc.ABC):
    r"""A multiplicative factor $f(y)$ on a prior, $\zeta' = \zeta\,f$: it adds
    $-\log f(y)$ to the implied reward of each side, outside the token weights."""

    @property
    def needs(self) -> frozenset[Need]:
        """The batch fields this factor reads."""
        return NO_NEEDS

    @abc.abstractmethod
    def __call__(self, batch: PairBatch) -> tuple[PerPair, PerPair]:
        """$\\log f(y)$ for the chosen and the rejected side."""


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class LengthPenalty(AbstractPriorFactor):
    r"""$f(y) = e^{-c\,|y|}$: with the reference prior, R-DPO's length-penalised prior.

    $-\beta\log\zeta(y) = -\beta S_{ref}(y) + \beta c\,|y|$, so with
    $c = \alpha_{len}/\beta$ the logit is $\beta h + \alpha_{len}(|y_w| - |y_l|)$.
    (R-DPO's sign is unverified against its PDF: ``docs/recipe_notes/rdpo.md``.)
    Class E.

    Args:
        rate: $c$, per response token (EOS included).

    References:
        Park et al. (R-DPO), arXiv 2403.19159.
    """

    rate: float

    def __call__(self, batch: PairBatch) -> tuple[PerPair, PerPair]:
        return -self.rate * batch.chosen.lengths, -self.rate * batch.rejected.lengths


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class SequentialKLPenalty(AbstractPriorFactor):
    r"""$f(y) = \exp(-\kappa \sum_t v_t D_t)$: a sequential KL on the prior.

    $D_t$ is the full-vocabulary KL at the state before token $t$, forward
    $KL(\pi_{ref}\|\pi_\theta)$ or reverse $KL(\pi_\theta\|\pi_{ref})$, and $v_t$ optional
    token weights (SparsePO's KL mask, TIS-DPO's token weights). The implied
    reward gains $+\kappa\sum_t v_t D_t$.

    - TDPO1: ``kappa=1``, forward, no detach (class G).
    - TDPO2: ``kappa=alpha_tdpo``, forward, ``detach_role="chosen"``: the chosen
      KL is a constant, the rejected KL is live (class S).
    - TIS-DPO ``token_level``: ``kappa=-alpha_tis``, reverse, weighted by the
      token weights (note the opposite orientation).

    With ``kappa=0`` the factor is neutral and reads nothing (no KL is computed).

    Args:
        kappa: $\kappa$; may be negative.
        direction: ``"forward"`` for $KL(\pi_{ref}\|\pi_\theta)$, ``"reverse"`` for
            $KL(\pi_\theta\|\pi_{ref})$.
        detach_role: the role whose KL is a constant (``None``: both live).
        weights: optional weighter for $v_t$ (``None``: $v_t = 1$).

    References:
        Zeng et al. (TDPO), arXiv 2404.11999, Eq. for TDPO1/TDPO2; Liu et al.
        (TIS-DPO), arXiv 2410.04350; ``docs/recipe_notes/tis_dpo.md``.
    """

    kappa: float
    direction: Literal["forward", "reverse"] = "forward"
    detach_role: Role | None = None
    weights: AbstractTokenWeighter | None = None

    @property
    def needs(self) -> frozenset[Need]:
        if self.kappa == 0.0:
            return NO_NEEDS  # the neutral factor reads nothing
        need = Need.KL_FORWARD if self.direction == "forward" else Need.KL_REVERSE
        extra = self.weights.needs if self.weights is not None else NO_NEEDS
        return frozenset({need}) | extra

    def __call__(self, batch: PairBatch) -> tuple[PerPair, PerPair]:
        if self.kappa == 0.0:
            zeros = torch.zeros_like(batch.chosen.policy_logps[:, 0]).detach()
            return zeros, zeros
        field = "kl_forward" if self.direction == "forward" else "kl_reverse"
        if self.weights is None:
            weights: tuple[TokenValues | None, TokenValues | None] = (None, None)
        else:
            weights = self.weights(batch)
        out = []
        for role, side, side_weights in zip(
            ("chosen", "rejected"), (batch.chosen, batch.rejected), weights, strict=True
        ):
            divergence = getattr(side, field)
            if divergence is None:
                raise BatchError(
                    f"{role}.{field}: SequentialKLPenalty needs this field"
                )
            if side_weights is not None:
                divergence = side_weights * divergence
            total = side.masked_sum(divergence)
            if role == self.detach_role:
                total = total.detach()
            out.append(-self.kappa * total)
        return out[0], out[1]


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ProductPrior(AbstractPrior):
    r"""$\zeta = \zeta_{base}\prod_k f_k$: a prior times multiplicative factors.

    $r(y) = \sum_t w_t\,l^{base}_t + o^{base}(y) - \sum_k \log f_k(y)$.

    Example: TDPO2's prior is
    ``ProductPrior(base=ReferencePrior(), factors=(SequentialKLPenalty(kappa=0.5,
    detach_role="chosen"),))``; R-DPO's is ``ReferencePrior()`` times
    ``LengthPenalty(rate=alpha_len / beta)``.
    """

    base: AbstractPrior
    factors: tuple[AbstractPriorFactor, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.base, AbstractPrior):
            raise CompositionError("ProductPrior: base must be a prior")
        for factor in self.factors:
            if not isinstance(factor, AbstractPriorFactor):
                raise CompositionError(
                    f"ProductPrior: {factor!r} is not a prior factor"
                )

    @property
    def needs(self) -> frozenset[Need]:
        return self.base.needs.union(*(factor.needs for factor in self.factors))

    def __call__(self, batch: PairBatch) -> tuple[PriorTerms, PriorTerms]:
        chosen, rejected = self.base(batch)
        chosen_offset, rejected_offset = chosen.offset, rejected.offset
        for factor in self.factors:
            log_chosen, log_rejected = factor(batch)
            chosen_offset = chosen_offset - log_chosen
            rejected_offset = rejected_offset - log_rejected
        return (
            PriorTerms(token_log_ratio=chosen.token_log_ratio, offset=chosen_offset),
            PriorTerms(
                token_log_ratio=rejected.token_log_ratio, offset=rejected_offset
            ),
        )


__all__ = [
    "AbstractPrior",
    "AbstractPriorFactor",
    "AbstractSequencePrior",
    "BatchPrior",
    "GeometricMeanPrior",
    "LengthPenalty",
    "PriorTerms",
    "ProductPrior",
    "ReferencePrior",
    "Role",
    "SequentialKLPenalty",
    "TemperedReferencePrior",
    "TokenInterpolationPrior",
    "UniformPrior",
]
