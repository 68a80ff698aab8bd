"""SparsePO / MaPO (Christopoulou et al., arXiv 2410.05102) with masks from data.

L = -log sigmoid(beta (u - d)) + l1_u ||m_u|| + l1_d ||m_d||, with
u = sum_t m_u l_t(y_w) - sum_t m_u l_t(y_l) and
d = -sum_t m_d KL_t(y_w) + sum_t m_d KL_t(y_l), KL_t = KL(pi_ref || pi_theta):
TDPO1 with token masks (no alpha, no stop-gradient, as in the authors' code).

Prior: token interpolation with the reward mask m_u, times exp(-sum_t m_d D_t)
(class G). Weighter: sum. Link: -log sigmoid. Terms: L1 on each mask (off by
default; with a common mask the authors halve each coefficient). Masks are read
from the batch (``token_weights`` = m_u, ``kl_weights`` = m_d); pass
``kl_mask="token_weights"`` for one common mask. Learned and activation masks
come from their own models.
"""

from typing import Literal

from mipo import Objective, Term, TrainConfig
from mipo.primitives import (
    BatchTokenWeights,
    MaskL1,
    ProductPrior,
    SequentialKLPenalty,
    TokenInterpolationPrior,
)


def make_objective(
    *,
    beta: float = 0.1,  # SparseConfig.beta; README HH rows
    l1_reward: float = 0.0,  # l1_norm_param_u default (README HH sparse-common: 0.001)
    l1_kl: float = 0.0,  # l1_norm_param_d default
    kl_mask: Literal["kl_weights", "token_weights"] = "kl_weights",  # "sparse-indp"
) -> Objective:
    kl = SequentialKLPenalty(
        kappa=1.0, direction="forward", weights=BatchTokenWeights(field=kl_mask)
    )
    return Objective(
        prior=ProductPrior(
            base=TokenInterpolationPrior(
                weights=BatchTokenWeights(field="token_weights")
            ),
            factors=(kl,),
        ),
        beta=beta,
        terms=(
            Term(
                name="l1_reward_mask",
                term=MaskL1(field="token_weights"),
                weight=l1_reward,
            ),
            Term(name="l1_kl_mask", term=MaskL1(field=kl_mask), weight=l1_kl),
        ),
    )


objective = make_objective()
train = TrainConfig(
    learning_rate=5e-7,  # README, HH sparse rows
    lr_schedule="cosine",  # config_po.yaml
    warmup_ratio=0.1,  # config_po.yaml
    epochs=3.0,  # README, HH rows
)
