r"""Independent float64 oracles for the DPO family, written from the authors' code.

Nothing here imports :mod:`mipo`: every loss is transcribed from the formulas of
the authors' code as the recipe notes state them (``docs/recipe_notes/``), in the
notation of ``docs/objective.md#notation``, so that a mipo objective compared
against an oracle is checked against the authors' semantics, not against itself.

An oracle reads one :class:`OracleSide` per role: plain per-token tensors on the
shifted ``seq`` axis (position ``t`` holds the label ``y_t``), a response mask
and, where a method needs them, full-vocabulary KLs and token weights.
:func:`side_from_logits` derives those tensors from raw logits and labels with
``log_softmax`` (never ``log(softmax)``), so gradients of an oracle loss flow to
the logits.

Notation: ``S_pol``, ``S_ref`` summed label log-probs over the response,
``n = |y|`` (EOS included), ``h`` the DPO log-ratio difference.
Each oracle returns the batch mean of the per-pair losses (a 0-d tensor).
"""

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class OracleSide(NamedTuple):
    """Per-token tensors of one role, all ``[batch, seq]``.

    Args:
        logps: log pi_theta(y_t | s_t).
        mask: response mask (EOS included).
        ref_logps: log pi_ref(y_t | s_t), or None.
        kl_forward: KL(pi_ref || pi_theta) at s_t, or None.
        kl_reverse: KL(pi_theta || pi_ref) at s_t, or None.
        weights: per-token weights (TIS-DPO weights, SparsePO reward mask).
        kl_weights: per-token KL weights (SparsePO KL mask).
    """

    logps: Tensor
    mask: Tensor
    ref_logps: Tensor | None = None
    kl_forward: Tensor | None = None
    kl_reverse: Tensor | None = None
    weights: Tensor | None = None
    kl_weights: Tensor | None = None


# ---------------------------------------------------------------- from logits


def label_logps(logits: Tensor, labels: Tensor) -> Tensor:
    """log softmax(logits)[y_t], selected with a one-hot product (no gather)."""
    logprobs = torch.log_softmax(logits.double(), dim=-1)
    one_hot = F.one_hot(labels, num_classes=logits.shape[-1]).double()
    return (logprobs * one_hot).sum(-1)


def kl_forward_from_logits(policy_logits: Tensor, reference_logits: Tensor) -> Tensor:
    r"""$D^{fwd}_t = \sum_v \pi_{ref}(v)\,[\log\pi_{ref}(v) - \log\pi_\theta(v)]$ (TDPO)."""
    log_pol = torch.log_softmax(policy_logits.double(), dim=-1)
    log_ref = torch.log_softmax(reference_logits.double(), dim=-1)
    return (log_ref.exp() * (log_ref - log_pol)).sum(-1)


def kl_reverse_from_logits(policy_logits: Tensor, reference_logits: Tensor) -> Tensor:
    r"""$D^{rev}_t = \sum_v \pi_\theta(v)\,[\log\pi_\theta(v) - \log\pi_{ref}(v)]$ (TIS-DPO)."""
    log_pol = torch.log_softmax(policy_logits.double(), dim=-1)
    log_ref = torch.log_softmax(reference_logits.double(), dim=-1)
    return (log_pol.exp() * (log_pol - log_ref)).sum(-1)


def side_from_logits(
    policy_logits: Tensor,
    reference_logits: Tensor,
    labels: Tensor,
    mask: Tensor,
    weights: Tensor | None = None,
    kl_weights: Tensor | None = None,
) -> OracleSide:
    """Every per-token quantity of one role, live in ``policy_logits``."""
    return OracleSide(
        logps=label_logps(policy_logits, labels),
        mask=mask,
        ref_logps=label_logps(reference_logits, labels).detach(),
        kl_forward=kl_forward_from_logits(policy_logits, reference_logits),
        kl_reverse=kl_reverse_from_logits(policy_logits, reference_logits),
        weights=weights,
        kl_weights=kl_weights,
    )


# ------------------------------------------------------------------- helpers


def _sum(values: Tensor, mask: Tensor) -> Tensor:
    """Sum over the response positions of each row."""
    return (values * mask.double()).sum(-1)


def _length(side: OracleSide) -> Tensor:
    return side.mask.double().sum(-1)


def _need(value: Tensor | None, what: str) -> Tensor:
    if value is None:
        raise ValueError(f"oracle needs {what}")
    return value


def _log_ratio_sum(side: OracleSide) -> Tensor:
    """S_pol - S_ref."""
    return _sum(side.logps - _need(side.ref_logps, "ref_logps"), side.mask)


def _softplus(x: Tensor) -> Tensor:
    """softplus(x) = log(1 + e^x), stable and smooth: x + log1p(e^-x) for x > 0,
    log1p(e^x) otherwise. Each branch only sees inputs where it cannot overflow,
    so the branch not taken has a finite (zero) gradient."""
    positive = x > 0
    zeros = torch.zeros_like(x)
    x_pos = torch.where(positive, x, zeros)
    x_neg = torch.where(positive, zeros, x)
    return torch.where(
        positive, x_pos + torch.log1p(torch.exp(-x_pos)), torch.log1p(torch.exp(x_neg))
    )


