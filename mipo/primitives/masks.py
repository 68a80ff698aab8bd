r"""Mask sources: where SparsePO/MaPO token masks $m^u_t$, $m^d_t$ come from.

A source holds hyperparameters only. A source that needs a model declares it
as a service (:mod:`mipo.services`); the trainer runs the mask model
(:mod:`mipo.training.services.masks`) and writes the masks into the batch fields ``token_weights``
($m^u$, reward mask) and ``kl_weights`` ($m^d$, KL mask) in place of data
columns. :class:`MaskWeights` reads them back, so the masks reach the objective
through the token-interpolation prior and the sequential-KL prior:

$$ \log\zeta(y) = \sum_t\big[(1-m^u_t)\log\pi_\theta(y_t|s_t) + m^u_t\log\pi_{ref}(y_t|s_t)\big]
                 - \sum_t m^d_t\,D^{fwd}_t. $$

- :class:`ActivationMasks` (MaPO): $m^u = m^d$ from the reference model's
  activations, a constant (no gradient).
- :class:`LearnedMasks` (SparsePO): a small network over the reference model's
  hidden states; its parameters are trained with the policy through $J$ (the L1
  terms :class:`~mipo.primitives.MaskL1` keep them sparse). Gradients reach the
  mask parameters only: the reference states are constants.

References:
    Christopoulou et al., "SparsePO: Controlling Preference Alignment of LLMs via
    Sparse Token Masks", arXiv 2410.05102, Sec. 3;
    ``docs/recipe_notes/sparsepo.md`` (SparsePO's prior, class G).
"""

import abc
from dataclasses import dataclass
from typing import Literal, final

from mipo.batch import Side
from mipo.errors import BatchError, CompositionError
from mipo.needs import NO_NEEDS, Need
from mipo.primitives.weighter import AbstractSequenceWeighter
from mipo.services import AbstractServiceSpec, ActivationMasking, LearnedMasking
from mipo.typing import TokenWeights

ActivationGroup = Literal["mlp", "attn", "resid", "logits"]
ACTIVATION_GROUPS: tuple[ActivationGroup, ...] = ("mlp", "attn", "resid", "logits")


