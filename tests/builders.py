"""Small deterministic batch builders and bounded Hypothesis strategies.

Hand-worked tests build a :class:`~mipo.PairBatch` from Python lists with
:func:`side` and :func:`pair`; the recipe battery and the invariance properties
use :func:`random_batch` (seeded) or :func:`pair_batches` (Hypothesis), which
fill exactly the fields a set of :class:`~mipo.Need` values asks for.

Bounds (the project's rule for property tests): log-probs in [-20, 0], at least one
response token per row, batch <= 4, seq <= 8. Nothing here calls a mipo objective.
"""

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import hypothesis.strategies as st
import numpy as np
import torch
from hypothesis.extra.numpy import arrays
from torch import Tensor

from mipo import Need, PairBatch, Side

F64 = torch.float64
HIDDEN = 5  # hidden size of synthetic hidden states

_FLOAT_NEEDS = {
    Need.REFERENCE_LOGPS: (-20.0, 0.0),
    Need.KL_FORWARD: (0.0, 5.0),
    Need.KL_REVERSE: (0.0, 5.0),
    Need.TOKEN_WEIGHTS: (0.0, 2.0),
    Need.KL_WEIGHTS: (0.0, 1.0),
    Need.ATTRIBUTION_SCORES: (-3.0, 3.0),
    Need.PRIOR_LOGPS: (-20.0, 0.0),
}
ALL_NEEDS = frozenset(Need)


def side(
    policy: Sequence[Sequence[float]],
    mask: Sequence[Sequence[bool]] | None = None,
    *,
    dtype: torch.dtype = F64,
    **fields: Sequence[Sequence[float]] | Tensor | None,
) -> Side:
    """A :class:`Side` from nested lists; ``mask`` defaults to all True."""
    logps = torch.tensor(policy, dtype=dtype)
    response = (
        torch.ones_like(logps, dtype=torch.bool)
        if mask is None
        else torch.tensor(mask, dtype=torch.bool)
    )
    tensors: dict[str, Tensor | None] = {}
    for name, value in fields.items():
        if value is None or isinstance(value, Tensor):
            tensors[name] = value
        elif name == "sequence_mask":
            tensors[name] = torch.tensor(value, dtype=torch.bool)
        else:
            tensors[name] = torch.tensor(value, dtype=dtype)
    return Side(policy_logps=logps, response_mask=response, **tensors)


def pair(
    chosen: Side, rejected: Side, example_weights: Sequence[float] | None = None
) -> PairBatch:
    """A :class:`PairBatch` of two sides, with optional per-example weights."""
    weights = (
        None
        if example_weights is None
        else torch.tensor(example_weights, dtype=chosen.policy_logps.dtype)
    )
    return PairBatch(chosen=chosen, rejected=rejected, example_weights=weights)


def _masks(rows: Sequence[tuple[int, int]], seq: int) -> Tensor:
    """Response masks from (prompt length, response length) per row."""
    mask = torch.zeros(len(rows), seq, dtype=torch.bool)
    for row, (start, length) in enumerate(rows):
        mask[row, start : start + length] = True
    return mask


def _side_from_arrays(
    values: dict[str, np.ndarray],
    mask: Tensor,
    needs: Iterable[Need],
    dtype: torch.dtype,
) -> Side:
    fields: dict[str, Tensor] = {}
    for need in needs:
        if need in _FLOAT_NEEDS:
            fields[need.value] = torch.from_numpy(values[need.value]).to(dtype)
        elif need is Need.SEQUENCE_MASK:
            # Prompt and response: everything up to the end of the response.
            last = torch.arange(mask.shape[1]).expand_as(mask)
            end = (mask * (last + 1)).amax(-1, keepdim=True)
            fields[need.value] = last < end
            # the unshifted first token's attribution score (TI-DPO "sequence")
            first = values["first_token_attribution"]
            fields["first_token_attribution"] = torch.from_numpy(first).to(dtype)
        elif need is Need.HIDDEN_STATES:
            hidden = values["hidden_states"]
            fields[need.value] = torch.from_numpy(hidden).to(dtype)
        elif need is Need.LOG_COLLISION:
            collision = values["log_collision"]
            fields[need.value] = torch.from_numpy(collision).to(dtype)
    return Side(
        policy_logps=torch.from_numpy(values["policy_logps"]).to(dtype),
        response_mask=mask,
        **fields,
    )


