r"""Links: the per-pair loss as a function of the logit $z$.

$z = \beta[r(y_w) - r(y_l)] - m$ is already scaled; links that need $\beta$
itself (IPO's target) receive it as a keyword. Only :class:`LogSigmoidLink`
keeps the MI-DPO form; the others are what a prior cannot express
(``docs/objective.md#what-a-prior-cannot-express``).
"""

import abc
import math
from dataclasses import dataclass
from typing import final

import torch
import torch.nn.functional as F

from mipo.batch import PairBatch
from mipo.errors import CompositionError
from mipo.needs import NO_NEEDS, Need
from mipo.primitives.pair_link import AbstractPairLink, PairRewards
from mipo.typing import PerPair


class AbstractLink(AbstractPairLink):
    """Per-pair loss from the scaled logit z alone: a pair link that reads
    ``rewards.logits`` and nothing else."""

    @property
    def needs(self) -> frozenset[Need]:
        """Links read nothing from the batch."""
        return NO_NEEDS

    @abc.abstractmethod
    def __call__(self, logits: PerPair, *, beta: float) -> PerPair:
        """The loss of each pair."""

    def pair_loss(
        self, rewards: PairRewards, batch: PairBatch, *, beta: float
    ) -> PerPair:
        """``self(rewards.logits, beta=beta)``."""
        del batch
        return self(rewards.logits, beta=beta)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class LogSigmoidLink(AbstractLink):
    r"""$\ell(z) = -\log\sigma(z) = \mathrm{softplus}(-z)$: Bradley–Terry, MI-DPO's link.

    References:
        Rafailov et al. (DPO), arXiv 2305.18290, Eq. 7; Tutnov et al., arXiv 2501.01544.
    """

    def __call__(self, logits: PerPair, *, beta: float) -> PerPair:
        del beta
        return _neg_log_sigmoid(logits)


def _neg_log_sigmoid(logits: PerPair) -> PerPair:
    # -logsigmoid is exact for every z; F.softplus switches to the identity above
    # its threshold (20), an error of e^-20 ~ 2e-9 in value and gradient that
    # float64 oracles see.
    return -F.logsigmoid(logits)