class AbstractMaskSource(abc.ABC):
    """Hyperparameters of a per-token mask model that the trainer builds."""

    @property
    @abc.abstractmethod
    def needs(self) -> frozenset[Need]:
        """What the trainer must compute to build the masks."""

    @property
    @abc.abstractmethod
    def services(self) -> tuple[AbstractServiceSpec, ...]:
        """The mask model the trainer runs; none when the masks are data columns."""

    @property
    def l1_share(self) -> float:
        """Factor on each L1 coefficient: SparsePO halves both for one common
        learned mask, so the shared mask is not penalised twice."""
        return 1.0

    @property
    def independent(self) -> bool:
        """True when the reward and KL masks differ (two outputs)."""
        return False

    @property
    def weight_decay(self) -> float:
        """Weight decay of the mask parameters (their own optimiser group)."""
        return 0.0


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class DataMasks(AbstractMaskSource):
    """Masks read from the data set's ``token_weights`` / ``kl_weights`` columns
    (precomputed offline); no mask model."""

    @property
    def needs(self) -> frozenset[Need]:
        return NO_NEEDS

    @property
    def services(self) -> tuple[AbstractServiceSpec, ...]:
        return ()


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ActivationMasks(AbstractMaskSource):
    r"""MaPO's masks from reference activations (``docs/recipe_notes/sparsepo.md``).

    For each hooked activation $a_t \in \mathbb{R}^d$ of the reference model at the
    state $s_t$: $\bar a_t = \frac1d\sum_i a_{t,i}$, min-max rescaled over the
    response tokens of its sequence,
    $\hat a_t = (\bar a_t - \min_{t'}\bar a_{t'})/(\max_{t'}\bar a_{t'} - \min_{t'}\bar a_{t'})$
    (the authors z-normalise first, which is affine and changes nothing), averaged
    within each group and then across groups: $m_t \in [0, 1]$, used for both the
    reward and the KL, detached.

    Args:
        groups: any non-empty subset of ``mlp`` (MLP post-activation), ``attn``
            (q, k, v projections and the attention output), ``resid`` (embedding
            output, every layer's output, the final norm) and ``logits``.
    """

    groups: tuple[ActivationGroup, ...] = ACTIVATION_GROUPS

    def __post_init__(self) -> None:
        if not self.groups:
            raise CompositionError("ActivationMasks: groups must not be empty")
        unknown = sorted(set(self.groups) - set(ACTIVATION_GROUPS))
        if unknown:
            raise CompositionError(
                f"ActivationMasks.groups: unknown {unknown}; choose from "
                f"{list(ACTIVATION_GROUPS)}"
            )
        if len(set(self.groups)) != len(self.groups):
            raise CompositionError(f"ActivationMasks.groups: repeated in {self.groups}")

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.REFERENCE_ACTIVATIONS})

    @property
    def services(self) -> tuple[AbstractServiceSpec, ...]:
        return (ActivationMasking(groups=tuple(self.groups)),)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class LearnedMasks(AbstractMaskSource):
    r"""SparsePO's learned masks (``simple_all``; ``docs/recipe_notes/sparsepo.md``).

    $m_t = \mathrm{ReLU}\big(\sum_{\ell=1}^{L} c_\ell\,\mathrm{drop}(\mathrm{ReLU}(
    a_\ell^\top \mathrm{LN}(h^{ref}_{\ell,t}) + b_\ell))\big)$ over the reference
    hidden states of all $L$ layers (embedding excluded, the last one after the
    final norm), one shared LayerNorm; $m_t \ge 0$, unbounded above.

    Args:
        independent: two networks, one for $m^u$ and one for $m^d$
            ("sparse-indp"); False shares one ("sparse-common").
        dropout: dropout after each ReLU (``mask_dropout``).
        mask_weight_decay: weight decay of the mask parameters.
        mixer_init: ``None`` keeps PyTorch's default initialisation of the
            mixer ``Linear(L, 1)``, as the authors' code does; a value $c$ starts
            every mixer weight at $c/L$ ($c = 1$: the plain mean of the per-layer
            scores). With the default, the mixer's sum is negative at every token
            for some seeds, the final ReLU zeroes the mask everywhere and no
            gradient ever reaches the masks or the policy (seen on SmolLM2,
            ``docs/learned_priors.md``).
    """

    independent_masks: bool = False
    dropout: float = 0.01
    mask_weight_decay: float = 0.01
    mixer_init: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            raise CompositionError(
                f"LearnedMasks.dropout: must be in [0, 1), got {self.dropout}"
            )
        if self.mask_weight_decay < 0:
            raise CompositionError(
                f"LearnedMasks.mask_weight_decay: must be >= 0, got "
                f"{self.mask_weight_decay}"
            )

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.REFERENCE_HIDDEN_LAYERS})

    @property
    def services(self) -> tuple[AbstractServiceSpec, ...]:
        return (
            LearnedMasking(
                independent=self.independent_masks,
                dropout=self.dropout,
                mixer_init=self.mixer_init,
                weight_decay=self.mask_weight_decay,
            ),
        )

    @property
    def independent(self) -> bool:
        return self.independent_masks

    @property
    def l1_share(self) -> float:
        # one network serves both masks: each L1 coefficient is halved
        return 1.0 if self.independent_masks else 0.5

    @property
    def weight_decay(self) -> float:
        return self.mask_weight_decay


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class MaskWeights(AbstractSequenceWeighter):
    r"""$w_t = m_t$: the reward mask (``token_weights``) or the KL mask
    (``kl_weights``) that the trainer computed from ``source``.

    Args:
        source: the mask model's hyperparameters.
        field: ``token_weights`` ($m^u$) or ``kl_weights`` ($m^d$).
    """

    source: AbstractMaskSource
    field: Literal["token_weights", "kl_weights"] = "token_weights"

    def __post_init__(self) -> None:
        if not isinstance(self.source, AbstractMaskSource):
            raise CompositionError("MaskWeights: source must be a mask source")

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need(self.field)}) | self.source.needs

    def weigh(self, side: Side) -> TokenWeights:
        weights = getattr(side, self.field)
        if weights is None:
            raise BatchError(
                f"{self.field}: MaskWeights needs the masks of {self.source!r}"
            )
        return weights


__all__ = [
    "ACTIVATION_GROUPS",
    "AbstractMaskSource",
    "ActivationMasks",
    "DataMasks",
    "LearnedMasks",
    "MaskWeights",
]