def _relu(x: Tensor) -> Tensor:
    """max(0, x), with the subgradient 0 at the kink x = 0."""
    return torch.where(x > 0, x, torch.zeros_like(x))


def _neg_log_sigmoid(z: Tensor) -> Tensor:
    """-log sigma(z) = softplus(-z)."""
    return _softplus(-z)


def dpo_h(chosen: OracleSide, rejected: OracleSide) -> Tensor:
    """h = (S_pol[c] - S_ref[c]) - (S_pol[r] - S_ref[r]) per pair."""
    return _log_ratio_sum(chosen) - _log_ratio_sum(rejected)


# ------------------------------------------------------------ DPO family


def dpo(chosen: OracleSide, rejected: OracleSide, beta: float) -> Tensor:
    """L = -log sigma(beta h) (Rafailov et al., Eq. 7; docs/recipe_notes/dpo.md)."""
    return _neg_log_sigmoid(beta * dpo_h(chosen, rejected)).mean()


def dpo_reference_free(chosen: OracleSide, rejected: OracleSide, beta: float) -> Tensor:
    """L = -log sigma(beta (S_pol[c] - S_pol[r])) (reference-free DPO)."""
    h = _sum(chosen.logps, chosen.mask) - _sum(rejected.logps, rejected.mask)
    return _neg_log_sigmoid(beta * h).mean()


def cdpo(chosen: OracleSide, rejected: OracleSide, beta: float, eps: float) -> Tensor:
    """L = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h) (cDPO)."""
    z = beta * dpo_h(chosen, rejected)
    return ((1 - eps) * _neg_log_sigmoid(z) + eps * _neg_log_sigmoid(-z)).mean()


def robust_dpo(
    chosen: OracleSide, rejected: OracleSide, beta: float, eps: float
) -> Tensor:
    """L = [-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps)."""
    z = beta * dpo_h(chosen, rejected)
    per_pair = (1 - eps) * _neg_log_sigmoid(z) - eps * _neg_log_sigmoid(-z)
    return (per_pair / (1 - 2 * eps)).mean()


def ipo_summed(chosen: OracleSide, rejected: OracleSide, beta: float) -> Tensor:
    """L = (h - 1/(2 beta))^2 with summed log-ratios (eric-mitchell IPO)."""
    return ((dpo_h(chosen, rejected) - 1 / (2 * beta)) ** 2).mean()


def ipo_trl(chosen: OracleSide, rejected: OracleSide, beta: float) -> Tensor:
    """L = (hbar - 1/(2 beta))^2, hbar from per-response mean log-ratios (TRL)."""
    h_bar = _log_ratio_sum(chosen) / _length(chosen) - _log_ratio_sum(
        rejected
    ) / _length(rejected)
    return ((h_bar - 1 / (2 * beta)) ** 2).mean()


def hinge(chosen: OracleSide, rejected: OracleSide, beta: float) -> Tensor:
    """L = max(0, 1 - beta h) (SLiC / RSO; TRL ``hinge``)."""
    return _relu(1 - beta * dpo_h(chosen, rejected)).mean()


# -------------------------------------------------------------- SimPO


def simpo(
    chosen: OracleSide,
    rejected: OracleSide,
    beta: float,
    gamma_beta_ratio: float,
    *,
    loss_type: str = "sigmoid",
    sft_weight: float = 0.0,
) -> Tensor:
    """SimPO code semantics (docs/recipe_notes/simpo.md).

    avg[s] = S_pol[s] / n[s]; z = (avg[c] - avg[r]) - gamma_beta_ratio;
    sigmoid: -log sigma(beta z); hinge: relu(1 - beta z); plus sft_weight times
    the token-level mean CE over all chosen tokens of the batch.
    """
    avg_c = _sum(chosen.logps, chosen.mask) / _length(chosen)
    avg_r = _sum(rejected.logps, rejected.mask) / _length(rejected)
    z = avg_c - avg_r - gamma_beta_ratio
    if loss_type == "sigmoid":
        per_pair = _neg_log_sigmoid(beta * z)
    elif loss_type == "hinge":
        per_pair = _relu(1 - beta * z)
    else:
        raise ValueError(f"unknown SimPO loss_type {loss_type!r}")
    loss = per_pair.mean()
    if sft_weight:
        cross_entropy = -_sum(chosen.logps, chosen.mask).sum() / chosen.mask.sum()
        loss = loss + sft_weight * cross_entropy
    return loss


# --------------------------------------------------------- R-DPO, H-DPO


def rdpo(
    chosen: OracleSide, rejected: OracleSide, beta: float, alpha_len: float
) -> Tensor:
    """L = -log sigma(beta h + alpha_len (|y_w| - |y_l|))
    (docs/recipe_notes/rdpo.md)."""
    z = beta * dpo_h(chosen, rejected) + alpha_len * (
        _length(chosen) - _length(rejected)
    )
    return _neg_log_sigmoid(z).mean()


