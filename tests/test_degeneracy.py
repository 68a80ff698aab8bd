r"""Minimising $J$ over a free prior is degenerate
(``docs/objective.md#the-degeneracy``).

With the policy fixed, a normalised two-point prior on $\{y_w, y_l\}$,
$\zeta = \mathrm{softmax}(\theta, 0)$, moves mass from $y_w$ to $y_l$ and drives

$$ J = -\log\sigma\big(\alpha[S_\pi(y_w) - \log\zeta(y_w)]
                      - \alpha[S_\pi(y_l) - \log\zeta(y_l)]\big) $$

to 0 without the policy changing. The toy here uses $\alpha = 0.7$ and
$S_\pi(y_w) - S_\pi(y_l) = -7.37$, which reproduces the spec's table
(5.165, 3.648, 0.869, 0.011 at $\zeta(y_w)$ = 0.5, 0.1, 1e-3, 1e-6).

mipo reads such a prior through :class:`~mipo.primitives.BatchPrior` with the
values detached (the prior is trained by its own objective), and refuses
a ``prior_logps`` tensor that carries gradient.
"""

import math

import pytest
import torch
from builders import pair, side
from torch.testing import assert_close

from mipo import CompositionError, Objective, PairBatch
from mipo.primitives import BatchPrior

F64 = torch.float64
ALPHA = 0.7
CHOSEN = [-3.0, -4.0, -2.87]  # S_pi(y_w) = -9.87
REJECTED = [-1.5, -1.0, -5.0]  # S_pi(y_l) = -2.5 (last position is padding)
REJECTED_MASK = [True, True, False]
SPEC_TABLE = {0.5: 5.165, 0.1: 3.648, 1e-3: 0.869, 1e-6: 0.011}


def _batch(log_zeta_w: float, log_zeta_l: float) -> PairBatch:
    """The prior's log-probability sits on the first token of each response
    (``BatchPrior`` sums per-token log zeta over the response)."""
    return pair(
        side([CHOSEN], prior_logps=[[log_zeta_w, 0.0, 0.0]]),
        side([REJECTED], [REJECTED_MASK], prior_logps=[[log_zeta_l, 0.0, 0.0]]),
    )


def _oracle(zeta_w: float) -> float:
    """J by hand: softplus(-alpha [(S_w - log zeta_w) - (S_l - log zeta_l)])."""
    z = ALPHA * ((sum(CHOSEN) - math.log(zeta_w)) - (-2.5 - math.log1p(-zeta_w)))
    return math.log1p(math.exp(-z))


def test_moving_mass_to_the_rejected_response_drives_j_to_zero() -> None:
    objective = Objective(prior=BatchPrior(), beta=ALPHA)
    rows = []
    for zeta_w, spec in SPEC_TABLE.items():
        theta = torch.tensor([math.log(zeta_w) - math.log1p(-zeta_w), 0.0], dtype=F64)
        log_zeta = torch.log_softmax(theta, dim=0).detach()
        j = objective(_batch(log_zeta[0].item(), log_zeta[1].item())).loss.item()
        rows.append((zeta_w, j))
        assert_close(j, _oracle(zeta_w), rtol=1e-12, atol=1e-12)
        assert_close(j, spec, rtol=0.0, atol=1e-3)
    print("\nzeta(y_w)   J")
    for zeta_w, j in rows:
        print(f"{zeta_w:<10.0e}  {j:.4f}")
    values = [j for _, j in rows]
    assert all(a > b for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] < 0.05


def test_gradient_descent_on_the_prior_lowers_j_monotonically() -> None:
    """Descending J in theta (an independent float64 implementation, since mipo
    refuses to differentiate J through a prior) lowers J at every step, and mipo's
    J at the same (detached) prior agrees."""
    objective = Objective(prior=BatchPrior(), beta=ALPHA)
    theta = torch.zeros(2, dtype=F64, requires_grad=True)
    optimiser = torch.optim.SGD([theta], lr=2.0)
    history = []
    for _ in range(40):
        log_zeta = torch.log_softmax(theta, dim=0)
        z = ALPHA * ((sum(CHOSEN) - log_zeta[0]) - (-2.5 - log_zeta[1]))
        j = torch.nn.functional.softplus(-z)
        mipo_j = objective(_batch(log_zeta[0].item(), log_zeta[1].item())).loss
        assert_close(mipo_j, j.detach())
        history.append(j.item())
        optimiser.zero_grad()
        j.backward()
        optimiser.step()
    assert all(a > b for a, b in zip(history, history[1:], strict=False))
    assert history[-1] < 0.05 * history[0]


def test_mipo_refuses_to_optimise_a_prior_through_j() -> None:
    theta = torch.zeros(2, dtype=F64, requires_grad=True)
    log_zeta = torch.log_softmax(theta, dim=0)
    live = torch.stack([log_zeta[0], log_zeta.new_zeros(()), log_zeta.new_zeros(())])
    batch = pair(
        side([CHOSEN], prior_logps=live[None]),
        side([REJECTED], [REJECTED_MASK], prior_logps=[[log_zeta[1].item(), 0, 0]]),
    )
    with pytest.raises(CompositionError, match=r"objective\.md#the-degeneracy"):
        Objective(prior=BatchPrior(), beta=ALPHA)(batch)
