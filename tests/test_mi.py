r"""Mutual-information identities on tabular bandits
(``docs/objective.md#mutual-information-identities``).

Oracles are written here in NumPy float64 from the spec's formulas and never call
mipo. The optimisation tests state exactly what is minimised:

- ``J_fixed`` $= \min_\theta J(\pi_\theta, \pi_{ref})$: the policy family
  $\pi_\theta(y|x) \propto \pi_{ref}(y|x)\,e^{\theta\,\phi(x,y)}$ with one scalar
  $\theta$, prior fixed at the reference;
- ``J_joint`` $= \min_{\theta,\,\log\zeta} J(\pi_\theta, \zeta)$ over the same
  $\theta$ and a free table $\log\zeta(y|x)$, started from the fixed optimum
  $(\theta^*, \log\pi_{ref})$.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.testing import assert_close

from mipo.tools.mi import (
    blahut_arimoto,
    expected_kl,
    free_energy,
    gibbs_policy,
    log_marginal,
    mutual_information,
    preference_loss,
)

F64 = torch.float64


def _np_log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _np_kl(p: np.ndarray, q: np.ndarray) -> float:
    return float((p * (np.log(p) - np.log(q))).sum())


def _np_mutual_information(px: np.ndarray, policy: np.ndarray) -> float:
    """Oracle: I = sum_x sum_y p(x) pi(y|x) log(pi(y|x) / p_pi(y))."""
    marginal = (px[:, None] * policy).sum(axis=0)
    joint = px[:, None] * policy
    return float((joint * np.log(policy / marginal[None, :])).sum())


tables = st.integers(2, 5).flatmap(lambda x: st.integers(2, 6).map(lambda y: (x, y)))
logits_values = st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False)


@st.composite
def mi_worlds(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p(x), pi(y|x), zeta(y)), every probability bounded away from 0."""
    x, y = draw(tables)
    px = _np_log_softmax(draw(arrays(np.float64, (x,), elements=logits_values)))
    policy = _np_log_softmax(draw(arrays(np.float64, (x, y), elements=logits_values)))
    prior = _np_log_softmax(draw(arrays(np.float64, (y,), elements=logits_values)))
    return np.exp(px), np.exp(policy), np.exp(prior)


@given(mi_worlds())
def test_expected_kl_is_information_plus_marginal_gap(
    world: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """E_x KL(pi||zeta) = I(X;Y) + KL(p_pi||zeta) (identity (b))."""
    px, policy, prior = world
    marginal = (px[:, None] * policy).sum(axis=0)
    oracle_expected = sum(px[i] * _np_kl(policy[i], prior) for i in range(len(px)))
    oracle_information = _np_mutual_information(px, policy)
    t_px, t_policy, t_prior = (torch.tensor(a, dtype=F64) for a in world)
    log_policy, log_prior = t_policy.log(), t_prior.log()
    information = mutual_information(log_policy, t_px)
    total = expected_kl(log_policy, log_prior, t_px)
    assert_close(float(information), oracle_information, rtol=1e-9, atol=1e-12)
    assert_close(float(total), oracle_expected, rtol=1e-9, atol=1e-12)
    assert_close(
        float(total - information), _np_kl(marginal, prior), rtol=1e-7, atol=1e-11
    )
    # the marginal is the minimising prior: the gap is >= 0 and 0 at zeta = p_pi
    assert float(total) >= float(information) - 1e-12
    at_marginal = expected_kl(log_policy, log_marginal(log_policy, t_px), t_px)
    assert_close(float(at_marginal), oracle_information, rtol=1e-9, atol=1e-12)


@given(
    mi_worlds(),
    st.floats(0.1, 5.0),
    arrays(np.float64, (5, 6), elements=st.floats(-2.0, 2.0)),
)
def test_gibbs_policy_matches_its_definition(
    world: tuple[np.ndarray, np.ndarray, np.ndarray], b: float, rewards: np.ndarray
) -> None:
    """pi(y|x) = zeta(y) e^{b r(x,y)} / Z(x), and r = (1/b) log(pi/zeta) + (1/b)
    log Z(x) recovers the reward (identities (d), (e))."""
    _, policy, prior = world
    reward = rewards[: policy.shape[0], : policy.shape[1]]
    unnormalised = prior[None, :] * np.exp(b * reward)
    partition = unnormalised.sum(axis=1, keepdims=True)
    oracle = unnormalised / partition
    log_policy = gibbs_policy(
        torch.tensor(np.log(prior), dtype=F64), torch.tensor(reward, dtype=F64), b
    )
    assert_close(log_policy.exp().numpy(), oracle, rtol=1e-9, atol=1e-12)
    recovered = (log_policy.numpy() - np.log(prior)[None, :] + np.log(partition)) / b
    assert_close(recovered, reward, rtol=1e-9, atol=1e-9)


def _bandit() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    reward = torch.randn(4, 6, generator=generator, dtype=F64)
    px = torch.softmax(torch.randn(4, generator=generator, dtype=F64), dim=0)
    return reward, px


def test_blahut_arimoto_reaches_the_fixed_point() -> None:
    """The alternation converges (residual < 1e-9), F never decreases, and the
    result satisfies both fixed-point equations of identity (d) (checked by a NumPy
    oracle, not by mipo)."""
    reward, px = _bandit()
    b = 1.5
    result = blahut_arimoto(reward, px, b, tolerance=1e-12)
    assert result.residual < 1e-9
    energies = np.array(result.free_energies)
    assert np.all(np.diff(energies) >= -1e-12)
    prior = result.log_prior.exp().numpy()
    r, p = reward.numpy(), px.numpy()
    oracle_policy = prior[None, :] * np.exp(b * r)
    oracle_policy /= oracle_policy.sum(axis=1, keepdims=True)
    assert_close(result.log_policy.exp().numpy(), oracle_policy, rtol=0, atol=1e-12)
    marginal = (p[:, None] * oracle_policy).sum(axis=0)
    assert float(np.abs(marginal - prior).max()) < 1e-9
    # the converged value beats F at any other prior with its own Gibbs policy
    for seed in range(3):
        other = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=F64)
        other = other - torch.logsumexp(other, 0)
        policy = gibbs_policy(other, reward, b)
        assert float(free_energy(policy, other, reward, px, b)) <= energies[-1] + 1e-12
    # and at the fixed point F = E[r] - I/b: the KL to the prior is the information
    information = _np_mutual_information(p, oracle_policy)
    expected_reward = float((p[:, None] * oracle_policy * r).sum())
    assert_close(energies[-1], expected_reward - information / b, rtol=1e-9, atol=1e-9)