def hdpo(chosen: OracleSide, rejected: OracleSide, beta: float, a: float) -> Tensor:
    """L = -log sigma(beta [a S_pol[c] - S_ref[c]] - beta [a S_pol[r] - S_ref[r]])."""

    def inner(side: OracleSide) -> Tensor:
        ref = _need(side.ref_logps, "ref_logps")
        return a * _sum(side.logps, side.mask) - _sum(ref, side.mask)

    return _neg_log_sigmoid(beta * inner(chosen) - beta * inner(rejected)).mean()


# ------------------------------------------------------------------ TDPO


def _seq_kl_forward(side: OracleSide) -> Tensor:
    return _sum(_need(side.kl_forward, "kl_forward"), side.mask)


def tdpo1(chosen: OracleSide, rejected: OracleSide, beta: float) -> Tensor:
    """z = (m[c] - m[r]) - (K[r] - K[c]); L = softplus(-beta z)
    (docs/recipe_notes/tdpo.md)."""
    z = dpo_h(chosen, rejected) - (_seq_kl_forward(rejected) - _seq_kl_forward(chosen))
    return _neg_log_sigmoid(beta * z).mean()


def tdpo2(
    chosen: OracleSide, rejected: OracleSide, beta: float, alpha: float
) -> Tensor:
    """z = (m[c] - m[r]) - alpha (K[r] - stopgrad(K[c])), the CHOSEN KL detached."""
    chosen_kl = _seq_kl_forward(chosen).detach()
    z = dpo_h(chosen, rejected) - alpha * (_seq_kl_forward(rejected) - chosen_kl)
    return _neg_log_sigmoid(beta * z).mean()


# --------------------------------------------------------------- TIS-DPO


def tis_dpo(
    chosen: OracleSide,
    rejected: OracleSide,
    beta: float,
    *,
    token_level: bool = False,
    alpha: float = 0.0,
) -> Tensor:
    """TIS-DPO code semantics (docs/recipe_notes/tis_dpo.md).

    m[s] = sum_t w M q, K[s] = sum_t w M KLrev (reverse KL, no stop-gradient);
    token_level=false: z = m[c] - m[r]; true: z = (m[c] - m[r]) - alpha (K[c] - K[r]),
    the code's sign (penalises the chosen KL).
    """

    def m(side: OracleSide) -> Tensor:
        weights = _need(side.weights, "weights")
        ref = _need(side.ref_logps, "ref_logps")
        return _sum(weights * (side.logps - ref), side.mask)

    def k(side: OracleSide) -> Tensor:
        weights = _need(side.weights, "weights")
        return _sum(weights * _need(side.kl_reverse, "kl_reverse"), side.mask)

    z = m(chosen) - m(rejected)
    if token_level:
        z = z - alpha * (k(chosen) - k(rejected))
    return _neg_log_sigmoid(beta * z).mean()


# --------------------------------------------------------------- SparsePO


def sparsepo(
    chosen: OracleSide,
    rejected: OracleSide,
    beta: float,
    *,
    l1_u: float = 0.0,
    l1_d: float = 0.0,
    common_mask: bool = False,
) -> Tensor:
    """SparsePO u/d form (docs/recipe_notes/sparsepo.md).

    k_t = -KL(pi_ref || pi_theta); u = sum m_u q (c) - sum m_u q (r);
    d = sum m_d k (c) - sum m_d k (r); per pair softplus(-beta (u - d)) plus
    l1_u (|m_u[c]| + |m_u[r]|) + l1_d (|m_d[c]| + |m_d[r]|). With a common mask
    (m_d = m_u) the authors halve each coefficient.
    """

    def masks(side: OracleSide) -> tuple[Tensor, Tensor]:
        reward_mask = _need(side.weights, "weights")
        kl_mask = reward_mask if common_mask else _need(side.kl_weights, "kl_weights")
        return reward_mask, kl_mask

    def u_side(side: OracleSide) -> Tensor:
        ref = _need(side.ref_logps, "ref_logps")
        return _sum(masks(side)[0] * (side.logps - ref), side.mask)

    def d_side(side: OracleSide) -> Tensor:
        k_t = -_need(side.kl_forward, "kl_forward")
        return _sum(masks(side)[1] * k_t, side.mask)

    u = u_side(chosen) - u_side(rejected)
    d = d_side(chosen) - d_side(rejected)
    per_pair = _neg_log_sigmoid(beta * (u - d))
    scale = 0.5 if common_mask else 1.0
    for coefficient, index in ((l1_u, 0), (l1_d, 1)):
        if coefficient:
            norm = sum(_sum(masks(s)[index].abs(), s.mask) for s in (chosen, rejected))
            per_pair = per_pair + scale * coefficient * norm
    return per_pair.mean()


LOG_2 = math.log(2.0)
"""The loss at z = 0: -log sigma(0)."""
