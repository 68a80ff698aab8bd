r"""f-DPO: a logit link on $f'$ of each side's density ratio.

Replacing DPO's reverse KL by an f-divergence $D_f(\pi_\theta\|\pi_{ref})$
changes the implied reward from $\beta\log u$ to $\beta f'(u)$ with
$u = \pi_\theta(y|x)/\pi_{ref}(y|x)$, so the logit becomes

$$ z = \beta\,[g(r(y_w)) - g(r(y_l))] - m, \qquad g(x) = f'(e^x) - f'(1), $$

with $r(y)$ the composed reward (the log-ratio $\log u$ under the reference
prior). Subtracting $f'(1)$ does not change the difference; it makes $g(0) = 0$,
which matters only when scores are divided by lengths (``length_normalised``).
Value-wise this is MI-DPO with the policy-dependent prior
$\log\zeta(y) = \log\pi_\theta(y) - g(r(y))$
(``proofs/f_dpo_to_policy_dependent_prior.md``).

References:
    Wang et al., "Beyond Reverse KL" (f-DPO), arXiv 2309.16240: the f-DPO loss
    and its table of $f'$; TRL ``f_divergence_type`` / ``f_alpha_divergence_coef``.
"""

import abc
import math
from dataclasses import dataclass
from typing import final

import torch
import torch.nn.functional as F

from mipo.batch import PairBatch
from mipo.errors import CompositionError
from mipo.needs import Need
from mipo.primitives.link import AbstractLink, LogSigmoidLink
from mipo.primitives.pair_link import AbstractPairLink, PairRewards
from mipo.typing import PerPair

_MAX_EXPONENT = 80.0  # e^80 ~ 5.5e34 stays finite in float32


class AbstractFDivergence(abc.ABC):
    """An f-divergence, given by its score g(x) = f'(e^x) - f'(1)."""

    @abc.abstractmethod
    def score(self, log_ratio: PerPair) -> PerPair:
        """g at each log density ratio."""


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ReverseKL(AbstractFDivergence):
    r"""$f(u) = u\log u$, $g(x) = x$: DPO's KL(pi_theta || pi_ref). The neutral
    divergence."""

    def score(self, log_ratio: PerPair) -> PerPair:
        return log_ratio


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ForwardKL(AbstractFDivergence):
    r"""$f(u) = -\log u$, $g(x) = 1 - e^{-x}$: KL(pi_ref || pi_theta)."""

    def score(self, log_ratio: PerPair) -> PerPair:
        return -torch.expm1(-log_ratio)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class JensenShannon(AbstractFDivergence):
    r"""$f'(u) = \log\frac{2u}{1+u}$, $g(x) = \log 2 + \log\sigma(x)$: Jensen–Shannon."""

    def score(self, log_ratio: PerPair) -> PerPair:
        return math.log(2.0) + F.logsigmoid(log_ratio)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class AlphaDivergence(AbstractFDivergence):
    r"""$f'(u) = (1 - u^{-\alpha})/\alpha$, $g(x) = (1 - e^{-\alpha x})/\alpha$.

    The paper's $\alpha$-divergence ($\alpha \to 0$ is the reverse KL,
    $\alpha \to 1$ the forward KL). TRL 1.16 computes
    $(u^{a-1} - 1)/(a - 1)$ for ``f_alpha_divergence_coef`` $= a$, which is this
    score at $\alpha = 1 - a$: the two agree only at TRL's default $a = 0.5$
    (``docs/trl.md``). The exponent $-\alpha x$ is capped at 80, as in TRL, so
    the score stays finite in float32 when the policy is far below the reference.

    Args:
        alpha: $0 < \alpha < 1$.
    """

    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise CompositionError(
                f"AlphaDivergence: alpha must be in (0, 1), got {self.alpha}"
            )

    def score(self, log_ratio: PerPair) -> PerPair:
        exponent = torch.clamp(-self.alpha * log_ratio, max=_MAX_EXPONENT)
        return -torch.expm1(exponent) / self.alpha


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class FDivergenceLink(AbstractPairLink):
    r"""A logit link at $z = \beta[g(r_w)/n_w - g(r_l)/n_l] - m$.

    $n = 1$ by default; with ``length_normalised`` $n = |y|$ (EOS included), which
    is TRL's ``ipo`` and ``sigmoid_norm`` under a non-default f-divergence
    (compose it with the sum weighter: the score is taken of the summed ratio,
    then divided). The reward metrics stay $\beta r(y)$, as in TRL.

    Args:
        link: the logit link (log-sigmoid, hinge, IPO, robust, EXO, DiscoPOP, ...).
        divergence: the f-divergence.
        length_normalised: divide each score by its response length.
    """

    link: AbstractLink = LogSigmoidLink()
    divergence: AbstractFDivergence = ReverseKL()
    length_normalised: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.link, AbstractLink):
            raise CompositionError(
                f"FDivergenceLink.link: {self.link!r} is not a logit link (links "
                f"over each side's reward have no f-divergence form)"
            )
        if not isinstance(self.divergence, AbstractFDivergence):
            raise CompositionError(
                f"FDivergenceLink.divergence: {self.divergence!r} is not an "
                f"f-divergence"
            )

    @property
    def needs(self) -> frozenset[Need]:
        return self.link.needs

    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        chosen = self.divergence.score(rewards.chosen)
        rejected = self.divergence.score(rewards.rejected)
        if self.length_normalised:
            chosen = chosen / batch.chosen.lengths
            rejected = rejected / batch.rejected.lengths
        logits = beta * (chosen - rejected) - rewards.margin
        return self.link(logits, beta=beta)


__all__ = [
    "AbstractFDivergence",
    "AlphaDivergence",
    "FDivergenceLink",
    "ForwardKL",
    "JensenShannon",
    "ReverseKL",
]
