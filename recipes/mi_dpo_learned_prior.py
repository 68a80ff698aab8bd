"""MI-DPO (Tutnov, Grosnit, Bou-Ammar, arXiv 2501.01544) with a learned prior.

J = -log sigmoid(beta [log pi(y_w|x) - log zeta(y_w)] - beta [log pi(y_l|x) - log zeta(y_l)])

Prior: zeta_phi(y_t|s_t) = softmax(reference logits + phi)[y_t], a learned
vocabulary bias phi (phi = 0: DPO), refitted by maximum likelihood to responses
sampled from the current policy every ``prior_update_every`` steps: the
Blahut-Arimoto prior step (docs/objective.md#the-prior-step-blahut-arimoto). J
sees the prior detached and never trains it. Weighter: sum. Margin: none. Link: -log sigmoid. The
parametrisation and schedule are mipo's own (the paper reports no runs).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import MarginalFitPrior


def make_objective(
    *,
    beta: float = 0.1,  # alpha of the MI-DPO loss; DPO's beta at phi = 0
    prior_update_every: int = 4,  # optimiser steps between prior fits (ours)
    fit_steps: int = 20,  # gradient steps per prior fit (ours)
    fit_learning_rate: float = 1.0,  # gradient-descent rate of phi (ours)
    sample_max_new_tokens: int = 32,  # sampled response length for the fit (ours)
    sample_temperature: float = 1.0,  # 1: samples from the policy itself
) -> Objective:
    prior = MarginalFitPrior(
        prior_update_every=prior_update_every,
        fit_steps=fit_steps,
        fit_learning_rate=fit_learning_rate,
        sample_max_new_tokens=sample_max_new_tokens,
        sample_temperature=sample_temperature,
    )
    return Objective(prior=prior, beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=5e-7)  # DPO default
