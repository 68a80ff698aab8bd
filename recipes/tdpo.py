"""TDPO (Zeng et al., ICML 2024, arXiv 2404.11999): token-level DPO with a
sequential forward KL.

TDPO1: L = -log sigmoid(beta h - beta (K(y_l) - K(y_w)))
TDPO2: L = -log sigmoid(beta h - alpha beta (K(y_l) - sg[K(y_w)]))
with K(y) = sum_t KL(pi_ref(.|s_t) || pi_theta(.|s_t)) over the full vocabulary.

Prior: reference times exp(-alpha K(y)). TDPO2 (default): ``alpha_tdpo=0.5,
detach_role="chosen"`` -- the stop-gradient is on the CHOSEN KL (class S).
TDPO1: ``alpha_tdpo=1.0, detach_role=None`` (class G). Weighter: sum. Link:
-log sigmoid.

Config history (docs/recipe_notes/tdpo.md): config/loss/tdpo.yaml had if_tdpo2: true until
commit f567175 (Jul 2024), which set it to false, so the README's "TDPO2" command
now trains TDPO1; the loss function's own signature defaults to TDPO2. Always
choose the variant explicitly.
"""

from typing import Literal

from mipo import Objective, TrainConfig
from mipo.primitives import ProductPrior, ReferencePrior, SequentialKLPenalty


def make_objective(
    *,
    beta: float = 0.1,  # config/loss/tdpo.yaml
    alpha_tdpo: float = 0.5,  # config/loss/tdpo.yaml alpha (TDPO2); 1.0 for TDPO1
    detach_role: Literal["chosen", "rejected"] | None = "chosen",  # TDPO2; None: TDPO1
) -> Objective:
    kl = SequentialKLPenalty(kappa=alpha_tdpo, direction="forward", detach_role=detach_role)
    return Objective(prior=ProductPrior(base=ReferencePrior(), factors=(kl,)), beta=beta)


objective = make_objective()
train = TrainConfig(
    learning_rate=5e-6,  # TDPO config.yaml: ten times the DPO repository's
    optimizer="rmsprop",  # TDPO config.yaml
    warmup_steps=150,  # TDPO config.yaml
    lr_schedule="constant",
    max_length=512,  # TDPO config.yaml
    max_prompt_length=256,  # TDPO config.yaml
)