def test_blahut_arimoto_refuses_bad_prompt_probabilities() -> None:
    reward, _ = _bandit()
    with pytest.raises(ValueError, match="prompt_probs: must be positive"):
        blahut_arimoto(reward, torch.full((4,), 0.3, dtype=F64), 1.0)


def _preference_problem() -> dict[str, torch.Tensor]:
    """Three prompts, four responses; every unordered pair appears in both
    directions with Bradley-Terry weights sigma(r_a - r_b), sigma(r_b - r_a), so J
    is bounded below by the mean binary entropy (no degenerate minimum)."""
    generator = torch.Generator().manual_seed(7)
    x_count, y_count = 3, 4
    true_reward = 2.0 * torch.randn(x_count, y_count, generator=generator, dtype=F64)
    feature = torch.randn(x_count, y_count, generator=generator, dtype=F64)
    reference = torch.log_softmax(
        torch.randn(x_count, y_count, generator=generator, dtype=F64), dim=1
    )
    prompts, chosen, rejected, weights = [], [], [], []
    for x in range(x_count):
        for a in range(y_count):
            for c in range(y_count):
                if a != c:
                    prompts.append(x)
                    chosen.append(a)
                    rejected.append(c)
                    weights.append(
                        float(torch.sigmoid(true_reward[x, a] - true_reward[x, c]))
                    )
    return {
        "feature": feature,
        "reference": reference,
        "prompts": torch.tensor(prompts),
        "chosen": torch.tensor(chosen),
        "rejected": torch.tensor(rejected),
        "weights": torch.tensor(weights, dtype=F64),
    }


def _policy(theta: torch.Tensor, problem: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.log_softmax(problem["reference"] + theta * problem["feature"], dim=1)


def _loss(
    theta: torch.Tensor, log_prior: torch.Tensor, problem: dict[str, torch.Tensor]
) -> torch.Tensor:
    return preference_loss(
        _policy(theta, problem),
        log_prior,
        problem["prompts"],
        problem["chosen"],
        problem["rejected"],
        alpha=1.0,
        weights=problem["weights"],
    )


def _minimise(parameters: list[torch.Tensor], closure_loss) -> float:  # noqa: ANN001
    optimiser = torch.optim.LBFGS(
        parameters,
        lr=1.0,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = closure_loss()
        value.backward()
        return value

    for _ in range(5):
        optimiser.step(closure)
    with torch.no_grad():
        return float(closure_loss())


def test_preference_loss_matches_the_mi_dpo_formula() -> None:
    problem = _preference_problem()
    theta = torch.tensor(0.3, dtype=F64)
    prior = torch.log_softmax(torch.arange(4, dtype=F64), dim=0)
    policy = _policy(theta, problem).numpy()
    zeta = prior.numpy()
    x, w, lo = (problem[k].numpy() for k in ("prompts", "chosen", "rejected"))
    logit = 0.7 * ((policy[x, w] - zeta[w]) - (policy[x, lo] - zeta[lo]))
    weights = problem["weights"].numpy()
    oracle = float((weights * np.log1p(np.exp(-logit))).sum() / weights.sum())
    got = preference_loss(
        _policy(theta, problem),
        prior,
        problem["prompts"],
        problem["chosen"],
        problem["rejected"],
        alpha=0.7,
        weights=problem["weights"],
    )
    assert_close(float(got), oracle, rtol=1e-12, atol=1e-12)


def test_joint_minimum_over_policy_and_prior_is_below_the_fixed_reference() -> None:
    """J_joint <= J_fixed (module docstring), strictly here, and J_joint reaches
    the floor of the weighted binary cross-entropy, the infimum of J over all
    (pi, zeta): a free prior table absorbs whatever the one-parameter policy
    family cannot express. A statement about training-loss values only
    (docs/objective.md#learning-a-prior)."""
    problem = _preference_problem()
    theta = torch.zeros((), dtype=F64, requires_grad=True)
    j_fixed = _minimise([theta], lambda: _loss(theta, problem["reference"], problem))
    theta_joint = theta.detach().clone().requires_grad_(True)
    log_prior = problem["reference"].clone().requires_grad_(True)
    j_joint = _minimise(
        [theta_joint, log_prior], lambda: _loss(theta_joint, log_prior, problem)
    )
    weights = problem["weights"].numpy()
    # each unordered pair contributes p log(1/p) + (1-p) log(1/(1-p)) at best
    floor = float((weights * -np.log(weights)).sum() / weights.sum())
    assert j_joint <= j_fixed
    assert j_fixed - j_joint > 0.1
    assert_close(j_joint, floor, rtol=0, atol=1e-8)
