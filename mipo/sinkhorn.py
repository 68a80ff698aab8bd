r"""Batched, log-domain, unbalanced entropic Sinkhorn in torch (OTPO's OT step).

For each pair $k$ of the batch, with cost $C \in \mathbb{R}^{n\times m}$ and
unnormalised masses $a \in \mathbb{R}^n_{\ge 0}$, $b \in \mathbb{R}^m_{\ge 0}$,

$$ \Gamma^\star = \arg\min_{\Gamma \ge 0}\ \langle \Gamma, C\rangle
   + \varepsilon \sum_{ij} \Gamma_{ij}(\log\Gamma_{ij} - 1)
   + \tau_1\,\mathrm{KL}(\Gamma 1 \,\|\, a) + \tau_2\,\mathrm{KL}(\Gamma^\top 1 \,\|\, b), $$

with the generalised $\mathrm{KL}(x\|y) = \sum x\log(x/y) - x + y$ (POT's
``reg_type="entropy"``; Chizat et al., arXiv 1607.05816, Alg. 2; OTPO, Li et al.,
arXiv 2505.18720; ``docs/recipe_notes/otpo.md``). The scaling iteration, with
$\varphi_k = \tau_k/(\tau_k+\varepsilon)$, $u = e^{f/\varepsilon}$,
$v = e^{g/\varepsilon}$, $K = e^{-C/\varepsilon}$, is

$$ u \leftarrow \Big(\frac{a}{Kv + 10^{-16}}\Big)^{\varphi_1}, \qquad
   v \leftarrow \Big(\frac{b}{K^\top u + 10^{-16}}\Big)^{\varphi_2}, \qquad
   \Gamma = \operatorname{diag}(u)\,K\,\operatorname{diag}(v), $$

run here on $\log u$, $\log v$ (no overflow, so POT's absorption step is never
needed). Each log-sum-exp $\log\sum_j K_{ij} v_j$ is a batched mat-vec with
$v$ shifted by its maximum and $K$ by its row maxima (built once), so an
iteration costs two ``bmm`` calls like POT's scaling loop. A shifted sum
underflows only where $Kv < 10^{-308} e^{\max\log v}$ (float64; $10^{-38}$ in
float32), far below the $10^{-16}$ guard while $\max \log v < 50$, as it is for
OTPO's costs $C \le 1$. Every step mirrors POT 0.9.4's
``sinkhorn_stabilized_unbalanced`` so that the two agree to float64 round-off:
the same $10^{-16}$ guard, $u = v = 1$ at the start (padded columns included, as
in the first $Kv$ of POT), and POT's stopping rule
$\max|u - u'| / \max(\max|u|, \max|u'|, 1) < \mathrm{tol}$, tested at the first
iteration and every tenth. Each pair stops on its own (a converged pair is frozen
while the others iterate), exactly like POT's per-pair loop, but all pairs run as
one batched tensor program: no Python loop over pairs.

POT's absorption step (taken only when $u$ or $v$ exceeds $10^5$) is not mirrored:
it does not trigger at OTPO's settings ($C \le 1$, unit masses, $\tau = 0.2$,
$\varepsilon \in \{0.1, 1\}$, so $\varphi \le 2/3$). Where it does (e.g.
$\varepsilon = 0.1$, $\tau = 5$, $\varphi = 0.98$) the iteration contracts so slowly
that POT's stopping rule halts far from the optimum on either path (we measured
plans 0.01--0.03 away from a $10^{-14}$-tolerance solution), and the two solvers
differ by that much.

Zero-mass entries ($a_i = 0$ or $b_j = 0$: prompt and padding positions) get
$\log u_i = -\infty$ (resp. $\log v_j$), so their plan rows and columns are exactly 0.

**Full precision.** The cost (pairwise distances through matrix products) and
the iteration's ``bmm`` need full float32: TensorFloat-32's 10-bit mantissa, which
a run enables for its float32 matrix products on CUDA, would perturb the
distances by about $10^{-3}$ of their size and move the plan's fixed point, and a
bfloat16 autocast would do worse. :func:`full_precision` turns both off around
the OT step (OTPO's ``TransportTokenWeights.plan``).
"""

import abc
import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import final

import torch
from jaxtyping import Float
from torch import Tensor

from mipo.errors import CompositionError

_GUARD = 1e-16  # POT adds it to K v and K^T u before dividing
_CHECK_EVERY = 10  # POT tests convergence at iteration 0 and every 10th


@contextlib.contextmanager
def full_precision(device: torch.device) -> Iterator[None]:
    """Float32 matrix products in full IEEE float32 (no TensorFloat-32) and no
    autocast on ``device`` while the block runs; the previous settings after."""
    matmul = torch.backends.cuda.matmul
    previous = matmul.fp32_precision
    if device.type == "cuda" and previous != "ieee":
        matmul.fp32_precision = "ieee"
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        if matmul.fp32_precision != previous:
            matmul.fp32_precision = previous


class SinkhornConvergenceWarning(RuntimeWarning):
    """The Sinkhorn iteration hit ``max_iter`` before the stopping rule held for
    every pair; the returned plan is the last iterate."""


class AbstractTransportSolver(abc.ABC):
    """Solves a batch of unbalanced entropic OT problems (one per pair)."""

    @abc.abstractmethod
    def __call__(
        self,
        cost: Float[Tensor, "batch n m"],
        a: Float[Tensor, "batch n"],
        b: Float[Tensor, "batch m"],
        *,
        eps: float,
        tau: tuple[float, float],
    ) -> Float[Tensor, "batch n m"]:
        r"""The plan $\Gamma^\star$ of each pair (no gradient).

        Args:
            cost: $C$, finite.
            a: row masses (0 on masked rows).
            b: column masses (0 on masked columns).
            eps: the entropic regularisation $\varepsilon > 0$.
            tau: the marginal relaxations $(\tau_1, \tau_2)$, $> 0$ (``inf`` gives
                hard marginal constraints on that side).
        """


