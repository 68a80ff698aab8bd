r"""The MI-DPO objective with named slots.

$$ J = \frac{1}{B}\sum_i c_i\Big[\ell\big(\beta[r(y_w) - r(y_l)] - m,\ \beta\big)
       + \sum_k \gamma_k\,T_k\Big], \qquad
   r(y) = \sum_t w_t\,l_t(y) + o(y), $$

where the prior gives $l_t$ and $o$ (``S_pi - log zeta`` split into a weighted
token part and a sequence part), the weighter $w_t$, the margin $m$, the link
$\ell$, the extra terms $T_k$ with weights $\gamma_k$, and $c_i$ are optional
per-example weights. With the reference prior, sum weighter, no margin and the
log-sigmoid link it is DPO; in general it is
$-\log\sigma(\alpha[\log\pi(y_w) - \log\zeta(y_w)] - \alpha[\log\pi(y_l) - \log\zeta(y_l)])$
of Tutnov, Grosnit, Bou-Ammar (arXiv 2501.01544) with ``beta`` $=\alpha$.
"""

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import final

import torch
from torch import Tensor

from mipo.batch import PairBatch, Side, values_checked
from mipo.errors import BatchError, CompositionError, NonFiniteLossError
from mipo.needs import Need
from mipo.primitives.link import LogSigmoidLink
from mipo.primitives.margin import AbstractMargin, NoMargin
from mipo.primitives.pair_link import AbstractPairLink, PairRewards
from mipo.primitives.prior import AbstractPrior, ReferencePrior
from mipo.primitives.terms import AbstractTerm
from mipo.primitives.weighter import AbstractTokenWeighter, SumOverResponse
from mipo.services import AbstractServiceSpec, check_services, collect_services
from mipo.typing import PerPair, Scalar

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_")


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class Term:
    """A named extra term outside the link, with its weight.

    Args:
        name: logged as ``terms/<name>``; lower-case letters, digits, underscores.
        term: the term primitive.
        weight: its coefficient in the loss.
    """

    name: str
    term: AbstractTerm
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name or not set(self.name) <= _NAME_CHARS:
            raise CompositionError(
                f"Term: name {self.name!r} must be non-empty lower-case letters, digits "
                f"or underscores"
            )
        if not isinstance(self.term, AbstractTerm):
            raise CompositionError(f"Term {self.name!r}: {self.term!r} is not a term")
        if not math.isfinite(self.weight):
            raise CompositionError(f"Term {self.name!r}: weight must be finite")


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class LossOutput:
    """What an objective returns.

    Args:
        loss: the scalar to back-propagate.
        per_pair: each pair's loss (link plus weighted terms), before the
            per-example weights and the batch mean.
        logits: the pre-link logit z of each pair (live).
        chosen_rewards: beta * r(y_w), detached (TRL's ``rewards/chosen``).
        rejected_rewards: beta * r(y_l), detached.
        metrics: detached scalars under TRL's names plus ``terms/<name>``.
        parts: each pair's value of every part of ``per_pair``, detached:
            ``link`` and ``terms/<name>`` (what :func:`non_finite_message` names).
    """

    loss: Scalar
    per_pair: PerPair
    logits: PerPair
    chosen_rewards: PerPair
    rejected_rewards: PerPair
    metrics: Mapping[str, Tensor] = field(default_factory=dict)
    parts: Mapping[str, Tensor] = field(default_factory=dict)


