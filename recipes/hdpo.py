"""H-DPO (Omura, Fujita, Kataoka, "Entropy Controllable DPO", arXiv 2411.07595).

L = -log sigmoid(beta [a S_pi(y_w) - S_ref(y_w)] - beta [a S_pi(y_l) - S_ref(y_l)])
(recalled, not read from the PDF: docs/recipe_notes/hdpo.md). a < 1 sharpens the policy.

Prior: the tempered reference zeta = pi_ref^(1/a) with scale a * beta (class E).
Weighter: sum. Margin: none. Link: -log sigmoid. mipo ships nothing named
"cEntropy": H-DPO is only our best reading of that name.
"""

from mipo import Objective, TrainConfig
from mipo.primitives import TemperedReferencePrior


def make_objective(
    *,
    beta: float = 0.1,  # DPO default; no H-DPO default recovered
    entropy_coef: float = 0.95,  # a_H < 1 (mode-seeking, H-DPO abstract); 1.0 gives DPO
) -> Objective:
    return Objective(
        prior=TemperedReferencePrior(temperature=entropy_coef), beta=entropy_coef * beta
    )


objective = make_objective()
train = TrainConfig(learning_rate=5e-7)  # DPO default; none recovered for H-DPO
