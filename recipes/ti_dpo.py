"""TI-DPO (Yang et al., arXiv 2505.19653 v3), Eq. 14, on the released code's TDPO2 base.

Prior: reference x exp(-alpha_tdpo K), K the forward sequential KL, chosen KL detached. Weighter: gradient
attribution + Gaussian position prior, mean 1 over the span, detached (Eq. 5-8). Term: log-ratio triplet on an
anchor the policy samples (Eq. 13). Defaults: Table B13; `train`: the CPU main job (docs/which_method.md);
--preset released | paper: the authors' (docs/recipe_notes/ti_dpo.md)."""

from typing import Literal

import mipo.primitives as p
from mipo import Objective, Term, TrainConfig
from mipo.services import AnchorSampling


def make_objective(
    *,
    beta: float = 0.1,  # Table B13 (tidpo.yaml: 0.2)
    alpha_tdpo: float = 0.5,  # Table B13 "TDPO KL weight"; tidpo.yaml alpha: 0.5
    gamma: float = 0.1,  # Table B13 triplet weight (tidpo.yaml: 0.001)
    lam: float = 0.7,  # Table B13, Eq. 8 (tidpo.yaml: 0.2; code default: 0.8)
    prior_sigma_div: float = 4.0,  # Eq. 7 sigma = T/4 (tidpo.yaml: 8)
    span: Literal["response", "sequence"] = "response",  # paper; code: "sequence"
    alpha_triplet: float = 0.1,  # not in the paper; code default (tidpo.yaml: 0.001)
    anchor_tokens: int = 32,  # CPU main job; trainers.py: min(64, max_length - longest prompt)
    nll: float = 1.0,  # CPU main job: chosen NLL per token as in RPO (TI-DPO has none: 0)
) -> Objective:
    kl = p.SequentialKLPenalty(kappa=alpha_tdpo, direction="forward", detach_role="chosen")
    anchor = p.LogRatioTriplet(margin=alpha_triplet, sampling=AnchorSampling(max_new_tokens=anchor_tokens))  # fmt: skip
    triplet = Term(name="triplet", term=anchor, weight=gamma)
    sft = Term(name="sft", term=p.ChosenNLL(normalise="sequence_mean"), weight=nll)
    return Objective(
        prior=p.ProductPrior(base=p.ReferencePrior(), factors=(kl,)),
        weighter=p.GradientAttributionWeights(lam=lam, prior_sigma_div=prior_sigma_div, span=span),
        beta=beta,
        terms=(triplet, sft),
    )


objective = make_objective()
# The main job (make train), sized for a 2-core CPU: AdamW, whose bias correction makes the first
# update lr-sized (RMSprop's is 10x lr: the saw of the old defaults), on builtin:sentiment; with
# the chosen-NLL term, as pure TI-DPO's gold gain stays inside its error bar here (which_method).
# fmt: off
train = TrainConfig(dataset="builtin:sentiment?n=1200", max_examples=0, learning_rate=1e-5, optimizer="adamw",
                    lr_schedule="constant", warmup_steps=3, max_steps=20, batch_size=4, eval_max_examples=0, eval_max_new_tokens=32)
_loop = {"train.optimizer": "rmsprop", "train.learning_rate": 5e-6, "train.warmup_steps": 150, "train.lr_schedule": "constant",
         "train.max_length": 256, "train.max_prompt_length": 128, "objective.nll": 0.0, "objective.anchor_tokens": 64}
presets = {"paper": _loop, "released": {**_loop, "objective.beta": 0.2, "objective.lam": 0.2, "objective.gamma": 0.001,
           "objective.alpha_triplet": 0.001, "objective.prior_sigma_div": 8.0, "objective.span": "sequence"}}
# fmt: on
