"""APO (D'Oosterlinck et al., arXiv 2408.06266): anchored preference optimisation.

apo_zero (Eq. 7): L = [1 - sigmoid(beta s_w)] + sigmoid(beta s_l)
apo_down (Eq. 8): L = sigmoid(beta s_w) + [1 - sigmoid(beta (s_w - s_l))]
with s = log pi(y) - log pi_ref(y) (TRL ``apo_zero`` / ``apo_down``).

Prior: reference. Weighter: sum. Margin: none. Link: ``APOZeroLink()`` when the
chosen answers beat the model's own, ``APODownLink()`` when they do not. Not MI-DPO
(proofs/trl_losses_outside_mi.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import AbstractPairLink, APOZeroLink, ReferencePrior


def make_objective(
    *,
    beta: float = 0.1,  # TRL DPOConfig default
    link: AbstractPairLink = APOZeroLink(),  # APODownLink(): TRL apo_down
) -> Objective:
    return Objective(prior=ReferencePrior(), link=link, beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
