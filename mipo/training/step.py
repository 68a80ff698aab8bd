"""One micro-step (batch, loss, backward) and one optimiser step of a run.

Non-finite values never reach the weights. A micro-batch whose loss is NaN or
infinite is not back-propagated, and an optimiser step whose gradient norm is
not finite (including an infinite norm that clipping would scale to zero) is
skipped: the gradients are zeroed and neither the parameters nor the optimiser
moments change. A skipped step still counts as a step (the data position and
the learning-rate schedule move on, so the run keeps its length); it is logged
with its step, micro-batch and pair indices, and ``max_bad_steps`` consecutive
skipped steps stop the run (:class:`~mipo.errors.TrainingStopped`).
"""

import contextlib
import math
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mipo.errors import NonFiniteLossError, TrainingStopped
from mipo.training.batching import count_tokens


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
class StepState:
    """The current accumulation group: its metrics (added to the run's only when
    the step is taken) and what made it bad, if anything."""

    pending: list[tuple[Any, Tensor]]
    bad: BadStep | None = None
    consecutive_bad: int = 0


def step_state(run: Any) -> StepState:
    """The run's :class:`StepState` (made on first use)."""
    state = getattr(run, "step_state", None)
    if state is None:
        state = StepState(pending=[])
        run.step_state = state
    return state


def micro_step(run: Any, batch: Any, *, sync: bool) -> None:
    """Build the pair batch, compute the loss, back-propagate it (gradients are
    synchronised across processes only when ``sync``); a non-finite loss marks
    the step bad and is not back-propagated."""
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
            out = run.objective(pair_batch)
        except NonFiniteLossError as error:
            state.bad = BadStep(
                reason=str(error),
                micro_batch=progress.consumed,
                pairs=_pairs(batch),
            )
            return
        accelerator.backward(out.loss)
    metrics = {**out.metrics, **token_metrics}
    state.pending.append((metrics, count_tokens(batch.tensors)))


def _pairs(batch: Any) -> list[int] | None:
    indices = getattr(batch, "indices", None)
    return None if indices is None else [int(i) for i in indices.tolist()]


def optimizer_step(run: Any) -> tuple[Tensor, float]:
    """Clip, step the optimiser and the schedule, clear the gradients; returns
    the gradient norm before clipping and the learning rate used. A bad step
    (non-finite loss or gradient norm) leaves the parameters and the optimiser
    moments as they were."""
    config, state = run.config, step_state(run)
    clip = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    learning_rate = run.scheduler.get_last_lr()[0]
    if state.bad is None:
        grad_norm = run.accelerator.clip_grad_norm_(run.clipped_parameters(), clip)
        if not bool(torch.isfinite(torch.as_tensor(grad_norm))):
            state.bad = BadStep(reason=f"non-finite gradient norm ({float(grad_norm)})")
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
    bad, state.bad, state.pending = state.bad, None, []
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
