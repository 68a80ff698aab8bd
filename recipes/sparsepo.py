"""SparsePO / MaPO (Christopoulou et al., arXiv 2410.05102): TDPO1 with token masks.

L = -log sigmoid(beta (u - d)) + l1_u ||m_u|| + l1_d ||m_d||, u = sum_t m_u l_t(y_w) - sum_t m_u l_t(y_l),
d = -sum_t m_d KL_t(y_w) + sum_t m_d KL_t(y_l), KL_t = KL(pi_ref || pi_theta); no alpha, no stop-gradient.

Prior: token interpolation with m_u, times exp(-sum_t m_d D_t) (class G). Link: -log sigmoid. Terms: L1
on each mask (off by default) times ``masks.l1_share`` (1/2 for one common learned mask, as the authors).
``masks``: ``DataMasks()`` (data columns; ``kl_mask="token_weights"`` for one common mask),
``ActivationMasks()`` (mapo), ``LearnedMasks()`` (sparse-common), ``LearnedMasks(independent_masks=True)``.
"""

from typing import Literal

from mipo import Objective, Term, TrainConfig
from mipo.primitives.masks import AbstractMaskSource, DataMasks, MaskWeights
from mipo.primitives.prior import ProductPrior, SequentialKLPenalty, TokenInterpolationPrior
from mipo.primitives.terms import MaskL1


def make_objective(
    *,
    beta: float = 0.1,  # SparseConfig.beta; README HH rows
    l1_reward: float = 0.0,  # l1_norm_param_u default (README HH sparse-common: 0.001)
    l1_kl: float = 0.0,  # l1_norm_param_d default
    kl_mask: Literal["kl_weights", "token_weights"] = "kl_weights",  # data masks
    masks: AbstractMaskSource = DataMasks(),  # mask_model / pref_optim of the authors
) -> Objective:
    kl = SequentialKLPenalty(kappa=1.0, weights=MaskWeights(source=masks, field=kl_mask))
    reward = TokenInterpolationPrior(weights=MaskWeights(source=masks, field="token_weights"))
    share = masks.l1_share
    return Objective(
        prior=ProductPrior(base=reward, factors=(kl,)),
        beta=beta,
        terms=(
            Term(
                name="l1_reward_mask", term=MaskL1(field="token_weights"), weight=l1_reward * share
            ),
            Term(name="l1_kl_mask", term=MaskL1(field=kl_mask), weight=l1_kl * share),
        ),
    )


objective = make_objective()
# README HH sparse rows (lr, epochs); config_po.yaml (schedule, warmup)
train = TrainConfig(learning_rate=5e-7, lr_schedule="cosine", warmup_ratio=0.1, epochs=3.0)
