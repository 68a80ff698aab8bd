"""SimPO (Meng, Xia, Chen, arXiv 2405.14734), Eq. 6.

L = -log sigmoid(beta/|y_w| S_pi(y_w) - beta/|y_l| S_pi(y_l) - gamma), gamma = beta * gamma_beta_ratio,
|y| counting the EOS; plus sft_weight * NLL(chosen) (off by default).

Prior: the geometric-mean prior zeta = pi_theta / pi_theta^(1/|y|), differentiable (class G: a detached
prior gives |y|-times larger gradients). Weighter: sum. Margin: constant gamma (class M: no prior can
carry it). Link: -log sigmoid, or ``link=HingeLink()`` (SimPO's hinge). Term: chosen NLL (``sft``).
"""

from mipo import Objective, Term, TrainConfig
from mipo.primitives.link import AbstractLink, LogSigmoidLink
from mipo.primitives.margin import ConstantMargin
from mipo.primitives.prior import GeometricMeanPrior
from mipo.primitives.terms import ChosenNLL


def make_objective(
    *,
    beta: float = 2.0,  # SimPOConfig default (scripts/simpo_config.py)
    gamma_beta_ratio: float = 0.25,  # SimPOConfig default; Llama-3-Instruct: 0.55 (App. B)
    sft_weight: float = 0.0,  # SimPOConfig default
    link: AbstractLink = LogSigmoidLink(),  # loss_type="sigmoid"; HingeLink() = "hinge"
) -> Objective:
    return Objective(
        prior=GeometricMeanPrior(differentiable=True),
        margin=ConstantMargin(gamma=beta * gamma_beta_ratio),
        link=link,
        beta=beta,
        terms=(Term(name="sft", term=ChosenNLL(normalise="batch_tokens"), weight=sft_weight),),
    )


objective = make_objective()
# training_configs/llama-3-8b-base-simpo.yaml: lr 6e-7, cosine, warmup 0.1, lengths 2048 / 1800
train = TrainConfig(
    learning_rate=6e-7,
    lr_schedule="cosine",
    warmup_ratio=0.1,
    max_length=2048,
    max_prompt_length=1800,
)
