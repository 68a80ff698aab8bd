"""f-DPO (Wang et al., arXiv 2309.16240): DPO under an f-divergence constraint.

L = link(beta [g(s_w) / n_w - g(s_l) / n_l]),  g(x) = f'(e^x) - f'(1),
s = log pi(y) - log pi_ref(y), n = 1 (or |y| with ``length_normalised``), e.g.
g = (1 - e^{-alpha x}) / alpha for the alpha-divergence (TRL ``f_divergence_type``).

Prior: reference. Weighter: sum. Margin: none. Link: ``FDivergenceLink`` around any
logit link (log-sigmoid, hinge, IPO, robust, EXO, DiscoPOP). With the log-sigmoid
link it is MI-DPO with a policy-dependent prior, class G
(proofs/f_dpo_to_policy_dependent_prior.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import (
    AbstractFDivergence,
    AbstractLink,
    AlphaDivergence,
    FDivergenceLink,
    LogSigmoidLink,
    ReferencePrior,
)


def make_objective(
    *,
    beta: float = 0.1,  # TRL DPOConfig default
    divergence: AbstractFDivergence = AlphaDivergence(alpha=0.5),  # TRL coef default
    link: AbstractLink = LogSigmoidLink(),  # IPOLink() etc.: TRL's other loss types
    length_normalised: bool = False,  # True: TRL ipo / sigmoid_norm
) -> Objective:
    link = FDivergenceLink(link=link, divergence=divergence, length_normalised=length_normalised)
    return Objective(prior=ReferencePrior(), link=link, beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL DPOConfig default
