"""TIS-DPO (Liu et al., ICLR 2025, arXiv 2410.04350): token importance weights from the data.

L = -log sigmoid(beta [sum_t w_t l_t(y_w) - sum_t w_t l_t(y_l)] - beta alpha_tis [K_w(y_w) - K_w(y_l)]),
K_w(y) = sum_t w_t KL(pi_theta || pi_ref) at s_t (reverse KL, no stop-gradient); alpha_tis=0 (default,
the code's token_level=false) drops it.

Prior: token interpolation prod_t pi_theta^(1-w_t) pi_ref^(w_t) (class G), times exp(+alpha_tis K_w(y)),
the opposite orientation to TDPO's. Link: -log sigmoid. w = transform(scores) per response, from the
weight columns ``python -m mipo.weights estimate`` writes (chosen log p+ - log p-, rejected flipped).
Default transform: identity; the authors' README uses ``RankTransform()`` and EOS weight 0
(docs/recipe_notes/tis_dpo.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives.prior import ProductPrior, SequentialKLPenalty, TokenInterpolationPrior
from mipo.primitives.transforms import (
    AbstractWeightTransform,
    IdentityTransform,
    TransformedWeights,
)


def make_objective(
    *,
    beta: float = 0.1,  # config/loss/tisdpo.yaml
    alpha_tis: float = 0.0,  # token_level=false; config alpha 0.5 applies with token_level=true
    transform: AbstractWeightTransform = IdentityTransform(),  # README: RankTransform()
    eos_weight: float | None = None,  # authors' code: 0.0 (EOS excluded from the loss)
) -> Objective:
    weights = TransformedWeights(transform=transform, eos_weight=eos_weight)
    kl = SequentialKLPenalty(kappa=-alpha_tis, direction="reverse", weights=weights)
    prior = ProductPrior(base=TokenInterpolationPrior(weights=weights), factors=(kl,))
    return Objective(prior=prior, beta=beta)


objective = make_objective()
# TIS-DPO config.yaml: RMSprop, lr 5e-7, 150 warmup steps then constant, lengths 512 / 256
train = TrainConfig(
    learning_rate=5e-7,
    optimizer="rmsprop",
    warmup_steps=150,
    lr_schedule="constant",
    max_length=512,
    max_prompt_length=256,
)
