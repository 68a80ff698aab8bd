"""One micro-step (batch, loss, backward) and one optimiser step of a run.

Non-finite values never reach the weights. An optimiser step is skipped when a
micro-batch's loss is NaN or infinite or when its gradient norm is not finite
(including an infinite norm that clipping would scale to zero): the gradients
are zeroed and neither the parameters nor the optimiser moments change.

Host syncs: a micro-step never reads a device value back (the batch builder's
one value check aside). Its loss is back-propagated as it is, and its
finiteness stays on the device until the optimiser step, which reads it with
the gradient norm in one sync. A non-finite loss makes non-finite gradients or
is caught there, and either way the step is skipped. Under several processes
every rank then sees the same all-reduced gradients, where skipping the
backward on one rank would leave the others waiting. A skipped step still
counts as a step (the data position and the learning-rate schedule move on, so
the run keeps its length); it is logged with its step, micro-batch and pair
indices, and ``max_bad_steps`` consecutive skipped steps stop the run
(:class:`~mipo.errors.TrainingStopped`).

Under several processes every process takes the same decision: a step that is
bad on one process (a non-finite loss of one of its micro-batches) is skipped
on all of them, each logging the failing process's reason and pairs; the
gradient norm is that of the averaged gradients, the same everywhere. The
gradients of trained service modules, which no DDP or FSDP wrapper
synchronises, are averaged over the processes before the norm is taken.
"""

import contextlib
import dataclasses
import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mipo.errors import NonFiniteLossError, TrainingStopped
from mipo.objective import non_finite_message
from mipo.training.batching import count_tokens
from mipo.training.distributed import (
    any_process,
    average_gradients,
    gather_lists,
    sum_reducer,
)
from mipo.training.token_metrics import pooled_means


@dataclass(kw_only=True, eq=False)
class BadStep:
    """Why an optimiser step was skipped."""

    reason: str
    micro_batch: int | None = None
    pairs: list[int] | None = None

    def record(self, step: int) -> dict[str, Any]:
        """The ``metrics.jsonl`` line of the skipped step."""
        return {
            "step": step,
            "skipped": self.reason,
            "micro_batch": self.micro_batch,
            "pairs": self.pairs,
        }


@dataclass(kw_only=True, eq=False)
class LossCheck:
    """One micro-batch's loss finiteness, still on the device, and what names
    it if it is not."""

    finite: Tensor
    parts: Any
    micro_batch: int
    indices: Tensor | None


@dataclass(kw_only=True, eq=False)
class StepState:
    """The current accumulation group: its metrics (added to the run's only when
    the step is taken), its losses' finiteness, and what made it bad, if
    anything."""

    pending: list[tuple[Any, Tensor]]
    checks: list[LossCheck] = field(default_factory=list)
    bad: BadStep | None = None
    consecutive_bad: int = 0
    objective: Any = None
    source: Any = None

    def unchecked(self, objective: Any) -> Any:
        """``objective`` without its own per-call finite check (one host sync
        each; this module checks at the optimiser step instead)."""
        if self.source is not objective:
            self.source = objective
            self.objective = (
                dataclasses.replace(objective, check_finite=False)
                if getattr(objective, "check_finite", False)
                else objective
            )
        return self.objective


def step_state(run: Any) -> StepState:
    """The run's :class:`StepState` (made on first use)."""
    state = getattr(run, "step_state", None)
    if state is None:
        state = StepState(pending=[])
        run.step_state = state
    return state


def micro_step(run: Any, batch: Any, *, sync: bool) -> None:
    """Build the pair batch, compute the loss, back-propagate it (gradients are
    synchronised across processes only when ``sync``). The loss's finiteness is
    read at the optimiser step; a part that raises
    :class:`~mipo.errors.NonFiniteLossError` marks the step bad on every
    process, before any backward."""
    accelerator, progress = run.accelerator, run.progress
    state = step_state(run)
    if state.bad is not None:
        return  # the step is skipped anyway: spare the compute
    body = run.models.body
    context = contextlib.nullcontext() if sync else accelerator.no_sync(body)
    with context:
        with accelerator.autocast():
            pair_batch, token_metrics = run.builder.build(run.models, batch)
        try:
            out, bad = state.unchecked(run.objective)(pair_batch), None
        except NonFiniteLossError as error:  # raised by a part, not a check
            out = None
            bad = BadStep(
                reason=str(error), micro_batch=progress.consumed, pairs=_pairs(batch)
            )
        # every process skips the backward when one could not compute its loss
        # (a sync only under several processes)
        if any_process(accelerator, bad is not None):
            state.bad = _agreed_bad_step(accelerator, bad)
            return
        accelerator.backward(out.loss)
    reduce = sum_reducer(accelerator)  # TRL pools the token sums over processes
    metrics = {**out.metrics, **pooled_means(token_metrics, reduce)}
    state.pending.append((metrics, count_tokens(batch.tensors)))
    state.checks.append(
        LossCheck(
            finite=torch.isfinite(out.loss.detach()),
            parts=getattr(out, "parts", {}),
            micro_batch=progress.consumed,
            indices=getattr(batch, "indices", None),
        )
    )