def check_eps_tau(eps: float, tau: tuple[float, float], owner: str) -> None:
    """Raise :class:`~mipo.errors.CompositionError` on a non-positive ``eps``/``tau``."""
    if not (math.isfinite(eps) and eps > 0):
        raise CompositionError(f"{owner}: eps must be finite and > 0, got {eps}")
    if len(tau) != 2 or not all(t > 0 for t in tau):
        raise CompositionError(f"{owner}: tau must be two values > 0, got {tau}")


def _phi(tau: float, eps: float) -> float:
    return 1.0 if math.isinf(tau) else tau / (tau + eps)


def _log_matvec(
    k_hat: Float[Tensor, "batch n m"], log_x: Float[Tensor, "batch m"]
) -> Float[Tensor, "batch n"]:
    r"""$\log \hat K x$ from $\log x$, shifting $x$ by its maximum so nothing
    overflows; a sum that underflows gives $-\infty$."""
    top = log_x.amax(dim=1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    sums = torch.bmm(k_hat, torch.exp(log_x - top)[:, :, None])[:, :, 0]
    return torch.log(sums) + top


def _log_matvec_transposed(
    k_hat: Float[Tensor, "batch n m"], log_x: Float[Tensor, "batch n"]
) -> Float[Tensor, "batch m"]:
    r"""$\log \hat K^\top x$ from $\log x$ (as :func:`_log_matvec`)."""
    top = log_x.amax(dim=1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    sums = torch.bmm(torch.exp(log_x - top)[:, None, :], k_hat)[:, 0, :]
    return torch.log(sums) + top


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class TorchSinkhorn(AbstractTransportSolver):
    """mipo's batched log-domain solver (see the module docstring).

    Args:
        max_iter: iteration limit per pair (POT 0.9.4: ``numItermax=1000``).
        tol: the stopping threshold (POT 0.9.4: ``stopThr=1e-6``).
    """

    max_iter: int = 1000
    tol: float = 1e-6

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise CompositionError(
                f"TorchSinkhorn: max_iter must be >= 1, got {self.max_iter}"
            )
        if not (math.isfinite(self.tol) and self.tol > 0):
            raise CompositionError(f"TorchSinkhorn: tol must be > 0, got {self.tol}")

    def __call__(
        self,
        cost: Float[Tensor, "batch n m"],
        a: Float[Tensor, "batch n"],
        b: Float[Tensor, "batch m"],
        *,
        eps: float,
        tau: tuple[float, float],
    ) -> Float[Tensor, "batch n m"]:
        check_eps_tau(eps, tau, "TorchSinkhorn")
        with torch.no_grad():
            return self._solve(cost.detach(), a.detach(), b.detach(), eps, tau)

    def _solve(
        self, cost: Tensor, a: Tensor, b: Tensor, eps: float, tau: tuple[float, float]
    ) -> Tensor:
        phi_1, phi_2 = _phi(tau[0], eps), _phi(tau[1], eps)
        log_k = -cost / eps  # log K
        # K with each row divided by its largest entry, built once, so every
        # log-sum-exp below is a shifted batched mat-vec, as cheap as POT's K v:
        # log (K v)_i = s_i + log (K_hat v)_i,  log (K^T u)_j = log (K_hat^T (e^s u))_j
        row_shift = log_k.amax(dim=2)
        k_hat = torch.exp(log_k - row_shift[:, :, None])
        log_a, log_b = torch.log(a), torch.log(b)  # -inf at zero mass
        log_guard = math.log(_GUARD)
        batch = cost.shape[0]
        log_u = torch.zeros_like(a)
        log_v = torch.zeros_like(b)
        active = torch.ones(batch, dtype=torch.bool, device=cost.device)
        for iteration in range(self.max_iter):
            # log(K v + 1e-16) and log(K^T u + 1e-16)
            log_kv = torch.logaddexp(
                _log_matvec(k_hat, log_v) + row_shift, torch.full_like(log_u, log_guard)
            )
            new_log_u = phi_1 * (log_a - log_kv)
            log_ktu = torch.logaddexp(
                _log_matvec_transposed(k_hat, new_log_u + row_shift),
                torch.full_like(log_v, log_guard),
            )
            new_log_v = phi_2 * (log_b - log_ktu)
            keep = active[:, None]
            previous_log_u = log_u
            log_u = torch.where(keep, new_log_u, log_u)
            log_v = torch.where(keep, new_log_v, log_v)
            if iteration % _CHECK_EVERY == 0:
                u, u_prev = torch.exp(log_u), torch.exp(previous_log_u)
                scale = torch.maximum(
                    torch.maximum(u.amax(dim=1), u_prev.amax(dim=1)),
                    torch.ones_like(u[:, 0]),
                )
                err = (u - u_prev).abs().amax(dim=1) / scale
                active = active & (err > self.tol)  # POT loops while err > stopThr
                if not bool(active.any()):
                    break
        else:
            if bool(active.any()):
                pairs = active.nonzero().flatten().tolist()
                warnings.warn(
                    f"TorchSinkhorn: pairs {pairs} did not converge in "
                    f"{self.max_iter} iterations (tol {self.tol}); try a larger eps, "
                    f"a smaller tau or more iterations",
                    SinkhornConvergenceWarning,
                    stacklevel=3,
                )
        return torch.exp(log_u[:, :, None] + log_k + log_v[:, None, :])


__all__ = [
    "full_precision",
    "AbstractTransportSolver",
    "SinkhornConvergenceWarning",
    "TorchSinkhorn",
    "check_eps_tau",
]
