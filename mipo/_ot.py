r"""The only module that imports POT (Python Optimal Transport): a typed adapter.

:class:`PotSinkhorn` solves each pair with
``ot.unbalanced.sinkhorn_unbalanced(a, b, C, reg=eps, reg_m=tau,
method="sinkhorn_stabilized", reg_type="entropy")``, one pair at a time, as the
OTPO authors do (Li et al., arXiv 2505.18720; code ``Mimasss2/OTPO``; notes:
``docs/recipe_notes/otpo.md``). ``reg_type="entropy"`` is passed explicitly: POT
0.9.4 defaulted to it, POT >= 0.9.5 defaults to ``"kl"`` (regularising towards
$a b^\top$), which on OTPO's zero-mass padded entries stops at iteration 0 with an
unconverged plan. With the explicit argument every POT version solves

$$ \min_{\Gamma\ge 0} \langle\Gamma, C\rangle + \varepsilon\sum_{ij}\Gamma_{ij}
   (\log\Gamma_{ij} - 1) + \tau_1\mathrm{KL}(\Gamma 1\|a)
   + \tau_2\mathrm{KL}(\Gamma^\top 1\|b). $$

It is the reference for :class:`~mipo.sinkhorn.TorchSinkhorn` and the authors'
per-pair loop in the overhead benchmark.
"""

import warnings
from dataclasses import dataclass
from typing import Literal, final

import numpy as np
import ot
import torch
from jaxtyping import Float
from torch import Tensor

from mipo.errors import CompositionError
from mipo.sinkhorn import (
    AbstractTransportSolver,
    SinkhornConvergenceWarning,
    check_eps_tau,
)

POT_VERSION: str = ot.__version__

# POT >= 0.9.5 announces that reg_type="entropy" replaces c by the all-ones matrix;
# that is exactly the 0.9.4 semantics we ask for, so the notice is not news.
_ENTROPY_NOTICE = "If reg_type = entropy"


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class PotSinkhorn(AbstractTransportSolver):
    """POT's stabilised unbalanced Sinkhorn, one pair at a time.

    Args:
        max_iter: POT's ``numItermax`` (0.9.4 default 1000).
        tol: POT's ``stopThr`` (0.9.4 default 1e-6).
        absorb_threshold: POT's stabilisation threshold ``tau`` (default 1e5;
            renamed so as not to clash with the marginal relaxation).
        reg_type: POT's ``reg_type``. ``"entropy"`` keeps POT 0.9.4 semantics;
            ``"kl"`` exists only to demonstrate the version trap.
    """

    max_iter: int = 1000
    tol: float = 1e-6
    absorb_threshold: float = 1e5
    reg_type: Literal["entropy", "kl"] = "entropy"

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise CompositionError(
                f"PotSinkhorn: max_iter must be >= 1, got {self.max_iter}"
            )
        if not self.tol > 0:
            raise CompositionError(f"PotSinkhorn: tol must be > 0, got {self.tol}")
        if self.reg_type not in ("entropy", "kl"):
            raise CompositionError(
                f"PotSinkhorn: reg_type must be 'entropy' or 'kl', got {self.reg_type!r}"
            )

    def __call__(
        self,
        cost: Float[Tensor, "batch n m"],
        a: Float[Tensor, "batch n"],
        b: Float[Tensor, "batch m"],
        *,
        eps: float,
        tau: tuple[float, float],
    ) -> Float[Tensor, "batch n m"]:
        check_eps_tau(eps, tau, "PotSinkhorn")
        costs = cost.detach().cpu().double().numpy()
        masses_a = a.detach().cpu().double().numpy()
        masses_b = b.detach().cpu().double().numpy()
        plans = [
            self._solve_one(costs[k], masses_a[k], masses_b[k], eps, tau, k)
            for k in range(costs.shape[0])
        ]
        stacked = np.stack(plans) if plans else np.zeros_like(costs)
        return torch.from_numpy(stacked).to(device=cost.device, dtype=cost.dtype)

    def _solve_one(
        self,
        cost: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        eps: float,
        tau: tuple[float, float],
        pair: int,
    ) -> np.ndarray:
        # zero-mass entries give u = 0 and log(0) = -inf inside POT: expected, and
        # their plan entries come out exactly 0
        with (
            warnings.catch_warnings(record=True) as caught,
            np.errstate(divide="ignore"),
        ):
            warnings.simplefilter("always")
            plan = ot.unbalanced.sinkhorn_unbalanced(
                a,
                b,
                cost,
                reg=eps,
                reg_m=tau,
                method="sinkhorn_stabilized",
                reg_type=self.reg_type,
                numItermax=self.max_iter,
                stopThr=self.tol,
                tau=self.absorb_threshold,
            )
        for warning in caught:
            message = str(warning.message)
            if message.startswith(_ENTROPY_NOTICE):
                continue
            warnings.warn(
                f"PotSinkhorn (POT {POT_VERSION}), pair {pair}: {message}",
                SinkhornConvergenceWarning,
                stacklevel=4,
            )
        return np.asarray(plan)


__all__ = ["POT_VERSION", "PotSinkhorn"]
