"""BCO, pairwise (Jung et al., arXiv 2404.04656): chosen and rejected as two classes.

L = -log sigmoid(beta s_w - delta) - log sigmoid(-(beta s_l - delta)),
s = log pi(y) - log pi_ref(y) (TRL ``loss_type="bco_pair"`` at delta = 0).

Prior: reference. Weighter: sum. Margin: none (not read). Link: BCO's pair link.
The paper's delta is a running mean of the rewards (trainer state); here it is a
constant, 0 as in TRL 1.16 (docs/trl.md). Not MI-DPO
(proofs/trl_losses_outside_mi.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import BCOPairLink, ReferencePrior


def make_objective(
    *,
    beta: float = 0.1,  # TRL DPOConfig default
    delta: float = 0.0,  # TRL 1.16 bco_pair: no reward shift
) -> Objective:
    return Objective(prior=ReferencePrior(), link=BCOPairLink(delta=delta), beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
