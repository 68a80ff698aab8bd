r"""OTPO's pair-coupled token weights from an unbalanced optimal-transport plan.

Li, Huzhang, Zhang, Wang, Zeng, "Optimal Transport-Based Token Weighting scheme
for Enhanced Preference Optimization", ACL 2025, arXiv 2505.18720 (code
``Mimasss2/OTPO`` @ ``fb909ae4``, ``scripts/otpo_trainer.py``; notes:
``docs/recipe_notes/otpo.md``). With $h^c_i$, $h^r_j$ the detached policy last
hidden states (after the final norm) that predict response token $i$ of $y_w$
and $j$ of $y_l$ (the state one position before the token), and the response
masks $a = M_c$, $b = M_r$:

$$ C_{ij} = \frac{\lVert h^c_i - h^r_j\rVert_2 + 10^{-6}}{N}, \qquad
   N = \max\big(\max_{ij}\lVert h^c_i - h^r_j\rVert,\
   [\exists\,i \notin M_c]\max_j\lVert h^r_j\rVert,\
   [\exists\,j \notin M_r]\max_i\lVert h^c_i\rVert\big) + 10^{-6}
   \ \text{(only if } N > 1\text{)}, $$

the maximum of the authors' padded cost matrix: they zero the hidden states off
the masks and take distances over the whole padded grid, so a zeroed chosen row
puts the rejected norms into the maximum, and the other way round. A side whose
row has no position off its mask (a one-token prompt on the batch's longest
sequence) has no zeroed row, and its opposite norms stay out. $\Gamma$ solves
the unbalanced entropic problem of :mod:`mipo.sinkhorn` with $(\varepsilon,
\tau)$, and the weights are the plan's marginals scaled to the min-length
budget:

$$ \omega_c = \frac{\Gamma 1}{1^\top\Gamma 1}\min(|y_w|, |y_l|), \qquad
   \omega_r = \frac{\Gamma^\top 1}{1^\top\Gamma 1}\min(|y_w|, |y_l|), $$

so $\sum_i \omega_{c,i} = \sum_j \omega_{r,j} = \min(|y_w|, |y_l|)$. The weights are
constants (no gradient) and the same tensor weights the policy and the reference
log-probs.
"""

from dataclasses import dataclass
from typing import Literal, final

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mipo.batch import PairBatch
from mipo.errors import BatchError, CompositionError
from mipo.needs import Need
from mipo.primitives.weighter import AbstractTokenWeighter
from mipo.sinkhorn import (
    AbstractTransportSolver,
    TorchSinkhorn,
    check_eps_tau,
    full_precision,
)
from mipo.typing import PerPair, TokenWeights

_DISTANCE_OFFSET = 1e-6  # the authors add it to every distance (cdist + 1e-6)


Normaliser = Literal["padded", "max_including_norms", "pairwise"]


