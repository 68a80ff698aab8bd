"""SPPO, hard labels (Wu et al., arXiv 2405.00675): self-play preference optimisation.

L = (s_w - 1/(2 beta))^2 + (s_l + 1/(2 beta))^2, s = log pi(y) - log pi_ref(y):
Eq. 4.7 with win probability 1 for the chosen and 0 for the rejected response
(TRL ``loss_type="sppo_hard"``; the soft version needs PairRM probabilities).

Prior: reference (the previous iterate in the paper). Weighter: sum. Margin: none.
Link: squared regression of each side. Not MI-DPO (proofs/trl_losses_outside_mi.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import ReferencePrior, SPPOHardLink


def make_objective(*, beta: float = 0.1) -> Objective:  # TRL DPOConfig default
    return Objective(prior=ReferencePrior(), link=SPPOHardLink(), beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
