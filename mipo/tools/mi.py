r"""Mutual-information regularised alignment on a tabular bandit
(``docs/objective.md#mutual-information-identities``).

A toy world with finitely many prompts $x$ (probabilities $p(x)$) and responses
$y$, a reward table $r(x, y)$ and an inverse temperature $b$ (the MI-DPO paper's
$\beta$; mipo's ``beta`` is $\alpha = 1/b$). Everything is a ``float64`` table, so
the identities (a)-(f) of that section can be checked to round-off, independently
of any language model:

- the Gibbs policy $\pi(y|x) = \zeta(y)\,e^{b r(x,y)} / Z(x)$ (identity (d));
- the marginal $p_\pi(y) = \sum_x p(x)\,\pi(y|x)$;
- $I_\pi(X;Y) = E_x\,\mathrm{KL}(\pi(\cdot|x)\,\|\,p_\pi)$ and the variational identity
  $E_x\,\mathrm{KL}(\pi\|\zeta) = I_\pi + \mathrm{KL}(p_\pi\|\zeta)$ (identity (b));
- the Blahut–Arimoto alternation $\pi \leftarrow$ Gibbs$(\zeta)$,
  $\zeta \leftarrow p_\pi$, which increases
  $F(\pi,\zeta) = E[r] - \frac1b E_x\,\mathrm{KL}(\pi\|\zeta)$ at every step and
  converges to the fixed point of identity (d)
  (``docs/objective.md#the-prior-step-blahut-arimoto``);
- the MI-DPO preference loss $J$ (``docs/objective.md#the-mi-dpo-loss``) on a
  table of preference pairs.

All log-probabilities are natural logarithms. Tables use the axes ``prompts``
and ``responses``; pairs use ``pairs``.

References:
    Tutnov, Grosnit, Bou-Ammar, arXiv 2501.01544 (the loss $J$); Grau-Moya,
    Leibfried, Vrancx, ICLR 2019 (MI-regularised RL, the marginal as optimal
    prior); Blahut, IEEE Trans. IT 18(4), 1972 and Arimoto, IEEE Trans. IT 18(1),
    1972 (the alternation).
"""

from dataclasses import dataclass
from typing import final

import torch
from jaxtyping import Float, Int
from torch import Tensor

PromptProbs = Float[Tensor, " prompts"]
LogPrior = Float[Tensor, " responses"]
Table = Float[Tensor, "prompts responses"]
Scalar = Float[Tensor, ""]


def _check_distribution(log_probs: Tensor, name: str) -> None:
    total = torch.logsumexp(log_probs, dim=-1)
    if not bool(torch.all(total.abs() < 1e-9)):
        raise ValueError(
            f"{name}: log-probabilities must be normalised over the last axis "
            f"(logsumexp = {total.tolist()})"
        )


def gibbs_policy(log_prior: LogPrior, reward: Table, b: float) -> Table:
    r"""$\log\pi(y|x) = \log\zeta(y) + b\,r(x,y) - \log Z(x)$ (identity (d) of
    ``docs/objective.md#mutual-information-identities``).

    ``log_prior`` may be unnormalised: a constant shift cancels in $Z(x)$.
    """
    if not b > 0:
        raise ValueError(f"b: the inverse temperature must be > 0, got {b}")
    logits = log_prior[None, :] + b * reward
    return logits - torch.logsumexp(logits, dim=-1, keepdim=True)


def log_marginal(log_policy: Table, prompt_probs: PromptProbs) -> LogPrior:
    r"""$\log p_\pi(y) = \log\sum_x p(x)\,\pi(y|x)$."""
    return torch.logsumexp(log_policy + prompt_probs.log()[:, None], dim=0)


def expected_kl(
    log_policy: Table, log_prior: LogPrior, prompt_probs: PromptProbs
) -> Scalar:
    r"""$E_{x\sim p}\,\mathrm{KL}(\pi(\cdot|x)\,\|\,\zeta)$ for a normalised $\zeta$."""
    _check_distribution(log_prior, "log_prior")
    policy = log_policy.exp()
    per_prompt = (policy * (log_policy - log_prior[None, :])).sum(dim=-1)
    return (prompt_probs * per_prompt).sum()


def mutual_information(log_policy: Table, prompt_probs: PromptProbs) -> Scalar:
    r"""$I_\pi(X;Y) = E_x\,\mathrm{KL}(\pi(\cdot|x)\,\|\,p_\pi)$ (identity (a))."""
    return expected_kl(log_policy, log_marginal(log_policy, prompt_probs), prompt_probs)


