"""What a primitive reads from a :class:`~mipo.batch.PairBatch`.

Every slot of an :class:`~mipo.objective.Objective` declares a ``needs``
frozenset of :class:`Need` values. The objective's needs are the union over its
parts; the trainer reads that union and computes exactly those tensors (a
reference forward, full-vocabulary KLs, hidden states, attribution scores, an
anchor generation). Nothing ever asks *which method* is being run.
"""

import enum


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
    """log zeta(y_t | s_t) from a separately trained prior model."""
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
    def in_batch(self) -> bool:
        """False for needs the trainer serves without a batch field of that name
        (mask models hooked into the reference forward; their masks arrive as
        ``token_weights`` / ``kl_weights``)."""
        return self not in (
            Need.REFERENCE_ACTIVATIONS,
            Need.REFERENCE_HIDDEN_LAYERS,
            Need.LEARNED_PRIOR,
        )

    @property
    def batch_level(self) -> bool:
        """True when the need is a field of the pair batch rather than of each side."""
        return self is Need.ANCHOR


NO_NEEDS: frozenset[Need] = frozenset()

__all__ = ["NO_NEEDS", "Need"]