def random_batch(
    needs: Iterable[Need] = (Need.REFERENCE_LOGPS,),
    *,
    seed: int = 0,
    batch: int = 3,
    seq: int = 6,
    dtype: torch.dtype = F64,
    requires_grad: bool = False,
    example_weights: bool = False,
) -> PairBatch:
    """A seeded random batch carrying exactly the fields ``needs`` names.

    Prompt lengths and response lengths vary per row (each row has >= 1 response
    token). With ``requires_grad`` every side's ``policy_logps`` (and the live
    KL columns) are leaf tensors that require grad.
    """
    needs = frozenset(needs)
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng((seed, 1))
    collision = np.random.default_rng((seed, 2))  # WPO's log sum_v p_v^2 column

    def one(rows_seq: int) -> Side:
        starts = rng.integers(0, rows_seq, size=batch)
        rows = [
            (int(s), int(rng.integers(1, rows_seq - s + 1))) for s in starts.tolist()
        ]
        values = {"policy_logps": rng.uniform(-20.0, 0.0, (batch, rows_seq))}
        for need, (low, high) in _FLOAT_NEEDS.items():
            values[need.value] = rng.uniform(low, high, (batch, rows_seq))
        values["hidden_states"] = rng.normal(size=(batch, rows_seq, HIDDEN))
        # its own generator: the draws above stay those of earlier versions
        values["first_token_attribution"] = extra.uniform(-3.0, 3.0, batch)
        values["log_collision"] = collision.uniform(-5.0, 0.0, (batch, rows_seq))
        built = _side_from_arrays(values, _masks(rows, rows_seq), needs, dtype)
        if not requires_grad:
            return built
        live = {
            name: getattr(built, name).detach().requires_grad_(True)
            for name in ("policy_logps", "kl_forward", "kl_reverse")
            if getattr(built, name) is not None
        }
        return built.replace(**live)

    chosen, rejected = one(seq), one(seq)
    anchor = one(seq + 1) if Need.ANCHOR in needs else None
    weights = (
        torch.from_numpy(rng.uniform(0.0, 2.0, batch)).to(dtype)
        if example_weights
        else None
    )
    return PairBatch(
        chosen=chosen, rejected=rejected, anchor=anchor, example_weights=weights
    )


@st.composite
def pair_batches(
    draw: st.DrawFn,
    needs: Iterable[Need] = (Need.REFERENCE_LOGPS,),
    *,
    max_batch: int = 4,
    max_seq: int = 8,
    dtype: torch.dtype = F64,
    example_weights: bool = False,
) -> PairBatch:
    """Bounded random pair batches (no filtering): every row has >= 1 response
    token, log-probs in [-20, 0], other columns in the ranges of ``_FLOAT_NEEDS``.
    Elements are float32-representable, so casting to float32 loses nothing."""
    needs = frozenset(needs)
    size = draw(st.integers(1, max_batch))
    seq = draw(st.integers(1, max_seq))

    def rows(length: int) -> list[tuple[int, int]]:
        row = st.integers(0, length - 1).flatmap(
            lambda start: st.tuples(st.just(start), st.integers(1, length - start))
        )
        return draw(st.lists(row, min_size=size, max_size=size))

    def floats(shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
        elements = st.floats(low, high, width=32)
        return draw(arrays(np.float64, shape, elements=elements))

    def one(length: int) -> Side:
        values = {"policy_logps": floats((size, length), -20.0, 0.0)}
        for need in needs:
            if need in _FLOAT_NEEDS:
                values[need.value] = floats((size, length), *_FLOAT_NEEDS[need])
        if Need.HIDDEN_STATES in needs:
            values["hidden_states"] = floats((size, length, HIDDEN), -3.0, 3.0)
        if Need.SEQUENCE_MASK in needs:
            values["first_token_attribution"] = floats((size,), -3.0, 3.0)
        if Need.LOG_COLLISION in needs:
            values["log_collision"] = floats((size, length), -5.0, 0.0)
        return _side_from_arrays(values, _masks(rows(length), length), needs, dtype)

    chosen, rejected = one(seq), one(seq)
    anchor = one(seq) if Need.ANCHOR in needs else None
    weights = (
        torch.from_numpy(floats((size,), 0.0, 2.0)).to(dtype)
        if example_weights
        else None
    )
    return PairBatch(
        chosen=chosen, rejected=rejected, anchor=anchor, example_weights=weights
    )


def map_sides(batch: PairBatch, change: Callable[[Side], Side]) -> PairBatch:
    """Apply ``change(side) -> Side`` to every side of ``batch``."""
    return dataclasses.replace(
        batch,
        chosen=change(batch.chosen),
        rejected=change(batch.rejected),
        anchor=None if batch.anchor is None else change(batch.anchor),
    )


def side_tensors(side_: Side) -> dict[str, Tensor]:
    """The tensor fields of a side that are set."""
    return {
        f.name: getattr(side_, f.name)
        for f in dataclasses.fields(side_)
        if getattr(side_, f.name) is not None
    }


def with_policy_grad(batch: PairBatch) -> PairBatch:
    """Copy of ``batch`` whose policy log-probs and KL columns are fresh leaves that
    require grad (on chosen and rejected)."""

    def live(side_: Side) -> Side:
        return side_.replace(
            **{
                name: getattr(side_, name).detach().clone().requires_grad_(True)
                for name in ("policy_logps", "kl_forward", "kl_reverse")
                if getattr(side_, name) is not None
            }
        )

    return dataclasses.replace(
        batch, chosen=live(batch.chosen), rejected=live(batch.rejected)
    )