def transport_cost(
    chosen: Float[Tensor, "batch n hidden"],
    rejected: Float[Tensor, "batch m hidden"],
    chosen_mask: Bool[Tensor, "batch n"],
    rejected_mask: Bool[Tensor, "batch m"],
    *,
    normaliser: Normaliser = "padded",
) -> Float[Tensor, "batch n m"]:
    r"""The cost $C$ ``[batch, n, m]`` of the module docstring (``n = m = seq``
    when padded; sliced supports may differ).

    Masked rows of both sides are zeroed before the distances, as in the
    authors' code, so padded entries hold hidden-state norms (they only matter
    through the solver's first iteration; their mass is 0). ``normaliser``:
    ``"padded"`` is the authors' padded maximum exactly (the norms of one side
    count only when the other side's row has a position off its mask);
    ``"max_including_norms"`` always counts both sides' norms, which does not
    depend on the padding and equals ``"padded"`` whenever both rows have such a
    position; ``"pairwise"`` uses $\max_{ij\,\mathrm{valid}}\lVert h^c_i -
    h^r_j\rVert + 10^{-6}$ only.
    """
    p = chosen * chosen_mask[..., None]
    q = rejected * rejected_mask[..., None]
    distance = torch.cdist(p, q, p=2.0)
    valid = chosen_mask[:, :, None] & rejected_mask[:, None, :]
    scale = torch.where(valid, distance, torch.zeros_like(distance)).amax(dim=(1, 2))
    if normaliser != "pairwise":
        chosen_norms = p.norm(dim=-1).amax(dim=1)
        rejected_norms = q.norm(dim=-1).amax(dim=1)
        if normaliser == "padded":
            # a zeroed chosen row is at distance |q_j| from every rejected state
            zero = torch.zeros_like(scale)
            rejected_norms = torch.where(
                (~chosen_mask).any(dim=1), rejected_norms, zero
            )
            chosen_norms = torch.where((~rejected_mask).any(dim=1), chosen_norms, zero)
        scale = torch.maximum(scale, torch.maximum(chosen_norms, rejected_norms))
    scale = scale + _DISTANCE_OFFSET
    # divide only when the maximum exceeds 1 (authors: `if max(C) > 1`)
    scale = torch.where(scale > 1.0, scale, torch.ones_like(scale))
    return (distance + _DISTANCE_OFFSET) / scale[:, None, None]


def budget_weights(
    chosen_marginal: Float[Tensor, "batch n"],
    rejected_marginal: Float[Tensor, "batch m"],
    chosen_mask: Bool[Tensor, "batch n"],
    rejected_mask: Bool[Tensor, "batch m"],
) -> tuple[Float[Tensor, "batch n"], Float[Tensor, "batch m"]]:
    r"""$\omega = \text{marginal} / (1^\top\Gamma 1) \cdot \min(|y_w|, |y_l|)$, exactly 0
    off the masks (module docstring)."""
    budget = _min_length(chosen_mask, rejected_mask)
    total = chosen_marginal.sum(dim=-1)
    scale = (budget / total)[:, None]
    chosen = chosen_marginal * scale
    rejected = rejected_marginal * scale
    return (
        torch.where(chosen_mask, chosen, torch.zeros_like(chosen)),
        torch.where(rejected_mask, rejected, torch.zeros_like(rejected)),
    )


