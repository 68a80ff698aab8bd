"""NCA (Chen et al., arXiv 2402.05369): noise-contrastive alignment, pairwise form.

L = -log sigmoid(beta s_w) - 1/2 log sigmoid(-beta s_w) - 1/2 log sigmoid(-beta s_l),
s = log pi(y) - log pi_ref(y) per side (TRL ``loss_type="nca_pair"``).

Prior: reference. Weighter: sum. Margin: none (not read). Link: NCA's pair link over
each side's reward. Not MI-DPO: a per-side link is no function of s_w - s_l
(proofs/trl_losses_outside_mi.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import NCAPairLink, ReferencePrior


def make_objective(*, beta: float = 0.1) -> Objective:  # TRL DPOConfig default
    return Objective(prior=ReferencePrior(), link=NCAPairLink(), beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
