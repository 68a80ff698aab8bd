r"""The batched torch Sinkhorn against POT (``docs/recipe_notes/otpo.md``).

POT itself is the oracle: ``ot.unbalanced.sinkhorn_unbalanced`` with
``method="sinkhorn_stabilized"`` and ``reg_type="entropy"`` (POT 0.9.4 semantics),
called here directly, one pair at a time, on the padded arrays as the OTPO
authors do.
"""

import math
import warnings

import hypothesis.strategies as st
import numpy as np
import ot
import pytest
import torch
from hypothesis import given
from jaxtyping import TypeCheckError
from torch.testing import assert_close

from mipo import CompositionError
from mipo._ot import PotSinkhorn
from mipo.sinkhorn import SinkhornConvergenceWarning, TorchSinkhorn

F64 = torch.float64


def pot_plan(cost: np.ndarray, a: np.ndarray, b: np.ndarray, eps: float, tau: float):
    """The authors' call (POT 0.9.4 defaults, reg_type made explicit)."""
    with warnings.catch_warnings(), np.errstate(divide="ignore"):
        warnings.simplefilter("ignore")
        return ot.unbalanced.sinkhorn_unbalanced(
            a,
            b,
            cost,
            reg=eps,
            reg_m=tau,
            method="sinkhorn_stabilized",
            reg_type="entropy",
            numItermax=1000,
            stopThr=1e-6,
        )


def random_problem(seed: int, batch: int, n: int, m: int):
    """Costs in (0, 1] and 0/1 masses with at least one valid entry per side."""
    generator = torch.Generator().manual_seed(seed)
    cost = torch.rand(batch, n, m, generator=generator, dtype=F64) + 1e-6
    a = (torch.rand(batch, n, generator=generator) < 0.7).to(F64)
    b = (torch.rand(batch, m, generator=generator) < 0.7).to(F64)
    a[:, 0] = 1.0
    b[:, -1] = 1.0
    return cost, a, b


@pytest.mark.parametrize("eps", [1.0, 0.1])
@pytest.mark.parametrize("seed", range(4))
def test_torch_plan_equals_pot_per_pair(eps: float, seed: int) -> None:
    cost, a, b = random_problem(seed, batch=3, n=9, m=7)
    plan = TorchSinkhorn()(cost, a, b, eps=eps, tau=(0.2, 0.2))
    for k in range(3):
        expected = pot_plan(cost[k].numpy(), a[k].numpy(), b[k].numpy(), eps, 0.2)
        assert_close(plan[k], torch.from_numpy(expected), rtol=0.0, atol=1e-10)


@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 6),
    m=st.integers(1, 6),
    eps=st.sampled_from([1.0, 0.1]),
    tau=st.sampled_from([0.2, 0.5]),  # phi <= 5/6: POT never absorbs here
)
def test_torch_plan_equals_pot_adapter_property(
    seed: int, n: int, m: int, eps: float, tau: float
) -> None:
    cost, a, b = random_problem(seed, batch=2, n=n, m=m)
    torch_plan = TorchSinkhorn()(cost, a, b, eps=eps, tau=(tau, tau))
    pot = PotSinkhorn()(cost, a, b, eps=eps, tau=(tau, tau))
    assert_close(torch_plan, pot, rtol=0.0, atol=1e-9)


def test_zero_mass_rows_and_columns_are_exactly_zero() -> None:
    cost, a, b = random_problem(3, batch=2, n=8, m=8)
    plan = TorchSinkhorn()(cost, a, b, eps=0.1, tau=(0.2, 0.2))
    assert bool((plan[a == 0] == 0).all())
    assert bool((plan.transpose(1, 2)[b == 0] == 0).all())
    assert bool((plan[a == 1].sum(-1) > 0).all())


