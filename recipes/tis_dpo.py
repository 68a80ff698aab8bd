"""TIS-DPO (Liu et al., ICLR 2025, arXiv 2410.04350): token-level importance
sampling with per-token weights from the data.

L = -log sigmoid(beta [sum_t w_t l_t(y_w) - sum_t w_t l_t(y_l)]
                 - beta alpha_tis [K_w(y_w) - K_w(y_l)])
with K_w(y) = sum_t w_t KL(pi_theta(.|s_t) || pi_ref(.|s_t)) (reverse KL, no
stop-gradient); ``alpha_tis=0`` (default, the code's token_level=false) drops it.

Prior: the token-interpolation prior prod_t pi_theta^(1-w_t) pi_ref^(w_t)
(class G), times exp(+alpha_tis K_w(y)) -- note the orientation is opposite to
TDPO's. Weighter: sum. Link: -log sigmoid. Weights come from the dataset's
weight columns (chosen weights sign-flipped at estimation; EOS weight 0 in the
authors' code, methods.md 8.4).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import (
    BatchTokenWeights,
    ProductPrior,
    SequentialKLPenalty,
    TokenInterpolationPrior,
)


def make_objective(
    *,
    beta: float = 0.1,  # config/loss/tisdpo.yaml
    alpha_tis: float = 0.0,  # token_level=false; config alpha 0.5 applies with token_level=true
) -> Objective:
    weights = BatchTokenWeights(field="token_weights")
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
