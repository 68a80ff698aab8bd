r"""A learned, token-factorised prior fitted by the Blahut–Arimoto prior step.

$$ \log\zeta_\phi(y_t|s_t) = \log\operatorname{softmax}\big(o^{ref}(s_t) + \phi\big)_{y_t}, $$

the reference model's logits $o^{ref}$ plus a learned bias $\phi \in \mathbb{R}^V$
over the vocabulary ($\phi = 0$ is $\pi_{ref}$: DPO). Every
``prior_update_every`` optimiser steps the trainer samples responses from the
current policy for the batch prompts and fits $\phi$ by maximum likelihood,

$$ \max_\phi\; E_{x,\;y\sim\pi_\theta(\cdot|x)} \sum_t \log\zeta_\phi(y_t|s_t), $$

the prior step $\zeta \leftarrow \arg\min_\zeta E_x\,\mathrm{KL}(\pi\|\zeta)$ of
the alternation (``docs/objective.md#the-prior-step-blahut-arimoto``) restricted
to this family. The policy step is ordinary training on $J$ with
$\mathrm{sg}[\zeta_\phi]$:
$l_t = \log\pi_\theta(y_t|s_t) - \log\zeta_\phi(y_t|s_t)$. The prior never
receives a gradient from $J$ (that is degenerate,
``docs/objective.md#the-degeneracy``): log-probs that carry a gradient are refused,
as by :class:`~mipo.primitives.BatchPrior`.

$\phi$ is shared by all prompts, so it can only move mass that the policy
moves on average over prompts: the prompt-independent part of the policy's
drift, the part a mutual-information prior captures. With $\phi$ alone the
family still depends on $x$ through $o^{ref}$, so $J$ is a KL to a learned,
prompt-dependent prior, not literally a mutual information
(``docs/objective.md#what-is-and-is-not-a-mutual-information``).

References:
    Tutnov, Grosnit, Bou-Ammar, arXiv 2501.01544 ("learnable priors");
    Grau-Moya, Leibfried, Vrancx, ICLR 2019 (the marginal as optimal prior);
    ``docs/objective.md#learning-a-prior``. The parametrisation is mipo's own
    suggestion (``docs/objective.md#parametrisations``), not the paper's.
"""

import math
from dataclasses import dataclass
from typing import final

from mipo.batch import Side
from mipo.errors import CompositionError
from mipo.needs import Need
from mipo.primitives.prior import AbstractSequencePrior, BatchPrior, PriorTerms
from mipo.services import AbstractServiceSpec, MarginalFit


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class MarginalFitPrior(AbstractSequencePrior):
    """$\\zeta_\\phi$ = reference logits plus a learned vocabulary bias, refitted to
    policy samples every ``prior_update_every`` steps (module docstring).

    Args:
        prior_update_every: the alternation schedule, $k$: the prior is refitted
            before optimiser steps $1, 1 + k, 1 + 2k, \\dots$, on the samples of
            that step's first micro-batch.
        fit_steps: gradient-descent steps per fit on the sampled tokens.
        fit_learning_rate: gradient-descent rate of $\\phi$ (stable up to 2).
        sample_max_new_tokens: longest sampled response per prompt.
        sample_temperature: sampling temperature (1: the policy itself).
    """

    prior_update_every: int = 4
    fit_steps: int = 20
    fit_learning_rate: float = 1.0
    sample_max_new_tokens: int = 32
    sample_temperature: float = 1.0

    def __post_init__(self) -> None:
        for name in ("prior_update_every", "fit_steps", "sample_max_new_tokens"):
            if getattr(self, name) < 1:
                raise CompositionError(
                    f"MarginalFitPrior.{name}: must be >= 1, got {getattr(self, name)}"
                )
        for name in ("fit_learning_rate", "sample_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise CompositionError(
                    f"MarginalFitPrior.{name}: must be > 0, got {value}"
                )

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.PRIOR_LOGPS, Need.LEARNED_PRIOR})

    @property
    def services(self) -> tuple[AbstractServiceSpec, ...]:
        return (
            MarginalFit(
                update_every=self.prior_update_every,
                fit_steps=self.fit_steps,
                fit_learning_rate=self.fit_learning_rate,
                sample_max_new_tokens=self.sample_max_new_tokens,
                sample_temperature=self.sample_temperature,
            ),
        )

    def terms(self, side: Side) -> PriorTerms:
        # the same refusal of a live prior as BatchPrior
        # (docs/objective.md#the-degeneracy)
        return BatchPrior().terms(side)


__all__ = ["MarginalFitPrior"]
