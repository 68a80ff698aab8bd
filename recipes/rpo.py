"""RPO / IRPO (Pang et al., arXiv 2404.19733): DPO plus the chosen response's NLL.

L = -log sigmoid(beta h) + alpha NLL(y_w) / |y_w|   (Eq. 4: the NLL per token of
each winning sequence). TRL's ``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1,
alpha]``, takes one token mean over the whole batch instead:
``sft_normalise="batch_tokens"`` (docs/trl.md).

Prior: reference. Weighter: sum. Margin: none. Link: -log sigmoid. Term: chosen NLL.
The DPO part is MI-DPO; the NLL term is outside it.
"""

from typing import Literal

from mipo import Objective, Term, TrainConfig
from mipo.primitives import ChosenNLL, ReferencePrior


def make_objective(
    *,
    beta: float = 0.1,  # TRL DPOConfig default
    alpha: float = 1.0,  # the paper's NLL weight (Eq. 4)
    sft_normalise: Literal["sequence_mean", "batch_tokens"] = "sequence_mean",
) -> Objective:
    nll = Term(name="sft", term=ChosenNLL(normalise=sft_normalise), weight=alpha)
    return Objective(prior=ReferencePrior(), beta=beta, terms=(nll,))


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
