r"""LD-DPO's token weights: the verbose tail beyond the shorter response counts $\alpha$.

For a pair with response lengths $|y_w|$ and $|y_l|$ (EOS included) and
$\ell_p = \min(|y_w|, |y_l|)$ the shared length, the $k$-th response token of
either side ($k = 1, 2, \ldots$) gets

$$ w_k = \begin{cases} 1 & k \le \ell_p \\ \alpha & k > \ell_p, \end{cases} $$

so $\sum_k w_k \log\pi(y_k) = \log\pi(y_{\le\ell_p}) + \alpha\log\pi(y_{>\ell_p})$
for the policy and (under the reference prior) the reference alike. The weights
are pair-coupled (they read the other response's length) and constant. With the
reference prior the objective is MI-DPO with the token-interpolation prior
$\log\zeta_k = (1 - w_k)\log\pi_\theta + w_k\log\pi_{ref}$
(``proofs/ld_dpo_to_interpolation_prior.md``).

References:
    Liu et al. (LD-DPO), arXiv 2409.06411, the length-desensitised likelihood;
    TRL ``ld_alpha``.
"""

from dataclasses import dataclass
from typing import final

import torch

from mipo.batch import PairBatch, Side
from mipo.errors import CompositionError
from mipo.primitives.weighter import AbstractTokenWeighter
from mipo.typing import PerPair, TokenWeights


def _tail_weights(side: Side, shared: PerPair, alpha: float) -> TokenWeights:
    position = side.response_mask.cumsum(dim=-1)  # k at each response token
    tail = position > shared[:, None]
    ones = torch.ones_like(side.policy_logps)
    return torch.where(tail, ones * alpha, ones).detach()


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class LengthDesensitisedWeights(AbstractTokenWeighter):
    r"""$w_k = 1$ up to the shared length, $\alpha$ beyond it (pair-coupled).

    Args:
        alpha: weight of the verbose tail, $0 \le \alpha \le 1$ (1 is DPO, 0
            drops the tail).
    """

    alpha: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise CompositionError(
                f"LengthDesensitisedWeights: alpha must be in [0, 1], got {self.alpha}"
            )

    def __call__(self, batch: PairBatch) -> tuple[TokenWeights, TokenWeights]:
        chosen, rejected = batch.chosen, batch.rejected
        shared = torch.minimum(chosen.lengths, rejected.lengths)
        return (
            _tail_weights(chosen, shared, self.alpha),
            _tail_weights(rejected, shared, self.alpha),
        )


__all__ = ["LengthDesensitisedWeights"]
