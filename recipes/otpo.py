"""OTPO (Li et al., ACL 2025, arXiv 2505.18720; code Mimasss2/OTPO @ fb909ae4).

L = -log sigmoid(beta [sum_i w_c,i l_i(y_w) - sum_j w_r,j l_j(y_l)]) with w_c = Gamma 1, w_r = Gamma^T 1
from an unbalanced entropic OT plan between the policy's detached last hidden states of the two
responses (cost: Euclidean + 1e-6, divided by the padded maximum when > 1), scaled so that both sides
sum to min(|y_w|, |y_l|) (docs/recipe_notes/otpo.md).

Prior: the reference (class E). Weighter: ``TransportTokenWeights`` (the same weights on policy and
reference log-probs). Margin: none. Link: -log sigmoid. Terms: none. Presets: Llama-3-8B, the
defaults; Llama-3.2-3B: ``make_objective(beta=0.1, eps=0.1)``. The uniform min-length-budget ablation
is ``dataclasses.replace(objective, weighter=UniformBudgetWeights())``.
"""

from mipo import Objective, TrainConfig
from mipo.primitives import ReferencePrior, TransportTokenWeights


def make_objective(
    *,
    beta: float = 0.01,  # Llama-3-8B configs; Llama-3.2-3B: 0.1
    eps: float = 1.0,  # ot_reg, dataclass default; Llama-3.2-3B: 0.1
    tau: float = 0.2,  # ot_reg_m default (0.2,), both marginals
) -> Objective:
    return Objective(
        prior=ReferencePrior(),
        weighter=TransportTokenWeights(eps=eps, tau=tau),
        beta=beta,
    )


objective = make_objective()
# All OTPO configs: adamw_torch, lr 5e-7, cosine, warmup 0.1, max_grad_norm 20, lengths 2048 / 1800
train = TrainConfig(
    learning_rate=5e-7,
    optimizer="adamw",
    lr_schedule="cosine",
    warmup_ratio=0.1,
    max_grad_norm=20.0,
    max_length=2048,
    max_prompt_length=1800,
    batch_size=2,  # per device; x 16 accumulation x 4 A100 = 128 (8B)
    gradient_accumulation_steps=16,  # 8B configs (3B: 32 on 2 GPUs)
)