def free_energy(
    log_policy: Table,
    log_prior: LogPrior,
    reward: Table,
    prompt_probs: PromptProbs,
    b: float,
) -> Scalar:
    r"""$F(\pi,\zeta) = E_{x,\,y\sim\pi}[r] - \frac1b E_x\,\mathrm{KL}(\pi\|\zeta)$, the
    objective of identity (c) that both Blahut–Arimoto steps increase."""
    expected_reward = (prompt_probs[:, None] * log_policy.exp() * reward).sum()
    return expected_reward - expected_kl(log_policy, log_prior, prompt_probs) / b


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class AlternationResult:
    """The end of a Blahut–Arimoto run.

    Args:
        log_policy: $\\log\\pi(y|x)$ after the last policy step.
        log_prior: $\\log\\zeta(y)$, the marginal of ``log_policy``.
        residual: $\\max_y|\\zeta_{k+1}(y) - \\zeta_k(y)|$ at the last iteration.
        iterations: alternations performed.
        free_energies: $F$ after every iteration (non-decreasing).
    """

    log_policy: Table
    log_prior: LogPrior
    residual: float
    iterations: int
    free_energies: tuple[float, ...]


def blahut_arimoto(
    reward: Table,
    prompt_probs: PromptProbs,
    b: float,
    *,
    log_prior: LogPrior | None = None,
    tolerance: float = 1e-12,
    max_iterations: int = 10_000,
) -> AlternationResult:
    r"""Alternate $\pi \leftarrow \zeta e^{b r}/Z$ and $\zeta \leftarrow p_\pi$ until
    the prior moves by less than ``tolerance`` (identity (d)).

    Args:
        reward: $r(x, y)$.
        prompt_probs: $p(x)$, positive and summing to one.
        b: inverse temperature.
        log_prior: the initial $\log\zeta$ (uniform when omitted).
        tolerance: stop when $\max_y|\zeta_{k+1} - \zeta_k| <$ ``tolerance``.
        max_iterations: give up (and raise) after this many alternations.
    """
    if prompt_probs.dim() != 1 or prompt_probs.shape[0] != reward.shape[0]:
        raise ValueError(
            f"prompt_probs: expected shape ({reward.shape[0]},), got "
            f"{tuple(prompt_probs.shape)}"
        )
    if bool((prompt_probs <= 0).any()) or abs(float(prompt_probs.sum()) - 1.0) > 1e-9:
        raise ValueError("prompt_probs: must be positive and sum to 1")
    responses = reward.shape[1]
    prior = (
        torch.full((responses,), -torch.log(torch.tensor(float(responses))).item()).to(
            reward
        )
        if log_prior is None
        else log_prior - torch.logsumexp(log_prior, dim=0)
    )
    energies: list[float] = []
    residual = float("inf")
    for iteration in range(1, max_iterations + 1):
        policy = gibbs_policy(prior, reward, b)
        new_prior = log_marginal(policy, prompt_probs)
        residual = float((new_prior.exp() - prior.exp()).abs().max())
        prior = new_prior
        energies.append(float(free_energy(policy, prior, reward, prompt_probs, b)))
        if residual < tolerance:
            return AlternationResult(
                log_policy=gibbs_policy(prior, reward, b),
                log_prior=prior,
                residual=residual,
                iterations=iteration,
                free_energies=tuple(energies),
            )
    raise RuntimeError(
        f"blahut_arimoto: no convergence in {max_iterations} iterations "
        f"(residual {residual:.3e} > tolerance {tolerance:.1e})"
    )


def preference_loss(
    log_policy: Table,
    log_prior: LogPrior | Table,
    prompts: Int[Tensor, " pairs"],
    chosen: Int[Tensor, " pairs"],
    rejected: Int[Tensor, " pairs"],
    alpha: float,
    weights: Float[Tensor, " pairs"] | None = None,
) -> Scalar:
    r"""The MI-DPO loss on tabular pairs (``docs/objective.md#the-mi-dpo-loss``):

    $$ J = -\frac1N\sum_i \log\sigma\Big(\alpha\big[\log\pi(y^i_w|x_i) - \log\zeta(y^i_w)\big]
                                  - \alpha\big[\log\pi(y^i_l|x_i) - \log\zeta(y^i_l)\big]\Big). $$

    ``log_prior`` is either $\log\zeta(y)$ (a mutual-information prior) or a
    per-prompt table $\log\zeta(y|x)$ (e.g. $\pi_{ref}$, which gives DPO).
    ``weights`` (default all ones) weight the pairs; the mean is
    $\sum_i w_i\,\ell_i / \sum_i w_i$.
    """
    table = (
        log_prior if log_prior.dim() == 2 else log_prior[None, :].expand_as(log_policy)
    )
    ratio = log_policy - table
    logit = alpha * (ratio[prompts, chosen] - ratio[prompts, rejected])
    losses = -torch.nn.functional.logsigmoid(logit)
    if weights is None:
        return losses.mean()
    return (weights * losses).sum() / weights.sum()


__all__ = [
    "AlternationResult",
    "blahut_arimoto",
    "expected_kl",
    "free_energy",
    "gibbs_policy",
    "log_marginal",
    "mutual_information",
    "preference_loss",
]
