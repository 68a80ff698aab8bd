"""IPO (Azar et al., arXiv 2310.12036), Eq. 17.

L = (h - 1/(2 beta))^2, with beta in the role of IPO's tau.

Prior: reference. Weighter: mean over response tokens (TRL's length-averaged IPO,
agreed with the IPO authors per TRL's comment); pass
``weighter=SumOverResponse()`` for the summed form of the eric-mitchell code.
Margin: none. Link: squared loss with target 1/(2 beta).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import (
    AbstractTokenWeighter,
    IPOLink,
    MeanOverResponse,
    ReferencePrior,
)


def make_objective(
    *,
    beta: float = 0.1,  # TRL DPOConfig default (tau)
    weighter: AbstractTokenWeighter = MeanOverResponse(),  # TRL loss_type="ipo"
) -> Objective:
    return Objective(prior=ReferencePrior(), weighter=weighter, link=IPOLink(), beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
