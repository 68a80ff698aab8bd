"""LD-DPO (Liu et al., arXiv 2409.06411): length-desensitised DPO.

log pi(y) -> log pi(y_{<= l_p}) + alpha log pi(y_{> l_p}), l_p = min(|y_w|, |y_l|),
for the policy and the reference alike, then DPO (TRL ``ld_alpha``).

Prior: reference. Weighter: 1 on the shared length, alpha on the verbose tail
(pair-coupled). Margin: none. Link: -log sigmoid. MI-DPO with the
token-interpolation prior, class G (proofs/ld_dpo_to_interpolation_prior.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import LengthDesensitisedWeights, ReferencePrior


def make_objective(
    *,
    beta: float = 0.1,  # TRL DPOConfig default
    alpha: float = 0.5,  # no TRL default (None = off); the paper tunes it per model
) -> Objective:
    weighter = LengthDesensitisedWeights(alpha=alpha)
    return Objective(prior=ReferencePrior(), weighter=weighter, beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