def test_large_tau_approaches_balanced_marginals() -> None:
    """tau -> inf: KL(Gamma 1 || a) is forced to 0, so with |a| = |b| the plan's
    row and column sums approach 1 (balanced entropic OT); the gap shrinks like
    1/tau (measured 0.08, 0.008, 0.0008, 0.00008 at tau = 10, 1e2, 1e3, 1e4; the
    last two take seconds because phi -> 1 slows the iteration, so only tau <= 100
    and tau = inf run here)."""
    generator = torch.Generator().manual_seed(0)
    cost = torch.rand(2, 6, 6, generator=generator, dtype=F64)
    ones = torch.ones(2, 6, dtype=F64)
    solver = TorchSinkhorn(tol=1e-10, max_iter=20_000)
    gaps = []
    for tau in (0.2, 10.0, 100.0):
        plan = solver(cost, ones, ones, eps=1.0, tau=(tau, tau))
        gap = torch.cat([plan.sum(2) - 1, plan.sum(1) - 1]).abs().max().item()
        gaps.append(gap)
    assert gaps[0] > 0.1  # the relaxation is real at OTPO's tau
    assert gaps[1] < 1 / 10 and gaps[2] < 1 / 100
    balanced = solver(cost, ones, ones, eps=1.0, tau=(math.inf, math.inf))
    assert_close(balanced.sum(2), ones, rtol=0.0, atol=1e-9)
    assert_close(balanced.sum(1), ones, rtol=0.0, atol=1e-9)


def test_stationarity_of_the_unbalanced_problem() -> None:
    r"""At the optimum $\Gamma = \mathrm{diag}(u) K \mathrm{diag}(v)$ with
    $u = (a / K v)^{\varphi}$: equivalently $\varepsilon\log u_i =
    -\tau\log(\Gamma 1 / a)_i$ (first-order condition of the KL relaxation)."""
    eps, tau = 0.5, 0.7
    cost, a, b = random_problem(5, batch=1, n=5, m=4)
    a, b = torch.ones_like(a), torch.ones_like(b)
    plan = TorchSinkhorn(tol=1e-14, max_iter=10_000)(
        cost, a, b, eps=eps, tau=(tau, tau)
    )
    # log Gamma_ij + C_ij / eps = log u_i + log v_j: recover log u up to a constant
    shifted = torch.log(plan[0]) + cost[0] / eps
    log_u = shifted[:, 0] - shifted[0, 0]
    log_v = shifted[0, :]  # = log u_0 + log v_j
    log_u0 = -tau / eps * torch.log(plan[0].sum(1)[0])  # stationarity at row 0
    log_u = log_u + log_u0
    log_v = log_v - log_u0
    assert_close(eps * log_u, -tau * torch.log(plan[0].sum(1)), rtol=0, atol=1e-9)
    assert_close(eps * log_v, -tau * torch.log(plan[0].sum(0)), rtol=0, atol=1e-9)


def test_no_gradient_leaves_the_solver() -> None:
    cost, a, b = random_problem(1, batch=1, n=4, m=4)
    cost.requires_grad_(True)
    plan = TorchSinkhorn()(cost, a, b, eps=1.0, tau=(0.2, 0.2))
    assert not plan.requires_grad


def test_warns_when_it_does_not_converge() -> None:
    cost, a, b = random_problem(2, batch=2, n=6, m=6)
    with pytest.warns(SinkhornConvergenceWarning, match="did not converge in 1"):
        TorchSinkhorn(max_iter=1)(cost, a, b, eps=0.1, tau=(0.2, 0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TorchSinkhorn()(cost, a, b, eps=0.1, tau=(0.2, 0.2))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: TorchSinkhorn(max_iter=0), "max_iter"),
        (lambda: TorchSinkhorn(tol=0.0), "tol"),
        (lambda: PotSinkhorn(reg_type="l2"), "reg_type"),
    ],
)
def test_bad_settings_fail_at_construction(make, match: str) -> None:
    # under pytest the run-time type check may reject a bad literal first
    with pytest.raises((CompositionError, TypeCheckError), match=match):
        make()


@pytest.mark.parametrize("eps", [0.0, -1.0, math.inf])
def test_bad_eps_fails(eps: float) -> None:
    cost, a, b = random_problem(0, batch=1, n=2, m=2)
    with pytest.raises(CompositionError, match="eps"):
        TorchSinkhorn()(cost, a, b, eps=eps, tau=(0.2, 0.2))
