"""Composite Hypothesis strategies: float64 pair batches built from logits.

:func:`pair_logits` draws raw logits, labels and masks (numpy arrays through
``hypothesis.extra.numpy.arrays``, every element bounded) and returns a
:class:`PairLogits`. It gives both

- the :class:`mipo.PairBatch` (label log-probs gathered from ``log_softmax``,
  reference log-probs, forward and reverse full-vocabulary KLs, token weights and
  KL weights all filled), rebuilt from the logits by :meth:`PairLogits.batch` on
  every call so that each objective gets a fresh autograd graph, and
- the raw tensors the oracles of :mod:`tests.oracles` read
  (:meth:`PairLogits.oracle`).

The policy logits of each role are leaf tensors that require grad; compare
gradients with ``torch.autograd.grad(loss, pair.leaves)``, which never
accumulates into ``.grad``. The batch fields are computed here with
``torch.gather`` and ``F.kl_div``, the oracles with one-hot products and explicit
sums: two independent routes to the same per-token numbers.

Layout of one row (shifted axis): ``prompt`` positions, then ``n >= 1`` response
positions (EOS included), then right padding to the common ``seq`` of both
roles. The prompt length is drawn per row and shared by the two responses of a
pair; the two response lengths are drawn independently.
"""

import dataclasses
from dataclasses import dataclass

import hypothesis.strategies as st
import numpy as np
import torch
import torch.nn.functional as F
from hypothesis.extra.numpy import arrays
from oracles import OracleSide, side_from_logits
from torch import Tensor

from mipo import PairBatch, Side

MAX_BATCH = 4
MAX_SEQ = 8
MAX_VOCAB = 11
LOGIT_BOUND = 20.0

betas = st.floats(min_value=0.01, max_value=2.0)
"""The scale beta, bounded."""


@dataclass(frozen=True, kw_only=True)
class SideLogits:
    """Raw inputs of one role.

    Args:
        policy_logits: ``[batch, seq, vocab]`` float64 leaf, requires grad.
        reference_logits: ``[batch, seq, vocab]`` float64 constant.
        labels: ``[batch, seq]`` int64 label ids (valid ids everywhere).
        mask: ``[batch, seq]`` response mask.
        token_weights: ``[batch, seq]`` float64 data weights (0 off the response).
        kl_weights: ``[batch, seq]`` float64 data KL weights (0 off the response).
    """

    policy_logits: Tensor
    reference_logits: Tensor
    labels: Tensor
    mask: Tensor
    token_weights: Tensor
    kl_weights: Tensor

    def side(self, **overrides: Tensor | None) -> Side:
        """A :class:`mipo.Side` with every per-token field filled from the logits."""
        log_pol = torch.log_softmax(self.policy_logits, dim=-1)
        log_ref = torch.log_softmax(self.reference_logits, dim=-1)
        index = self.labels.unsqueeze(-1)
        fields: dict[str, Tensor | None] = {
            "policy_logps": log_pol.gather(-1, index).squeeze(-1),
            "reference_logps": log_ref.gather(-1, index).squeeze(-1),
            # F.kl_div(input=log q, target=log p, log_target=True) = p (log p - log q)
            "kl_forward": F.kl_div(
                log_pol, log_ref, reduction="none", log_target=True
            ).sum(-1),
            "kl_reverse": F.kl_div(
                log_ref, log_pol, reduction="none", log_target=True
            ).sum(-1),
            "token_weights": self.token_weights,
            "kl_weights": self.kl_weights,
        }
        fields.update(overrides)
        return Side(response_mask=self.mask, **fields)

    def oracle(self) -> OracleSide:
        """The oracle's view of this role, live in :attr:`policy_logits`."""
        return side_from_logits(
            self.policy_logits,
            self.reference_logits,
            self.labels,
            self.mask,
            weights=self.token_weights,
            kl_weights=self.kl_weights,
        )

    @property
    def lengths(self) -> Tensor:
        """|y| per row, float64."""
        return self.mask.double().sum(-1)


@dataclass(frozen=True, kw_only=True)
class PairLogits:
    """A drawn batch of pairs: raw logits for the oracles, a PairBatch for mipo."""

    chosen: SideLogits
    rejected: SideLogits

    @property
    def leaves(self) -> tuple[Tensor, Tensor]:
        """The policy logits of (chosen, rejected): what gradients are taken against."""
        return self.chosen.policy_logits, self.rejected.policy_logits

    @property
    def size(self) -> int:
        return self.chosen.mask.shape[0]

    def batch(
        self,
        chosen: dict[str, Tensor | None] | None = None,
        rejected: dict[str, Tensor | None] | None = None,
    ) -> PairBatch:
        """A fresh :class:`mipo.PairBatch`; ``chosen``/``rejected`` override fields."""
        return PairBatch(
            chosen=self.chosen.side(**(chosen or {})),
            rejected=self.rejected.side(**(rejected or {})),
        )

    def oracle(self) -> tuple[OracleSide, OracleSide]:
        """The oracles' (chosen, rejected) inputs."""
        return self.chosen.oracle(), self.rejected.oracle()

    def with_weights(
        self,
        token_weights: tuple[Tensor, Tensor] | None = None,
        kl_weights: tuple[Tensor, Tensor] | None = None,
    ) -> "PairLogits":
        """The same logits with other weight columns (masked to the response)."""
        sides = []
        for index, side in enumerate((self.chosen, self.rejected)):
            changes = {}
            if token_weights is not None:
                changes["token_weights"] = token_weights[index] * side.mask
            if kl_weights is not None:
                changes["kl_weights"] = kl_weights[index] * side.mask
            sides.append(dataclasses.replace(side, **changes))
        return PairLogits(chosen=sides[0], rejected=sides[1])


