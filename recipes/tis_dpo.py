"""TIS-DPO (Liu et al., ICLR 2025, arXiv 2410.04350): token-level importance
sampling with per-token weights from the data.

L = -log sigmoid(beta [sum_t w_t l_t(y_w) - sum_t w_t l_t(y_l)]
                 - beta alpha_tis [K_w(y_w) - K_w(y_l)])
with K_w(y) = sum_t w_t KL(pi_theta(.|s_t) || pi_ref(.|s_t)) (reverse KL, no
stop-gradient); ``alpha_tis=0`` (default, the code's token_level=false) drops it.

Prior: the token-interpolation prior prod_t pi_theta^(1-w_t) pi_ref^(w_t)
(class G), times exp(+alpha_tis K_w(y)) -- note the orientation is opposite to
TDPO's. Weighter: sum. Link: -log sigmoid. Weights w = transform(scores) per
response, from the dataset's weight columns (``python -m mipo.weights estimate``
writes oriented raw scores: chosen log p+ - log p-, rejected sign-flipped).
The default transform is the identity (columns are final weights); the authors'
README trains with ``transform=RankTransform()`` (weights in [0.7, 1.3]) and
gives the EOS weight 0 (``eos_weight=0.0``, methods.md 8.4).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import (
    AbstractWeightTransform,
    IdentityTransform,
    ProductPrior,
    SequentialKLPenalty,
    TokenInterpolationPrior,
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
    return Objective(
        prior=ProductPrior(
            base=TokenInterpolationPrior(weights=weights), factors=(kl,)
        ),
        beta=beta,
    )


objective = make_objective()
train = TrainConfig(
    learning_rate=5e-7,  # TIS-DPO config.yaml
    optimizer="rmsprop",  # TIS-DPO config.yaml
    warmup_steps=150,  # TIS-DPO config.yaml
    lr_schedule="constant",
    max_length=512,  # TIS-DPO config.yaml
    max_prompt_length=256,  # TIS-DPO config.yaml
)