def _check_epsilon(owner: str, epsilon: float) -> None:
    if not 0.0 <= epsilon < 0.5:
        raise CompositionError(f"{owner}: epsilon must be in [0, 0.5), got {epsilon}")


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class LabelSmoothedLink(AbstractLink):
    r"""$\ell(z) = -(1-\varepsilon)\log\sigma(z) - \varepsilon\log\sigma(-z)$: cDPO.

    The expected DPO loss when a fraction $\varepsilon$ of labels is flipped.

    Args:
        epsilon: assumed flip rate, $0 \le \varepsilon < 0.5$.

    References:
        Mitchell, "A note on DPO with noisy preferences" (cDPO, 2023); eric-mitchell
        DPO code ``label_smoothing``; TRL v0.12 ``sigmoid``.
    """

    epsilon: float

    def __post_init__(self) -> None:
        _check_epsilon("LabelSmoothedLink", self.epsilon)

    def __call__(self, logits: PerPair, *, beta: float) -> PerPair:
        del beta
        return (1 - self.epsilon) * _neg_log_sigmoid(
            logits
        ) + self.epsilon * _neg_log_sigmoid(-logits)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class RobustLink(AbstractLink):
    r"""$\ell(z) = \frac{-(1-\varepsilon)\log\sigma(z) + \varepsilon\log\sigma(-z)}{1 - 2\varepsilon}$.

    The unbiased estimator of the clean-label loss under flip rate $\varepsilon$.

    Args:
        epsilon: flip rate, $0 \le \varepsilon < 0.5$.

    References:
        Chowdhury, Kini, Natarajan, "Provably Robust DPO", arXiv 2403.00409, Eq. 9;
        TRL ``loss_type="robust"``.
    """

    epsilon: float

    def __post_init__(self) -> None:
        _check_epsilon("RobustLink", self.epsilon)

    def __call__(self, logits: PerPair, *, beta: float) -> PerPair:
        del beta
        numerator = (1 - self.epsilon) * _neg_log_sigmoid(
            logits
        ) - self.epsilon * _neg_log_sigmoid(-logits)
        return numerator / (1 - 2 * self.epsilon)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class IPOLink(AbstractLink):
    r"""$\ell = (h - \tfrac{1}{2\beta})^2$ with $h = z/\beta$: IPO's squared loss.

    With the sum weighter $h$ is the summed log-ratio difference (eric-mitchell);
    with :class:`~mipo.primitives.MeanOverResponse` it is TRL's length-averaged IPO.
    $\beta$ plays the role of IPO's $\tau$.

    References:
        Azar et al. (IPO), arXiv 2310.12036, Eq. 17; TRL ``loss_type="ipo"``.
    """

    def __call__(self, logits: PerPair, *, beta: float) -> PerPair:
        return (logits / beta - 1.0 / (2.0 * beta)) ** 2


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class HingeLink(AbstractLink):
    r"""$\ell(z) = \max(0, 1 - z)$: SLiC / RSO hinge (and SimPO's hinge variant).

    References:
        Zhao et al. (SLiC-HF), arXiv 2305.10425; Liu et al. (RSO), arXiv 2309.06657;
        TRL ``loss_type="hinge"``.
    """

    def __call__(self, logits: PerPair, *, beta: float) -> PerPair:
        del beta
        return torch.relu(1.0 - logits)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ExoLink(AbstractLink):
    r"""EXO's pairwise loss: $\mathrm{KL}(q_\theta \,\|\, p_\varepsilon)$ over the
    two outcomes {chosen wins, rejected wins}.

    $$ \ell(z) = \sigma(z)\,[\log\sigma(z) - \log(1-\varepsilon)]
               + \sigma(-z)\,[\log\sigma(-z) - \log\varepsilon], $$

    $q_\theta = (\sigma(z), \sigma(-z))$ the policy's two-way distribution and
    $p_\varepsilon = (1-\varepsilon, \varepsilon)$ the smoothed label. Its minimum
    over $z$ is 0, at $\sigma(z) = 1 - \varepsilon$.

    Args:
        epsilon: label smoothing, $0 < \varepsilon < 0.5$ (the paper suggests 1e-3).

    References:
        Ji et al. (EXO), arXiv 2402.00856, Eq. 16 with K = 2; TRL
        ``loss_type="exo_pair"`` (``label_smoothing`` is its epsilon).
    """

    epsilon: float

    def __post_init__(self) -> None:
        if not 0.0 < self.epsilon < 0.5:
            raise CompositionError(
                f"ExoLink: epsilon must be in (0, 0.5), got {self.epsilon}"
            )

    def __call__(self, logits: PerPair, *, beta: float) -> PerPair:
        del beta
        log_win, log_lose = F.logsigmoid(logits), F.logsigmoid(-logits)
        return log_win.exp() * (
            log_win - math.log1p(-self.epsilon)
        ) + log_lose.exp() * (log_lose - math.log(self.epsilon))


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class DiscoPOPLink(AbstractLink):
    r"""DiscoPOP's log-ratio modulated loss: a logistic/exponential blend.

    $$ \ell(z) = (1 - \sigma(z/\tau))\,[-\log\sigma(z)] + \sigma(z/\tau)\,e^{-z}. $$

    Args:
        tau: temperature of the blend, $> 0$ (0.05 in the paper).

    References:
        Lu et al. (DiscoPOP), arXiv 2406.08414, Eq. 5; TRL
        ``loss_type="discopop"`` with ``discopop_tau``.
    """

    tau: float = 0.05

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise CompositionError(f"DiscoPOPLink: tau must be > 0, got {self.tau}")

    def __call__(self, logits: PerPair, *, beta: float) -> PerPair:
        del beta
        scaled = logits / self.tau
        logistic = torch.sigmoid(-scaled) * _neg_log_sigmoid(logits)
        # sigma(z/tau) e^{-z} as one exponential: finite where e^{-z} alone overflows
        return logistic + torch.exp(F.logsigmoid(scaled) - logits)


__all__ = [
    "AbstractLink",
    "DiscoPOPLink",
    "ExoLink",
    "HingeLink",
    "IPOLink",
    "LabelSmoothedLink",
    "LogSigmoidLink",
    "RobustLink",
]
