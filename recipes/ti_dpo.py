"""TI-DPO (Yang et al., arXiv 2505.19653 v3), Eq. 14, on the released code's TDPO2 base.

Prior: reference x exp(-alpha_tdpo K), K the unweighted forward sequential KL, chosen KL detached. Weighter:
gradient attribution + Gaussian position prior, mean 1 over the span, detached (Eq. 5-8). Link: -log sigmoid.
Term: log-ratio triplet on an anchor sampled by the policy (Eq. 13). Defaults: Table B13 (margin: code's).
Released-yaml preset: --objective.beta=0.2 --objective.lam=0.2 --objective.gamma=0.001
--objective.alpha_triplet=0.001 --objective.prior_sigma_div=8 --objective.span=sequence. The ten
paper-vs-code differences are listed in docs/recipe_notes/ti_dpo.md (on this recipe's docs page).
"""

from typing import Literal

from mipo import Objective, Term, TrainConfig
from mipo.primitives.attribution import GradientAttributionWeights
from mipo.primitives.prior import ProductPrior, ReferencePrior, SequentialKLPenalty
from mipo.primitives.triplet import LogRatioTriplet


def make_objective(
    *,
    beta: float = 0.1,  # Table B13 (tidpo.yaml: 0.2)
    alpha_tdpo: float = 0.5,  # Table B13 "TDPO KL weight"; tidpo.yaml alpha: 0.5
    gamma: float = 0.1,  # Table B13 triplet weight (tidpo.yaml: 0.001)
    lam: float = 0.7,  # Table B13, Eq. 8 (tidpo.yaml: 0.2; code default: 0.8)
    prior_sigma_div: float = 4.0,  # Eq. 7 sigma = T/4 (tidpo.yaml: 8)
    span: Literal["response", "sequence"] = "response",  # paper; code: "sequence"
    alpha_triplet: float = 0.1,  # not in the paper; code default (tidpo.yaml: 0.001)
) -> Objective:
    kl = SequentialKLPenalty(kappa=alpha_tdpo, direction="forward", detach_role="chosen")
    return Objective(
        prior=ProductPrior(base=ReferencePrior(), factors=(kl,)),
        weighter=GradientAttributionWeights(lam=lam, prior_sigma_div=prior_sigma_div, span=span),
        beta=beta,
        terms=(Term(name="triplet", term=LogRatioTriplet(margin=alpha_triplet), weight=gamma),),
    )


objective = make_objective()
# Released config.yaml (the paper gives none): RMSprop, lr 5e-6, constant, lengths 256 / 128;
# warmup 150 there, 2 here so that a CPU run of a few steps trains at all.
train = TrainConfig(
    learning_rate=5e-6,
    optimizer="rmsprop",
    lr_schedule="constant",
    warmup_steps=2,
    max_length=256,
    max_prompt_length=128,
)
