"""WPO (Zhou et al., arXiv 2406.11827): weighted preference optimisation.

L_i = c_i * (-log sigmoid(beta h_i)),  c_i = min(1, exp(a(y_w) + a(y_l))) detached,
a(y) = mean_t [log pi(y_t) - log sum_v pi(v)^2] (sampled weight alignment).

Prior: reference. Weighter: sum. Margin: none. Link: ``WPOLink`` around
-log sigmoid (the cap at 1 is the authors' code; TRL's ``use_weighting`` has no cap:
``max_weight=None``). Reads the policy's log collision probability per token
(``Need.LOG_COLLISION``), which the trainer's policy forward computes, detached.
Not MI-DPO: the weight scales the loss outside the link
(proofs/trl_losses_outside_mi.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import AbstractPairLink, LogSigmoidLink, ReferencePrior, WPOLink


def make_objective(
    *,
    beta: float = 0.01,  # wzhouad/WPO training_configs/mistral-base.yaml
    link: AbstractPairLink = LogSigmoidLink(),  # any pair link can be weighted
    aligned: bool = True,  # the paper's sampled alignment
    max_weight: float | None = 1.0,  # the authors' cap; None = TRL 1.16
) -> Objective:
    link = WPOLink(link=link, aligned=aligned, max_weight=max_weight)
    return Objective(prior=ReferencePrior(), link=link, beta=beta)


objective = make_objective()
# wzhouad/WPO training_configs/mistral-base.yaml: lr 5e-7, cosine, warmup 0.1
train = TrainConfig(learning_rate=5e-7, lr_schedule="cosine", warmup_ratio=0.1)
