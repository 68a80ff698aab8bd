"""CPO (Xu et al., arXiv 2401.08417): contrastive preference optimisation.

L = -log sigmoid(beta [log pi(y_w) - log pi(y_l)] - gamma) + cpo_alpha NLL(y_w),
no reference (Eq. 3 plus the NLL term; TRL ``trl.experimental.cpo``).

Prior: uniform. Weighter: sum (``MeanOverResponse()`` with ``gamma`` > 0 is TRL's
``loss_type="simpo"``). Margin: constant gamma. Link: -log sigmoid
(``LabelSmoothedLink``, ``HingeLink``, ``IPOLink``: TRL's other loss types).
Term: chosen NLL, token mean. The preference part is reference-free DPO, MI-DPO
with the uniform prior; the NLL term is outside it.
"""

from mipo import Objective, Term, TrainConfig
from mipo.primitives import (
    AbstractLink,
    AbstractTokenWeighter,
    ChosenNLL,
    ConstantMargin,
    LogSigmoidLink,
    SumOverResponse,
    UniformPrior,
)


def make_objective(
    *,
    beta: float = 0.1,  # TRL CPOConfig default
    cpo_alpha: float = 1.0,  # TRL CPOConfig default
    gamma: float = 0.0,  # TRL simpo_gamma (0.5) only with loss_type="simpo"
    weighter: AbstractTokenWeighter = SumOverResponse(),
    link: AbstractLink = LogSigmoidLink(),
) -> Objective:
    nll = Term(name="nll", term=ChosenNLL(normalise="batch_tokens"), weight=cpo_alpha)
    return Objective(
        prior=UniformPrior(),
        weighter=weighter,
        margin=ConstantMargin(gamma=gamma),
        link=link,
        beta=beta,
        terms=(nll,),
    )


objective = make_objective()
train = TrainConfig(learning_rate=1e-6)  # TRL CPOConfig default