_SLOTS: tuple[tuple[str, type], ...] = (
    ("prior", AbstractPrior),
    ("weighter", AbstractTokenWeighter),
    ("margin", AbstractMargin),
    ("link", AbstractPairLink),
)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class Objective:
    """A preference objective assembled from primitives.

    Args:
        prior: zeta; what l_t is measured against (default: the reference, DPO).
        weighter: token weights w_t (default: sum over response tokens).
        margin: offset m inside the link (default: none).
        link: the per-pair loss of z (default: -log sigmoid), or of both rewards
            (a pair link: NCA, BCO, AOT, ...).
        beta: the scale (MI-DPO's alpha, DPO's beta), > 0.
        terms: named extra terms outside the link.
        check_finite: raise :class:`~mipo.errors.NonFiniteLossError` when the loss
            is NaN or infinite, naming the part that is (one host sync per call;
            the trainer turns it off and checks every micro-batch's loss at the
            optimiser step, with the gradient norm, in one sync).

    The parts read batch fields (:attr:`needs`); some ask the trainer for a
    model-side service that fills them (:attr:`services`, :mod:`mipo.services`).
    Two parts asking for different services that fill the same field are
    refused here, when the objective is built.

    Example:
        >>> import torch
        >>> from mipo import Objective, PairBatch, Side
        >>> mask = torch.tensor([[False, True, True]])
        >>> side = lambda p, r: Side(policy_logps=torch.tensor([p]),
        ...                          reference_logps=torch.tensor([r]), response_mask=mask)
        >>> batch = PairBatch(chosen=side([0.0, -1.0, -1.0], [0.0, -2.0, -1.0]),
        ...                   rejected=side([0.0, -2.0, -1.0], [0.0, -1.0, -1.0]))
        >>> out = Objective(beta=0.5)(batch)   # DPO: h = 1 - (-1) = 2, z = 1
        >>> round(out.loss.item(), 6)           # softplus(-1)
        0.313262
    """

    prior: AbstractPrior = ReferencePrior()
    weighter: AbstractTokenWeighter = SumOverResponse()
    margin: AbstractMargin = NoMargin()
    link: AbstractPairLink = LogSigmoidLink()
    beta: float = 0.1
    terms: tuple[Term, ...] = ()
    check_finite: bool = True

    def __post_init__(self) -> None:
        for slot, kind in _SLOTS:
            value = getattr(self, slot)
            if not isinstance(value, kind):
                raise CompositionError(
                    f"Objective.{slot}: expected a {kind.__name__}, got {value!r}"
                )
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise CompositionError(
                f"Objective.beta: must be finite and > 0, got {self.beta}"
            )
        names = [term.name for term in self.terms]
        for term in self.terms:
            if not isinstance(term, Term):
                raise CompositionError(f"Objective.terms: {term!r} is not a mipo.Term")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise CompositionError(f"Objective.terms: duplicate names {duplicates}")
        check_services(self.services)

    @property
    def active_terms(self) -> tuple[Term, ...]:
        """The terms with a non-zero weight. A zero-weight term is the neutral
        element: it is neither computed nor logged, and its needs are not asked for
        (so ``gamma=0`` switches off TI-DPO's anchor generation)."""
        return tuple(term for term in self.terms if term.weight != 0.0)

    @property
    def parts(self) -> tuple[object, ...]:
        """The slots and the active terms' primitives."""
        terms = tuple(term.term for term in self.active_terms)
        return (self.prior, self.weighter, self.margin, self.link, *terms)

    @property
    def needs(self) -> frozenset[Need]:
        """Union of what every part reads: the trainer computes exactly these."""
        return frozenset().union(*(part.needs for part in self.parts))

    @property
    def services(self) -> tuple[AbstractServiceSpec, ...]:
        """The model-side services the parts declare (:mod:`mipo.services`), each
        once; two that would fill the same field are refused at construction."""
        return collect_services(self.parts, self.needs)

    def check(self, batch: PairBatch) -> None:
        """Raise :class:`~mipo.errors.BatchError` naming the first needed field that
        ``batch`` lacks."""
        for need in sorted(self.needs, key=lambda n: n.value):
            if not need.in_batch:
                continue
            if need.batch_level:
                if getattr(batch, need.value) is None:
                    raise BatchError(
                        f"{need.value}: the objective needs it ({self._owners(need)}) "
                        f"but the batch has none"
                    )
                continue
            for role in ("chosen", "rejected"):
                if getattr(getattr(batch, role), need.value) is None:
                    raise BatchError(
                        f"{role}.{need.value}: the objective needs it "
                        f"({self._owners(need)}) but the batch has none"
                    )

    def _owners(self, need: Need) -> str:
        parts = {"prior": self.prior, "weighter": self.weighter, "margin": self.margin}
        parts["link"] = self.link
        parts |= {f"terms[{t.name}]": t.term for t in self.active_terms}
        return ", ".join(
            f"{slot}={type(p).__name__}" for slot, p in parts.items() if need in p.needs
        )

    def __call__(self, batch: PairBatch) -> LossOutput:
        """Compute the loss, per-pair values and metrics for one micro-batch."""
        self.check(batch)
        batch = _upcast(batch)
        chosen_prior, rejected_prior = self.prior(batch)
        chosen_weights, rejected_weights = self.weighter(batch)
        chosen_reward = (
            batch.chosen.masked_sum(chosen_weights * chosen_prior.token_log_ratio)
            + chosen_prior.offset
        )
        rejected_reward = (
            batch.rejected.masked_sum(rejected_weights * rejected_prior.token_log_ratio)
            + rejected_prior.offset
        )
        margin = self.margin(batch)
        logits = self.beta * (chosen_reward - rejected_reward) - margin
        rewards = PairRewards(
            chosen=chosen_reward,
            rejected=rejected_reward,
            margin=margin,
            logits=logits,
            chosen_weights=chosen_weights,
            rejected_weights=rejected_weights,
        )
        link_loss = self.link.pair_loss(rewards, batch, beta=self.beta)
        per_pair = link_loss
        term_values: dict[str, Tensor] = {}
        for term in self.active_terms:
            value = term.term(batch)
            term_values[term.name] = value
            per_pair = per_pair + term.weight * value
        if batch.example_weights is None:
            loss = per_pair.mean()
        else:
            loss = (batch.example_weights * per_pair).mean()
        parts = {"link": link_loss.detach()}
        parts |= {f"terms/{k}": v.detach() for k, v in term_values.items()}
        if self.check_finite and not bool(torch.isfinite(loss)):
            raise NonFiniteLossError(non_finite_message(parts))
        chosen_rewards = (self.beta * chosen_reward).detach()
        rejected_rewards = (self.beta * rejected_reward).detach()
        metrics = _metrics(batch, chosen_rewards, rejected_rewards, loss, term_values)
        return LossOutput(
            loss=loss,
            per_pair=per_pair,
            logits=logits,
            chosen_rewards=chosen_rewards,
            rejected_rewards=rejected_rewards,
            metrics=metrics,
            parts=parts,
        )


