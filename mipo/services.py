r"""Model-side services as a primitive declares them: hyperparameters only.

Some inputs of a loss are neither data columns nor a plain policy or reference
forward: a response sampled from the policy (TI-DPO's anchor), gradient
attribution scores, token masks from a small network over the reference's
hidden states (SparsePO), a prior fitted to policy samples (MI-DPO's learned
prior). A primitive asks for one by returning a :class:`AbstractServiceSpec` from its
``services`` property; the trainer runs the matching service
(:mod:`mipo.training.services`), which owns the modules, parameters, checkpoint
state and hooks, and fills the batch fields the spec :attr:`~AbstractServiceSpec.provides`.

The objective collects the specs of every primitive reachable from its parts
(:func:`collect_services`) and refuses, when it is built, two different specs
that would fill the same field (:func:`check_services`). A spec is *active* when
the objective's needs include the spec's :attr:`~AbstractServiceSpec.needs`, so a part
switched off (a zero-weight term, a zero-strength KL factor) switches its
services off too.

This module is part of the core: it imports no training code. Writing a new
service means a spec here (or in your own module) and a
:class:`~mipo.training.services.Service` registered for it
(``docs/guides/new_primitive.md``).
"""

import abc
import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import final

from mipo.errors import CompositionError
from mipo.needs import NO_NEEDS, Need


class AbstractServiceSpec(abc.ABC):
    """What a primitive asks the trainer to compute for it (hyperparameters only;
    equal specs are one service)."""

    @property
    @abc.abstractmethod
    def provides(self) -> frozenset[Need]:
        """The needs whose batch fields the service fills."""

    @property
    def needs(self) -> frozenset[Need]:
        """The needs through which primitives ask for this service: it runs only
        when the objective's needs include all of them (default: ``provides``)."""
        return self.provides


def primitives_in(value: object) -> list[object]:
    """Every dataclass instance reachable from ``value`` through dataclass fields,
    tuples and lists (an objective, its slots, their arguments), depth first,
    distinct."""
    found: list[object] = []

    def walk(item: object) -> None:
        if isinstance(item, tuple | list):
            for element in item:
                walk(element)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            if item not in found:
                found.append(item)
            for field in dataclasses.fields(item):
                walk(getattr(item, field.name))

    walk(value)
    return found


def collect_services(
    parts: Iterable[object], needs: frozenset[Need]
) -> tuple[AbstractServiceSpec, ...]:
    """The distinct active specs declared (``services`` property) by every
    primitive reachable from ``parts``, in the order they are found."""
    specs: list[AbstractServiceSpec] = []
    for primitive in primitives_in(tuple(parts)):
        for spec in getattr(primitive, "services", ()):
            if not isinstance(spec, AbstractServiceSpec):
                raise CompositionError(
                    f"{type(primitive).__name__}.services: {spec!r} is not a "
                    f"mipo.services.AbstractServiceSpec"
                )
            if spec.needs <= needs and spec not in specs:
                specs.append(spec)
    return tuple(specs)


