"""cDPO (Mitchell 2023, "A note on DPO with noisy preferences") and robust DPO
(Chowdhury et al., arXiv 2403.00409, Eq. 9).

cDPO:   L = -(1 - eps) log sigmoid(z) - eps log sigmoid(-z)
robust: L = [-(1 - eps) log sigmoid(z) + eps log sigmoid(-z)] / (1 - 2 eps)
with z = beta * h, h the DPO log-ratio difference.

Prior: reference. Weighter: sum. Margin: none. Link: label-smoothed (cDPO), or
``link=RobustLink`` for the unbiased estimator (TRL ``robust``). Not expressible
by a prior: the mixture of log sigmoid(z) and log sigmoid(-z) is another link
(docs/objective.md#what-a-prior-cannot-express).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import AbstractLink, LabelSmoothedLink, ReferencePrior


def make_objective(
    *,
    beta: float = 0.1,  # eric-mitchell / TRL default
    epsilon: float = 0.1,  # assumed flip rate; eric-mitchell label_smoothing (0 disables)
    link: type[AbstractLink] = LabelSmoothedLink,  # RobustLink: Chowdhury et al.
) -> Objective:
    return Objective(prior=ReferencePrior(), link=link(epsilon=epsilon), beta=beta)


objective = make_objective()
train = TrainConfig(
    learning_rate=5e-7,  # eric-mitchell config/config.yaml
    optimizer="rmsprop",  # eric-mitchell config/config.yaml
    warmup_steps=150,  # eric-mitchell config/config.yaml
    lr_schedule="constant",
)