def _upcast(batch: PairBatch) -> PairBatch:
    """Loss maths in float32 at least (float64 stays float64): every side of the
    batch and every floating per-pair field."""
    dtype = batch.chosen.policy_logps.dtype
    if dtype in (torch.float32, torch.float64):
        return batch
    changes: dict[str, object] = {}
    # the values were checked when the batch was built; only dtypes change
    with values_checked():
        for name in (f.name for f in dataclasses.fields(batch)):
            value = getattr(batch, name)
            if isinstance(value, Side):
                changes[name] = _side_to(value, torch.float32)
            elif isinstance(value, Tensor) and value.is_floating_point():
                changes[name] = value.float()
        return dataclasses.replace(batch, **changes)


def _side_to(side: Side, dtype: torch.dtype) -> Side:
    changes = {}
    for name in (f.name for f in dataclasses.fields(side)):
        value = getattr(side, name)
        if isinstance(value, Tensor) and value.is_floating_point():
            changes[name] = value.to(dtype)
    return dataclasses.replace(side, **changes)


def non_finite_message(parts: Mapping[str, Tensor]) -> str:
    """Which parts of a non-finite loss are not finite, and at which pairs
    (reads the values to the host: for the error path only)."""
    bad = [
        f"{name} (pairs {(~torch.isfinite(v)).nonzero().flatten().tolist()})"
        for name, v in parts.items()
        if not bool(torch.isfinite(v).all())
    ]
    where = ", ".join(bad) if bad else "per-example weighting"
    return f"non-finite loss from {where}"


def _metrics(
    batch: PairBatch,
    chosen_rewards: PerPair,
    rejected_rewards: PerPair,
    loss: Scalar,
    term_values: Mapping[str, Tensor],
) -> dict[str, Tensor]:
    chosen, rejected = batch.chosen, batch.rejected
    metrics = {
        "loss": loss.detach(),
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "logps/chosen": chosen.masked_sum(chosen.policy_logps).detach().mean(),
        "logps/rejected": rejected.masked_sum(rejected.policy_logps).detach().mean(),
    }
    for name, value in term_values.items():
        metrics[f"terms/{name}"] = value.detach().mean()
    return metrics


__all__ = ["LossOutput", "Objective", "Term", "non_finite_message"]
