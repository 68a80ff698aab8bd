"""SparsePO / MaPO (Christopoulou et al., arXiv 2410.05102).

L = -log sigmoid(beta (u - d)) + l1_u ||m_u|| + l1_d ||m_d||, with
u = sum_t m_u l_t(y_w) - sum_t m_u l_t(y_l) and
d = -sum_t m_d KL_t(y_w) + sum_t m_d KL_t(y_l), KL_t = KL(pi_ref || pi_theta):
TDPO1 with token masks (no alpha, no stop-gradient, as in the authors' code).

Prior: token interpolation with m_u times exp(-sum_t m_d D_t) (class G).
Link: -log sigmoid. Terms: L1 on each mask (off by default), times
``masks.l1_share`` (1/2 for one common learned mask, as the authors do).
``masks`` says where the masks come from: ``DataMasks()`` (data columns;
``kl_mask="token_weights"`` for one common mask), ``ActivationMasks()`` ("mapo"),
``LearnedMasks()`` ("sparse-common"), ``LearnedMasks(independent_masks=True)``
("sparse-indp").
"""

from typing import Literal

from mipo import Objective, Term, TrainConfig
from mipo.primitives import (
    AbstractMaskSource,
    DataMasks,
    MaskL1,
    MaskWeights,
    ProductPrior,
    SequentialKLPenalty,
    TokenInterpolationPrior,
)


def make_objective(
    *,
    beta: float = 0.1,  # SparseConfig.beta; README HH rows
    l1_reward: float = 0.0,  # l1_norm_param_u default (README HH sparse-common: 0.001)
    l1_kl: float = 0.0,  # l1_norm_param_d default
    kl_mask: Literal["kl_weights", "token_weights"] = "kl_weights",  # data masks
    masks: AbstractMaskSource = DataMasks(),  # mask_model / pref_optim of the authors
) -> Objective:
    kl_weights = MaskWeights(source=masks, field=kl_mask)
    kl = SequentialKLPenalty(kappa=1.0, direction="forward", weights=kl_weights)
    reward = MaskWeights(source=masks, field="token_weights")
    l1_u = MaskL1(field="token_weights")
    return Objective(
        prior=ProductPrior(base=TokenInterpolationPrior(weights=reward), factors=(kl,)),
        beta=beta,
        terms=(
            Term(name="l1_reward_mask", term=l1_u, weight=l1_reward * masks.l1_share),
            Term(
                name="l1_kl_mask",
                term=MaskL1(field=kl_mask),
                weight=l1_kl * masks.l1_share,
            ),
        ),
    )


objective = make_objective()
train = TrainConfig(
    learning_rate=5e-7,  # README, HH sparse rows
    lr_schedule="cosine",  # config_po.yaml
    warmup_ratio=0.1,  # config_po.yaml
    epochs=3.0,  # README, HH rows
)
