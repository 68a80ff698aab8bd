"""SLiC with a reference (RSO's hinge-norm; Liu et al., arXiv 2309.06657): the hinge loss.

L = max(0, 1 - beta h),  h = [log pi(y_w) - log pi_ref(y_w)] - [log pi(y_l) - log pi_ref(y_l)]
(TRL ``loss_type="hinge"``; SLiC-HF, Zhao et al., arXiv 2305.10425, without its
regulariser).

Prior: reference. Weighter: sum. Margin: none. Link: hinge. Not MI-DPO: another link
(proofs/hinge_link_to_slic.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import HingeLink, ReferencePrior


def make_objective(*, beta: float = 0.1) -> Objective:  # TRL DPOConfig default
    return Objective(prior=ReferencePrior(), link=HingeLink(), beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