def _pairs(batch: Any) -> list[int] | None:
    return _indices(getattr(batch, "indices", None))


def _indices(indices: Tensor | None) -> list[int] | None:
    return None if indices is None else [int(i) for i in indices.tolist()]


def _check_group(state: StepState, grad_norm: Any) -> BadStep | None:
    """Read the gradient norm's and every micro-batch loss's finiteness in one
    host sync; a bad loss is reported before a bad norm."""
    norm = torch.as_tensor(grad_norm)
    device = state.checks[0].finite.device if state.checks else norm.device
    flags = [torch.isfinite(norm.to(device)).reshape(())]
    flags += [check.finite.reshape(()) for check in state.checks]
    norm_ok, *losses_ok = torch.stack(flags).tolist()
    for check, ok in zip(state.checks, losses_ok, strict=True):
        if not ok:
            return BadStep(
                reason=non_finite_message(check.parts),
                micro_batch=check.micro_batch,
                pairs=_indices(check.indices),
            )
    if not norm_ok:
        return BadStep(reason=f"non-finite gradient norm ({float(grad_norm)})")
    return None


def _agreed_bad_step(accelerator: Any, bad: BadStep | None) -> BadStep:
    """The bad step every process records: the first failing process's."""
    mine = [] if bad is None else [(bad.reason, bad.micro_batch, bad.pairs)]
    reason, micro_batch, pairs = gather_lists(accelerator, mine)[0]
    return BadStep(reason=reason, micro_batch=micro_batch, pairs=pairs)


def optimizer_step(run: Any) -> tuple[Tensor, float]:
    """Clip, step the optimiser and the schedule, clear the gradients; returns
    the gradient norm before clipping and the learning rate used. A bad step
    (non-finite loss or gradient norm) leaves the parameters and the optimiser
    moments as they were."""
    config, state = run.config, step_state(run)
    clip = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    learning_rate = run.scheduler.get_last_lr()[0]
    if any_process(run.accelerator, state.bad is not None):
        state.bad = _agreed_bad_step(run.accelerator, state.bad)
    if state.bad is None:
        # trained service modules are replicated: their gradients are averaged
        # over processes like the policy's, before the norm is taken
        average_gradients(run.accelerator, run.service_parameters())
        grad_norm = run.accelerator.clip_grad_norm_(run.clipped_parameters(), clip)
        state.bad = _check_group(state, grad_norm)
        if any_process(run.accelerator, state.bad is not None):
            state.bad = _agreed_bad_step(run.accelerator, state.bad)
    else:
        grad_norm = torch.tensor(float("nan"))
    if state.bad is None:
        run.optimizer.step()
        for metrics, tokens in state.pending:
            run.metrics.add(metrics, tokens)
    with warnings.catch_warnings():
        # a skipped step still moves the schedule on (torch warns about it)
        warnings.filterwarnings(
            "ignore", "Detected call of `lr_scheduler.step", UserWarning
        )
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.progress.step += 1
    return grad_norm, learning_rate


def settle_step(run: Any) -> BadStep | None:
    """After an optimiser step: report a skipped one (stderr and
    ``metrics.jsonl``), count consecutive bad steps and stop the run after
    ``max_bad_steps``; returns the bad step, if any, and starts the next group."""
    state, step = step_state(run), run.progress.step
    bad, state.bad, state.pending, state.checks = state.bad, None, [], []
    if bad is None:
        state.consecutive_bad = 0
        return None
    state.consecutive_bad += 1
    where = f"micro-batch {bad.micro_batch}, " if bad.micro_batch is not None else ""
    pairs = f"pairs {bad.pairs}, " if bad.pairs is not None else ""
    if run.log is not None:
        print(
            f"mipo: warning: step {step} skipped ({where}{pairs}epoch "
            f"{run.progress.epoch}): {bad.reason}",
            file=sys.stderr,
        )
        run.log.log(bad.record(step))
    limit = run.config.max_bad_steps
    if state.consecutive_bad >= limit:
        raise TrainingStopped(
            f"stopped at step {step}: {limit} consecutive steps had a non-finite "
            f"loss or gradient norm (last: {bad.reason}); lower the learning rate, "
            "check the data, or raise --train.max_bad_steps"
        )
    return bad


__all__ = ["BadStep", "StepState", "micro_step", "optimizer_step", "settle_step"]
