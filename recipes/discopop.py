"""DiscoPOP (Lu et al., arXiv 2406.08414): the discovered log-ratio modulated loss.

L = (1 - sigmoid(z / tau)) (-log sigmoid(z)) + sigmoid(z / tau) exp(-z),  z = beta h
(Eq. 5; TRL ``loss_type="discopop"`` with ``discopop_tau``).

Prior: reference. Weighter: sum. Margin: none. Link: the logistic/exponential
blend. Not MI-DPO (proofs/trl_losses_outside_mi.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import DiscoPOPLink, ReferencePrior


def make_objective(
    *,
    beta: float = 0.1,  # TRL DPOConfig default
    tau: float = 0.05,  # the paper's value; TRL discopop_tau default
) -> Objective:
    return Objective(prior=ReferencePrior(), link=DiscoPOPLink(tau=tau), beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
