"""MPO (Wang et al., arXiv 2411.10442): mixed preference optimisation.

L = 0.8 (-log sigmoid(beta h)) + 0.2 BCO(s_w, s_l) + 1.0 NLL(y_w),
TRL ``loss_type=["sigmoid", "bco_pair", "sft"]`` with ``loss_weights=[0.8, 0.2, 1.0]``.

Prior: reference. Weighter: sum. Margin: none. Link: ``LinkSum`` of the DPO and the
BCO links (a weight per loss type). Term: chosen NLL, token mean over the batch.
Not MI-DPO (the BCO part and the NLL term; proofs/trl_losses_outside_mi.md).
"""

from mipo import Objective, Term, TrainConfig
from mipo.primitives import (
    BCOPairLink,
    ChosenNLL,
    LinkSum,
    LogSigmoidLink,
    ReferencePrior,
)


def make_objective(
    *,
    beta: float = 0.1,  # TRL DPOConfig default
    preference_weight: float = 0.8,  # TRL paper_index MPO weights
    quality_weight: float = 0.2,
    generation_weight: float = 1.0,
) -> Objective:
    links = (LogSigmoidLink(), BCOPairLink())
    link = LinkSum(links=links, weights=(preference_weight, quality_weight))
    nll = ChosenNLL(normalise="batch_tokens")
    return Objective(
        prior=ReferencePrior(),
        link=link,
        beta=beta,
        terms=(Term(name="sft", term=nll, weight=generation_weight),),
    )


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
