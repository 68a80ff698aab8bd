"""EXO (Ji et al., arXiv 2402.00856): efficient exact optimisation, pairwise (K = 2).

L = q log(q / (1 - eps)) + (1 - q) log((1 - q) / eps),  q = sigmoid(beta h),
the reverse KL from the policy's two-way preference to the smoothed label
(Eq. 16; TRL ``loss_type="exo_pair"`` with ``label_smoothing`` = eps > 0).

Prior: reference. Weighter: sum. Margin: none. Link: EXO's KL link. Not MI-DPO: its
minimum sits at sigmoid(z) = 1 - eps, not at z -> infinity
(proofs/trl_losses_outside_mi.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import ExoLink, ReferencePrior


def make_objective(
    *,
    beta: float = 0.1,  # TRL DPOConfig default
    epsilon: float = 1e-3,  # the value the EXO paper recommends (TRL's docs)
) -> Objective:
    return Objective(prior=ReferencePrior(), link=ExoLink(epsilon=epsilon), beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
