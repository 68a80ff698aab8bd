"""AOT (Melnyk et al., arXiv 2406.05882): alignment via optimal transport.

paired:   z_(i) = beta [sort(P_w - P_l)_i - sort(R_w - R_l)_i]   (TRL ``aot``)
unpaired: z_(i) = beta [sort(s_w)_i - sort(s_l)_i]               (TRL ``aot_unpaired``)
L_i = -(1 - eps) log sigmoid(z_(i)) - eps log sigmoid(-z_(i)), P / R the policy /
reference sequence log-probs, s = P - R, sorted ascending over the micro-batch.

Prior: reference. Weighter: sum. Margin: none (sorting breaks pairs). Link:
``SortedLink`` around the label-smoothed link. Batch-coupled, so not a per-pair
loss at all (proofs/trl_losses_outside_mi.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import LabelSmoothedLink, ReferencePrior, SortedLink


def make_objective(
    *,
    beta: float = 0.1,  # TRL DPOConfig default
    epsilon: float = 0.0,  # TRL label_smoothing default
    paired: bool = True,  # False: aot_unpaired
) -> Objective:
    link = SortedLink(link=LabelSmoothedLink(epsilon=epsilon), paired=paired)
    return Objective(prior=ReferencePrior(), link=link, beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
