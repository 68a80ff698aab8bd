"""Length-normalised DPO (Lambert et al., Tulu 3, arXiv 2411.15124): DPO on mean log-ratios.

L = -log sigmoid(beta [s_w / |y_w| - s_l / |y_l|]),  s = log pi(y) - log pi_ref(y),
|y| counting the EOS (TRL ``loss_type="sigmoid_norm"``).

Prior: reference. Weighter: mean over response tokens. Margin: none. Link:
-log sigmoid. MI-DPO with a policy-dependent prior, class G
(proofs/ln_dpo_to_length_normalised_prior.md). ``rewards/*`` log beta s / |y|,
the reward the link sees; TRL logs beta s (docs/trl.md).
"""

from mipo import Objective, TrainConfig
from mipo.primitives import MeanOverResponse, ReferencePrior


def make_objective(*, beta: float = 5.0) -> Objective:  # Tulu 3's length-normalised DPO
    return Objective(prior=ReferencePrior(), weighter=MeanOverResponse(), beta=beta)


objective = make_objective()
train = TrainConfig(learning_rate=5e-7)  # Tulu 3 8B DPO learning rate
