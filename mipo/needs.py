r"""What a primitive reads from a :class:`~mipo.batch.PairBatch`, and the one
table that says, for each need, where it lives and what computes it.

Every slot of an :class:`~mipo.objective.Objective` declares a ``needs``
frozenset of :class:`Need` values. The objective's needs are the union over its
parts; the trainer reads that union and computes exactly those tensors. Nothing
ever asks *which method* is being run, and nothing but :data:`NEEDS` classifies
a need: whether it is a field of every side, of the data pair or of the whole
batch; whether the policy, the reference model, the data or a model-side
service (:mod:`mipo.services`) computes it; whether it reads the reference
model; and whether a run whose reference is a cache of token log-probs can
still serve it.
"""

import enum
from dataclasses import dataclass
from typing import final


class Need(enum.Enum):
    """An input a primitive reads. The value is the :class:`~mipo.batch.Side` field
    (or, for batch-level needs, the :class:`~mipo.batch.PairBatch` field)."""

    REFERENCE_LOGPS = "reference_logps"
    """log pi_ref(y_t | s_t) at every position (a constant)."""
    KL_FORWARD = "kl_forward"
    """D^fwd_t = KL(pi_ref(.|s_t) || pi_theta(.|s_t)) over the full vocabulary, live."""
    KL_REVERSE = "kl_reverse"
    """D^rev_t = KL(pi_theta(.|s_t) || pi_ref(.|s_t)) over the full vocabulary, live."""
    HIDDEN_STATES = "hidden_states"
    """Policy last hidden state (after the final norm) that predicts token t."""
    TOKEN_WEIGHTS = "token_weights"
    """Per-token weights from the data (TIS-DPO weights, SparsePO reward mask)."""
    KL_WEIGHTS = "kl_weights"
    """Per-token weights on the KL term from the data (SparsePO KL mask)."""
    ATTRIBUTION_SCORES = "attribution_scores"
    """Per-token gradient-attribution scores of the policy (TI-DPO)."""
    SEQUENCE_MASK = "sequence_mask"
    """Non-padding positions of prompt + response (TI-DPO's "sequence" span)."""
    PRIOR_LOGPS = "prior_logps"
    """log zeta(y_t | s_t) from a prior model that a service fits."""
    REFERENCE_ACTIVATIONS = "reference_activations"
    """Reference activations hooked during its forward (MaPO masks, written into
    ``token_weights`` and ``kl_weights``)."""
    REFERENCE_HIDDEN_LAYERS = "reference_hidden_layers"
    """Reference hidden states of every layer, fed to a learned mask model
    (SparsePO masks, written into ``token_weights`` and ``kl_weights``)."""
    LEARNED_PRIOR = "learned_prior"
    """A prior model the trainer fits to policy samples (the Blahut–Arimoto prior
    step) and whose detached log-probs it writes into ``prior_logps``."""
    LOG_COLLISION = "log_collision"
    """log sum_v pi_theta(v | s_t)^2, the log collision probability of the policy's
    next-token distribution (WPO's weight alignment), detached."""
    ANCHOR = "anchor"
    """A policy-generated anchor response, as a third :class:`~mipo.batch.Side`."""

    @property
    def info(self) -> "NeedInfo":
        """This need's row of :data:`NEEDS`."""
        return NEEDS[self]

    @property
    def in_batch(self) -> bool:
        """False for needs that are requests to a service rather than batch fields
        (the mask models' hooked reference forward, the fitted prior)."""
        return NEEDS[self].scope is not Scope.SERVICE

    @property
    def batch_level(self) -> bool:
        """True when the need is a field of the pair batch rather than of each side."""
        return NEEDS[self].scope is Scope.BATCH


class Scope(enum.Enum):
    """Where a need's values live in a :class:`~mipo.batch.PairBatch`."""

    SIDE = "side"
    """A field of every side of the forward: chosen, rejected and generated ones."""
    PAIR = "pair"
    """A field of the chosen and the rejected side only (it belongs to the pair)."""
    BATCH = "batch"
    """A field of the batch itself: a whole generated side."""
    SERVICE = "service"
    """No field: a request to a service, which writes other fields."""


class Source(enum.Enum):
    """What computes a need's values."""

    POLICY = "policy"
    REFERENCE = "reference"
    DATA = "data"
    SERVICE = "service"


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class NeedInfo:
    """One row of :data:`NEEDS`.

    Args:
        scope: where the values live.
        source: what computes them when no service provides them.
        reads_reference: computing them runs the reference model.
        cacheable: a run whose reference is a cache of token log-probs
            (``reference="precomputed"``) can serve them; False for anything that
            needs the reference model's full distribution, its internals or a
            fresh generation.
    """

    scope: Scope
    source: Source
    reads_reference: bool = False
    cacheable: bool = True


_SIDE, _PAIR = Scope.SIDE, Scope.PAIR
NEEDS: dict[Need, NeedInfo] = {
    Need.REFERENCE_LOGPS: NeedInfo(
        scope=_SIDE, source=Source.REFERENCE, reads_reference=True
    ),
    Need.KL_FORWARD: NeedInfo(
        scope=_SIDE, source=Source.REFERENCE, reads_reference=True, cacheable=False
    ),
    Need.KL_REVERSE: NeedInfo(
        scope=_SIDE, source=Source.REFERENCE, reads_reference=True, cacheable=False
    ),
    Need.HIDDEN_STATES: NeedInfo(scope=_SIDE, source=Source.POLICY),
    Need.TOKEN_WEIGHTS: NeedInfo(scope=_PAIR, source=Source.DATA),
    Need.KL_WEIGHTS: NeedInfo(scope=_PAIR, source=Source.DATA),
    Need.ATTRIBUTION_SCORES: NeedInfo(scope=_PAIR, source=Source.SERVICE),
    Need.SEQUENCE_MASK: NeedInfo(scope=_PAIR, source=Source.DATA),
    Need.PRIOR_LOGPS: NeedInfo(scope=_SIDE, source=Source.SERVICE),
    Need.REFERENCE_ACTIVATIONS: NeedInfo(
        scope=Scope.SERVICE,
        source=Source.SERVICE,
        reads_reference=True,
        cacheable=False,
    ),
    Need.REFERENCE_HIDDEN_LAYERS: NeedInfo(
        scope=Scope.SERVICE,
        source=Source.SERVICE,
        reads_reference=True,
        cacheable=False,
    ),
    Need.LEARNED_PRIOR: NeedInfo(
        scope=Scope.SERVICE,
        source=Source.SERVICE,
        reads_reference=True,
        cacheable=False,
    ),
    Need.LOG_COLLISION: NeedInfo(scope=_SIDE, source=Source.POLICY),
    Need.ANCHOR: NeedInfo(scope=Scope.BATCH, source=Source.SERVICE, cacheable=False),
}
"""The table of needs: nothing else classifies them."""

NO_NEEDS: frozenset[Need] = frozenset()

__all__ = ["NEEDS", "NO_NEEDS", "Need", "NeedInfo", "Scope", "Source"]
