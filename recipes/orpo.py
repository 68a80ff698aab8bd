"""ORPO (Hong, Lee, Thorne, arXiv 2403.07691): odds-ratio preference optimisation.

L = NLL(y_w) - lambda log sigmoid(log odds(y_w) - log odds(y_l)),
log odds(y) = p(y) - log(1 - exp p(y)), p(y) the mean token log-prob; no reference.

Prior: uniform. Weighter: mean over response tokens. Margin: none. Link: the
odds-ratio link, lambda = beta (TRL's convention). Term: NLL of the chosen
response tokens, token mean over the batch (TRL also counts the prompt's tokens:
docs/trl.md). Not MI-DPO (proofs/trl_losses_outside_mi.md).
"""

from mipo import Objective, Term, TrainConfig
from mipo.primitives import ChosenNLL, MeanOverResponse, OddsRatioLink, UniformPrior


def make_objective(*, beta: float = 0.1) -> Objective:  # lambda: xfactlab/orpo Mistral-ORPO-beta
    return Objective(
        prior=UniformPrior(),
        weighter=MeanOverResponse(),
        link=OddsRatioLink(),
        beta=beta,
        terms=(Term(name="nll", term=ChosenNLL(normalise="batch_tokens")),),
    )


objective = make_objective()
# xfactlab/orpo scripts/run_mistral_orpo_beta.sh: lr 5e-6, 200 warmup steps
train = TrainConfig(learning_rate=5e-6, warmup_steps=200)