def _min_length(
    chosen_mask: Bool[Tensor, "batch n"], rejected_mask: Bool[Tensor, "batch m"]
) -> PerPair:
    lengths = torch.stack((chosen_mask.sum(-1), rejected_mask.sum(-1)))
    return lengths.amin(dim=0).double()


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class TransportTokenWeights(AbstractTokenWeighter):
    r"""OTPO's weights $\omega_c = \Gamma 1$, $\omega_r = \Gamma^\top 1$ scaled to the
    min-length budget (module docstring).

    Args:
        eps: entropic regularisation $\varepsilon$ (authors' ``ot_reg``: 1.0 for
            Llama-3-8B, 0.1 for Llama-3.2-3B).
        tau: marginal relaxation $\tau$ (``ot_reg_m``, 0.2), one value for both
            sides or a pair $(\tau_1, \tau_2)$.
        normaliser: cost normaliser: ``"padded"`` (the authors', exactly),
            ``"max_including_norms"`` (padding-independent) or ``"pairwise"``
            (:func:`transport_cost`).
        solver: :class:`~mipo.sinkhorn.TorchSinkhorn` (batched, default) or
            :class:`mipo._ot.PotSinkhorn` (POT, per pair).
        precision: dtype of the cost and the solver; the authors cast to float32.
    """

    eps: float = 1.0
    tau: float | tuple[float, float] = 0.2
    normaliser: Normaliser = "padded"
    solver: AbstractTransportSolver = TorchSinkhorn()
    precision: Literal["float32", "float64"] = "float32"

    def __post_init__(self) -> None:
        check_eps_tau(self.eps, self.taus, "TransportTokenWeights")
        if self.normaliser not in ("padded", "max_including_norms", "pairwise"):
            raise CompositionError(
                "TransportTokenWeights: normaliser must be 'padded', "
                f"'max_including_norms' or 'pairwise', got {self.normaliser!r}"
            )
        if not isinstance(self.solver, AbstractTransportSolver):
            raise CompositionError(
                f"TransportTokenWeights: solver {self.solver!r} is not a transport solver"
            )
        if self.precision not in ("float32", "float64"):
            raise CompositionError(
                f"TransportTokenWeights: precision must be 'float32' or 'float64', got "
                f"{self.precision!r}"
            )

    @property
    def taus(self) -> tuple[float, float]:
        """$(\\tau_1, \\tau_2)$; a single value is used on both sides (as POT does)."""
        if isinstance(self.tau, tuple):
            return self.tau
        return (self.tau, self.tau)

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.HIDDEN_STATES})

    def plan(self, batch: PairBatch) -> Float[Tensor, "batch seq seq"]:
        r"""The transport plan $\Gamma$ ``[batch, seq, seq]`` (rows: chosen tokens)."""
        chosen, rejected = batch.chosen, batch.rejected
        if chosen.hidden_states is None or rejected.hidden_states is None:
            role = "chosen" if chosen.hidden_states is None else "rejected"
            raise BatchError(
                f"{role}.hidden_states: TransportTokenWeights needs the policy's last "
                f"hidden states"
            )
        dtype = getattr(torch, self.precision)
        # full float32 or float64: no TF32, no autocast (mipo.sinkhorn)
        with full_precision(chosen.hidden_states.device):
            cost = transport_cost(
                chosen.hidden_states.detach().to(dtype),
                rejected.hidden_states.detach().to(dtype),
                chosen.response_mask,
                rejected.response_mask,
                normaliser=self.normaliser,
            )
            a = chosen.response_mask.to(dtype)
            b = rejected.response_mask.to(dtype)
            return self.solver(cost, a, b, eps=self.eps, tau=self.taus)

    def __call__(self, batch: PairBatch) -> tuple[TokenWeights, TokenWeights]:
        gamma = self.plan(batch).detach()
        chosen, rejected = budget_weights(
            gamma.sum(dim=2),
            gamma.sum(dim=1),
            batch.chosen.response_mask,
            batch.rejected.response_mask,
        )
        dtype = batch.chosen.policy_logps.dtype
        return chosen.to(dtype), rejected.to(dtype)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class UniformBudgetWeights(AbstractTokenWeighter):
    r"""The OTPO ablation "OT replaced by uniform weights": a uniform plan
    $\Gamma_{ij} \propto M_{c,i} M_{r,j}$ scaled to the min-length budget,

    $$ \omega_{c,i} = \frac{\min(|y_w|, |y_l|)}{|y_w|}, \qquad
       \omega_{r,j} = \frac{\min(|y_w|, |y_l|)}{|y_l|} $$

    on response tokens. With $|y_w| = |y_l|$ every weight is 1 (DPO).

    References:
        Li et al., arXiv 2505.18720, ablation table (``docs/recipe_notes/otpo.md``).
    """

    def __call__(self, batch: PairBatch) -> tuple[TokenWeights, TokenWeights]:
        chosen_mask = batch.chosen.response_mask
        rejected_mask = batch.rejected.response_mask
        dtype = batch.chosen.policy_logps.dtype
        lengths_c = chosen_mask.sum(-1, keepdim=True).double()
        lengths_r = rejected_mask.sum(-1, keepdim=True).double()
        # marginals of the uniform plan M_c M_r^T: row sums |y_l|, column sums |y_w|
        chosen, rejected = budget_weights(
            chosen_mask.double() * lengths_r,
            rejected_mask.double() * lengths_c,
            chosen_mask,
            rejected_mask,
        )
        return chosen.to(dtype), rejected.to(dtype)


__all__ = [
    "TransportTokenWeights",
    "UniformBudgetWeights",
    "budget_weights",
    "transport_cost",
]
