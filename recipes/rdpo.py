"""R-DPO (Park et al., arXiv 2403.19159): DPO with a length regulariser.

L = -log sigmoid(beta h + alpha_len (|y_w| - |y_l|)), lengths in tokens with EOS
(sign and unit unverified against the PDF, docs/recipe_notes/rdpo.md).

Prior: the length-penalised reference zeta = pi_ref * exp(-(alpha_len/beta)|y|)
(class E); the same loss as DPO plus ``LengthDifferenceMargin(alpha_len)``
(proofs/rdpo_margin_is_length_prior.md). Weighter: sum. Link: -log sigmoid.
"""

from mipo import Objective, TrainConfig
from mipo.primitives import LengthPenalty, ProductPrior, ReferencePrior


def make_objective(
    *,
    beta: float = 0.1,  # SimPO paper's R-DPO grid: beta in {0.01, 0.05, 0.1}
    alpha_len: float = 0.05,  # SimPO paper's R-DPO grid: alpha in {0.05, 0.1, 0.5, 1.0}
) -> Objective:
    return Objective(
        prior=ProductPrior(base=ReferencePrior(), factors=(LengthPenalty(rate=alpha_len / beta),)),
        beta=beta,
    )


objective = make_objective()
train = TrainConfig(learning_rate=5e-7)  # DPO baseline learning rate (SimPO README)
