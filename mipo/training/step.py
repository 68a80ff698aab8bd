"""One micro-step (batch, loss, backward) and one optimiser step of a run."""

import contextlib
import math
from typing import Any

from torch import Tensor

from mipo.errors import NonFiniteLossError
from mipo.training.batching import count_tokens


def micro_step(run: Any, batch: Any, *, sync: bool) -> None:
    """Build the pair batch, compute the loss, back-propagate it (gradients are
    synchronised across processes only when ``sync``), accumulate the metrics."""
    accelerator, progress = run.accelerator, run.progress
    body = run.models.body
    context = contextlib.nullcontext() if sync else accelerator.no_sync(body)
    with context:
        with accelerator.autocast():
            pair_batch = run.builder(run.models, batch)
        try:
            out = run.objective(pair_batch)
        except NonFiniteLossError as error:
            raise NonFiniteLossError(
                f"step {progress.step + 1} (epoch {progress.epoch}, micro-batch "
                f"{progress.consumed}): {error}"
            ) from error
        accelerator.backward(out.loss)
    run.metrics.add(out.metrics, count_tokens(batch.tensors))


def optimizer_step(run: Any) -> tuple[Tensor, float]:
    """Clip, step the optimiser and the schedule, clear the gradients; returns
    the gradient norm before clipping and the learning rate used."""
    config = run.config
    clip = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
    grad_norm = run.accelerator.clip_grad_norm_(run.clipped_parameters(), clip)
    learning_rate = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.progress.step += 1
    return grad_norm, learning_rate


__all__ = ["micro_step", "optimizer_step"]