def check_services(specs: Iterable[AbstractServiceSpec]) -> None:
    """Refuse two different specs that fill the same field (the reward mask from
    two mask models, two anchors sampled differently)."""
    owner: dict[Need, AbstractServiceSpec] = {}
    for spec in specs:
        for need in sorted(spec.provides, key=lambda n: n.value):
            other = owner.setdefault(need, spec)
            if other != spec:
                raise CompositionError(
                    f"{need.value}: two different services would fill it, {other!r} "
                    f"and {spec!r}; the objective's parts must agree on one"
                )


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class AnchorSampling(AbstractServiceSpec):
    """How the anchor response is sampled from the policy (the released code's
    values; the paper gives none).

    Args:
        max_new_tokens: longest sampled response, EOS included.
        top_k: keep the ``top_k`` most likely tokens (0: no top-k filter).
        top_p: nucleus mass kept, in (0, 1].
        temperature: softmax temperature, > 0.

    References:
        TIDPO ``trainers.py`` at ``e04a0926``: ``do_sample``, top-k 50, top-p 0.95,
        temperature 0.8, ``min(64, max_length - longest prompt)`` new tokens.
    """

    max_new_tokens: int = 64
    top_k: int = 50
    top_p: float = 0.95
    temperature: float = 0.8

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(
                f"AnchorSampling.max_new_tokens: must be >= 1, got {self.max_new_tokens}"
            )
        if self.top_k < 0:
            raise ValueError(f"AnchorSampling.top_k: must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(
                f"AnchorSampling.top_p: must be in (0, 1], got {self.top_p}"
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0.0):
            raise ValueError(
                f"AnchorSampling.temperature: must be finite and > 0, got "
                f"{self.temperature}"
            )

    @property
    def provides(self) -> frozenset[Need]:
        return frozenset({Need.ANCHOR})


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class GradientAttribution(AbstractServiceSpec):
    r"""The policy's gradient attribution of every input token,
    $I_i = \|\nabla_{e_i} \max_v z_{T,v}\|_1$ (TI-DPO, arXiv 2505.19653 v3,
    Eq. 5-6), for the chosen and the rejected rows."""

    @property
    def provides(self) -> frozenset[Need]:
        return frozenset({Need.ATTRIBUTION_SCORES})


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ActivationMasking(AbstractServiceSpec):
    """MaPO's masks from hooked reference activations (one mask for the reward
    and the KL, no parameters).

    Args:
        groups: the activation groups averaged (``mlp``, ``attn``, ``resid``,
            ``logits``).
    """

    groups: tuple[str, ...]

    @property
    def provides(self) -> frozenset[Need]:
        return frozenset({Need.TOKEN_WEIGHTS, Need.KL_WEIGHTS})

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.REFERENCE_ACTIVATIONS})


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class LearnedMasking(AbstractServiceSpec):
    """SparsePO's trainable mask networks over the reference hidden states of
    every layer.

    Args:
        independent: two networks (reward and KL mask) instead of one.
        dropout: dropout after each ReLU.
        mixer_init: ``None`` (PyTorch's initialisation) or $c$ (mixer weights $c/L$).
        weight_decay: weight decay of the mask parameters (their optimiser group).
    """

    independent: bool = False
    dropout: float = 0.01
    mixer_init: float | None = None
    weight_decay: float = 0.01

    @property
    def provides(self) -> frozenset[Need]:
        return frozenset({Need.TOKEN_WEIGHTS, Need.KL_WEIGHTS})

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.REFERENCE_HIDDEN_LAYERS})


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class MarginalFit(AbstractServiceSpec):
    r"""A vocabulary bias $\phi$ on the reference logits, fitted by maximum
    likelihood to policy samples every ``update_every`` optimiser steps (the
    Blahut–Arimoto prior step); its detached log-probs fill ``prior_logps``.

    Args:
        update_every: optimiser steps between fits (a fit before steps
            $1, 1 + k, \dots$, on the prompts of that step's first micro-batch).
        fit_steps: gradient-descent steps per fit.
        fit_learning_rate: gradient-descent rate of $\phi$.
        sample_max_new_tokens: longest sampled response per prompt.
        sample_temperature: sampling temperature.
    """

    update_every: int = 4
    fit_steps: int = 20
    fit_learning_rate: float = 1.0
    sample_max_new_tokens: int = 32
    sample_temperature: float = 1.0

    @property
    def provides(self) -> frozenset[Need]:
        return frozenset({Need.PRIOR_LOGPS})

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.LEARNED_PRIOR})


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ReferenceSync(AbstractServiceSpec):
    r"""A reference that follows the policy (TR-DPO, Gorbatovski et al., arXiv
    2404.09656, "soft update"): every ``every`` optimiser steps,
    $\theta_{ref} \leftarrow \alpha\,\theta + (1 - \alpha)\,\theta_{ref}$, as
    TRL's ``SyncRefModelCallback`` does. Declared by the run's
    ``TrainConfig.sync_ref_model``; fills no field.

    Args:
        alpha: the mix-up weight $\alpha \in [0, 1]$ of the policy.
        every: optimiser steps between updates (TRL's ``ref_model_sync_steps``).
    """

    alpha: float = 0.6
    every: int = 512

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise CompositionError(
                f"ReferenceSync.alpha: must be in [0, 1], got {self.alpha}"
            )
        if self.every < 1:
            raise CompositionError(
                f"ReferenceSync.every: must be >= 1, got {self.every}"
            )

    @property
    def provides(self) -> frozenset[Need]:
        return NO_NEEDS


__all__ = [
    "AbstractServiceSpec",
    "ActivationMasking",
    "AnchorSampling",
    "GradientAttribution",
    "LearnedMasking",
    "MarginalFit",
    "ReferenceSync",
    "check_services",
    "collect_services",
    "primitives_in",
]
