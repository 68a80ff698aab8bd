r"""Links: the per-pair loss as a function of the logit $z$.

$z = \beta[r(y_w) - r(y_l)] - m$ is already scaled; links that need $\beta$
itself (IPO's target) receive it as a keyword. Only :class:`LogSigmoidLink`
keeps the MI-DPO form; the others are what a prior cannot express
(``objective.md`` §6).
"""

import abc
from dataclasses import dataclass
from typing import final

import torch
import torch.nn.functional as F

from mipo.errors import CompositionError
from mipo.needs import NO_NEEDS, Need
from mipo.typing import PerPair


class AbstractLink(abc.ABC):
    """Per-pair loss from the scaled logit z."""

    @property
    def needs(self) -> frozenset[Need]:
        """Links read nothing from the batch."""
        return NO_NEEDS

    @abc.abstractmethod
    def __call__(self, logits: PerPair, *, beta: float) -> PerPair:
        """The loss of each pair."""


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


__all__ = [
    "AbstractLink",
    "HingeLink",
    "IPOLink",
    "LabelSmoothedLink",
    "LogSigmoidLink",
    "RobustLink",
]
