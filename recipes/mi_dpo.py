"""MI-DPO (Tutnov, Grosnit, Bou-Ammar, arXiv 2501.01544): the unified loss with an
explicit prior.

J = -log sigmoid(alpha [log pi(y_w|x) - log zeta(y_w)] - alpha [log pi(y_l|x) - log zeta(y_l)])

mipo's ``beta`` is MI-DPO's alpha (= 1 / the paper's beta). Prior: any
``AbstractPrior`` (the reference gives DPO). Weighter: sum. Margin: none. Link:
-log sigmoid. A prior with learnable parameters must be trained by its own
objective, never through J (docs/objective.md#the-degeneracy).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import AbstractPrior, ReferencePrior


def make_objective(
    *,
    beta: float = 0.1,  # alpha of the MI-DPO loss; DPO's beta with zeta = pi_ref
    prior: AbstractPrior = ReferencePrior(),  # zeta
) -> Objective:
    return Objective(prior=prior, beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=5e-7)  # DPO default (the paper reports no runs)
