"""DPO (Rafailov et al., arXiv 2305.18290), Eq. 7.

L = -log sigmoid(beta * [(S_pi(y_w) - S_ref(y_w)) - (S_pi(y_l) - S_ref(y_l))])

Prior: the reference model (zeta = pi_ref, class E); pass ``prior=UniformPrior()``
for reference-free DPO. Weighter: sum over response tokens, EOS included.
Margin: none. Link: -log sigmoid. Terms: none.
"""

from mipo import Objective, TrainConfig
from mipo.primitives import AbstractPrior, ReferencePrior


def make_objective(
    *,
    beta: float = 0.1,  # eric-mitchell examples and TRL DPOConfig default
    prior: AbstractPrior = ReferencePrior(),  # UniformPrior() = reference-free
) -> Objective:
    return Objective(prior=prior, beta=beta)


objective = make_objective()
train = TrainConfig(
    learning_rate=5e-7,  # eric-mitchell config/config.yaml
    optimizer="rmsprop",  # eric-mitchell config/config.yaml
    warmup_steps=150,  # eric-mitchell config/config.yaml
    lr_schedule="constant",  # eric-mitchell: linear warmup, then constant
    max_grad_norm=10.0,  # eric-mitchell config/config.yaml
    max_length=512,  # eric-mitchell config/config.yaml
    max_prompt_length=256,  # eric-mitchell config/config.yaml
)
