"""The fit loop: epoch -> accumulation group -> micro-step.

It reads like nanoGPT's training loop. Everything model-side happens in the
objective's services and the batch builder; the loop never asks which method
runs. After SIGINT or SIGTERM it stops at the end of the current optimiser step
(:mod:`mipo.training.interrupts`).
"""

from collections.abc import Iterator
from itertools import islice
from typing import Any

from mipo.training import checkpoint as checkpoints
from mipo.training.evaluate import evaluate_step
from mipo.training.interrupts import stop_requested
from mipo.training.loaders import make_loader
from mipo.training.step import micro_step, optimizer_step, settle_step


def fit(run: Any, bar: Any) -> None:
    """Train ``run`` until ``run.progress.stop`` optimiser steps, or until a
    signal asks it to stop (then after the step it is in)."""
    progress, config = run.progress, run.config
    while progress.step < progress.stop and not stopping(run):
        loader = epoch_loader(run)
        total = len(loader)
        if progress.consumed:
            loader = run.accelerator.skip_first_batches(loader, progress.consumed)
        for group in accumulation_groups(loader, config.gradient_accumulation_steps):
            for index, batch in enumerate(group):
                progress.consumed += 1
                batch = batch.to(run.device)
                if index == 0:
                    for service in run.services:
                        service.before_step(progress.step, batch, run.models)
                micro_step(run, batch, sync=index == len(group) - 1)
            grad_norm, learning_rate = optimizer_step(run)
            for service in run.services:
                service.after_step(progress.step, run.models)
            bar.update(1)
            skipped = settle_step(run) is not None
            after_step(run, bar, grad_norm, learning_rate, skipped=skipped)
            if progress.step >= progress.stop or stopping(run):
                break
        if progress.consumed == total:
            progress.epoch += 1
            progress.consumed = 0


def stopping(run: Any) -> bool:
    """A signal asked the run to stop (every process agrees)."""
    return stop_requested(getattr(run, "stop_request", None), run.accelerator)


def epoch_loader(run: Any) -> Any:
    """The training pairs of the current epoch, in its seeded order."""
    loader = make_loader(
        run.data.train,
        batch_size=run.config.batch_size,
        pad_token_id=run.models.pad_token_id,
        shuffle_seed=run.config.seed + run.progress.epoch,
    )
    return run.accelerator.prepare_data_loader(loader, device_placement=False)


def accumulation_groups(loader: Any, size: int) -> Iterator[list[Any]]:
    """Consecutive micro-batches of ``size`` (the last group of an epoch may be
    shorter: an epoch always ends with an optimiser step)."""
    batches = iter(loader)
    while group := list(islice(batches, size)):
        yield group


def after_step(
    run: Any, bar: Any, grad_norm: Any, learning_rate: float, *, skipped: bool = False
) -> None:
    """Log, evaluate and checkpoint on their schedules (a skipped step was logged
    by :func:`~mipo.training.step.settle_step`; its metrics are not)."""
    progress, config = run.progress, run.config
    step = progress.step
    logging = step % config.logging_steps == 0 or step == progress.stop
    if logging and not skipped:
        record = run.metrics.record(
            run.accelerator,
            step=step,
            epoch=step / progress.steps_per_epoch,
            learning_rate=learning_rate,
            grad_norm=grad_norm,
        )
        for service in run.services:
            record.update(service.metrics())
        run.last_record = record
        if run.log is not None:
            run.log.log(record)
        loss = record.get("loss", float("nan"))
        accuracy = record.get("rewards/accuracies", float("nan"))
        bar.set_postfix(
            {"loss": f"{loss:.4f}", "rewards/accuracies": f"{accuracy:.2f}"}
        )
    if config.eval_steps and step % config.eval_steps == 0 and step < progress.stop:
        evaluation = evaluate_step(run, step)
        if run.log is not None and len(evaluation) > 1:
            run.log.log(evaluation)
        run.metrics.restart_clock()  # step times leave evaluation out
    if config.save_steps and step % config.save_steps == 0:
        checkpoints.save(run)


__all__ = ["accumulation_groups", "after_step", "epoch_loader", "fit", "stopping"]