def make_side(
    *,
    policy_logits: np.ndarray,
    reference_logits: np.ndarray,
    labels: np.ndarray,
    prompt: np.ndarray,
    lengths: np.ndarray,
    token_weights: np.ndarray,
    kl_weights: np.ndarray,
) -> SideLogits:
    """Build one role from numpy arrays (also used to pin examples).

    Row ``i`` has response positions ``prompt[i] <= t < prompt[i] + lengths[i]``.
    """
    seq = labels.shape[1]
    positions = np.arange(seq)[None, :]
    starts = np.asarray(prompt)[:, None]
    mask = torch.from_numpy(
        (positions >= starts) & (positions < starts + np.asarray(lengths)[:, None])
    )
    policy = torch.tensor(policy_logits, dtype=torch.float64)
    return SideLogits(
        policy_logits=policy.requires_grad_(True),
        reference_logits=torch.tensor(reference_logits, dtype=torch.float64),
        labels=torch.tensor(labels, dtype=torch.int64),
        mask=mask,
        token_weights=torch.tensor(token_weights, dtype=torch.float64) * mask,
        kl_weights=torch.tensor(kl_weights, dtype=torch.float64) * mask,
    )


@st.composite
def pair_logits(
    draw: st.DrawFn,
    *,
    min_response: int = 1,
    max_response: int = MAX_SEQ,
    logit_bound: float = LOGIT_BOUND,
    weight_range: tuple[float, float] | None = None,
    reference_shift: float = 0.0,
) -> PairLogits:
    """Draw a batch of pairs as logits, labels and masks.

    Few, large draws (one array for all logits, one for all labels, one for the
    layout) keep generation cheap; the bounds are in the element strategies, and
    the layout is mapped into range, never filtered.

    Args:
        min_response: the fewest response tokens (EOS included) in any row.
        max_response: the most response tokens in any row.
        logit_bound: every drawn logit lies in ``[-logit_bound, logit_bound]``.
        weight_range: bounds of the token weights and KL weights; ``None`` for
            all-ones weights (no draw).
        reference_shift: if non-zero, the reference logits are the policy logits
            with this added to vocabulary entry 0 at every position, so the two
            distributions differ at every position (a construction, not a filter,
            for the properties that need a non-zero KL gradient). If zero, the
            reference logits are drawn independently.
    """
    batch = draw(st.integers(1, MAX_BATCH))
    vocab = draw(st.integers(2, MAX_VOCAB))
    seq = draw(st.integers(min_response, MAX_SEQ))
    bound = logit_bound
    logits = draw(
        arrays(
            np.float64,
            (2, 2, batch, seq, vocab),  # role, (policy, reference), batch, seq, vocab
            elements=st.floats(-bound, bound, allow_nan=False),
        )
    )
    if reference_shift:
        # the reference is the policy with entry 0 moved: the two distributions
        # differ at every position, whatever was drawn
        logits[:, 1] = logits[:, 0]
        logits[:, 1, ..., 0] += reference_shift
    labels = draw(arrays(np.int64, (2, batch, seq), elements=st.integers(0, vocab - 1)))
    # row layout: prompt length p in [0, seq - min_response], then each response
    # length mapped into [min_response, min(max_response, seq - p)]
    prompt = draw(
        arrays(np.int64, (batch,), elements=st.integers(0, seq - min_response))
    )
    raw_lengths = draw(
        arrays(
            np.int64,
            (2, batch),
            elements=st.integers(min_response, max(min_response, max_response)),
        )
    )
    lengths = np.minimum(raw_lengths, seq - prompt[None, :])
    if weight_range is None:
        weights = np.ones((2, 2, batch, seq))
    else:
        low, high = weight_range
        weights = draw(
            arrays(np.float64, (2, 2, batch, seq), elements=st.floats(low, high))
        )
    sides = [
        make_side(
            policy_logits=logits[role, 0],
            reference_logits=logits[role, 1],
            labels=labels[role],
            prompt=prompt,
            lengths=lengths[role],
            token_weights=weights[role, 0],
            kl_weights=weights[role, 1],
        )
        for role in range(2)
    ]
    return PairLogits(chosen=sides[0], rejected=sides[1])


def example_pair(
    *,
    chosen_policy: list,
    chosen_reference: list,
    rejected_policy: list,
    rejected_reference: list,
    chosen_labels: list,
    rejected_labels: list,
) -> PairLogits:
    """A hand-written pair for ``@example``: ``[batch][seq][vocab]`` logits,
    ``[batch][seq]`` labels, every position a response token, unit weights."""
    sides = []
    for policy, reference, labels in (
        (chosen_policy, chosen_reference, chosen_labels),
        (rejected_policy, rejected_reference, rejected_labels),
    ):
        label_array = np.asarray(labels, dtype=np.int64)
        batch, seq = label_array.shape
        sides.append(
            make_side(
                policy_logits=np.asarray(policy, dtype=np.float64),
                reference_logits=np.asarray(reference, dtype=np.float64),
                labels=label_array,
                prompt=np.zeros(batch, dtype=np.int64),
                lengths=np.full(batch, seq),
                token_weights=np.ones((batch, seq)),
                kl_weights=np.ones((batch, seq)),
            )
        )
    return PairLogits(chosen=sides[0], rejected=sides[1])
