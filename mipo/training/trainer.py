"""``python -m mipo.train RECIPE.py [--train.FIELD=VALUE] [--objective.NAME=VALUE]``.

The trainer is generic over :class:`~mipo.objective.Objective`: it reads
``objective.needs`` and ``objective.services`` and supplies exactly those inputs
(:mod:`mipo.training.batching`, :mod:`mipo.training.services`); it never asks
which method it runs. It runs on accelerate, so the same command works on one
CPU, one GPU, or several processes under ``torchrun`` (DDP, or FSDP2 sharding
of policy and reference with ``--train.sharding=fsdp2``,
:mod:`mipo.training.sharding`) or ``accelerate launch`` (DeepSpeed); see
``docs/guides/scaling.md``.

Python API::

    from mipo.training.trainer import train
    result = train("recipes/dpo.py", overrides={"train.max_steps": 2})
    result.run_dir, result.metrics, result.eval
"""

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

from mipo.errors import TrainingInterrupted
from mipo.training import checkpoint as checkpoints
from mipo.training.cli import (
    OverrideError,
    check_file_keys,
    help_text,
    parse_command_line,
    with_preset,
)
from mipo.training.command import mark_run_time, run_command
from mipo.training.evaluate import evaluate_run, evaluate_step
from mipo.training.hub_files import write_hub_files
from mipo.training.interrupts import StopRequest, interrupted_message
from mipo.training.loop import fit, stopping
from mipo.training.recipes import Recipe, load_recipe
from mipo.training.run_dir import write_json, write_plots
from mipo.training.services.learned_prior import PRIOR_FILE
from mipo.training.services.masks import MASK_MODEL_FILE
from mipo.training.setup import Run, setup_run
from mipo.training.summary import summary


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class TrainResult:
    """What :func:`train` returns.

    Args:
        run_dir: the run directory.
        step: optimiser steps done.
        metrics: the last logged metrics record.
        eval: the final evaluation (``eval.json``).
        reference_forwards: reference-model forward passes during training (0
            for reference-free or precomputed runs).
    """

    run_dir: Path
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    reference_forwards: int = 0


def train(
    recipe: str | Path | Recipe | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    resume: str | Path | None = None,
    stop_after: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``recipe`` with dotted ``overrides`` and return the run.

    Args:
        recipe: a recipe path or shipped name (optional with ``resume``), or a
            :class:`~mipo.training.recipes.Recipe` built in Python with
            :func:`~mipo.training.recipes.recipe_from`.
        overrides: dotted keys, e.g. ``{"train.max_steps": 2, "objective.beta": 0.2}``.
        resume: a run directory; continues from its latest checkpoint with the
            same recipe and overrides (``overrides`` given here win).
        stop_after: stop after this many optimiser steps in total, as if the run
            were interrupted (the schedule still follows the full length).
        progress: show the tqdm progress bar.
    """
    run = setup_run(recipe, overrides or {}, resume=resume, stop_after=stop_after)
    try:
        return _train(run, progress)
    finally:
        if run.lock is not None:
            run.lock.release()


def _train(run: Run, progress: bool) -> TrainResult:
    """Evaluate before training, fit, finish; SIGINT or SIGTERM stop the fit
    after its current step (:func:`_interrupted`)."""
    from tqdm.auto import tqdm

    main_process = run.accelerator.is_main_process
    bar = tqdm(
        total=run.progress.total_steps,
        initial=run.progress.step,
        desc=run.recipe.name,
        disable=not (progress and main_process),
        dynamic_ncols=True,
    )
    try:
        with StopRequest() as request:
            run.stop_request = request
            if (
                not run.resumed
                and run.gold_reward is not None
                and run.data.eval_records
            ):
                before = evaluate_step(run, 0)
                if run.log is not None:
                    run.log.log(before)
            run.metrics.restart_clock()
            fit(run, bar)
            stopped = stopping(run) and run.progress.step < run.progress.stop
    except BaseException as error:
        bar.close()
        _close(run)
        mark_run_time(error)
        raise
    bar.close()
    if stopped:
        _interrupted(run, request.name)
    return _finish(run)


def _interrupted(run: Run, signal_name: str) -> None:
    """After a signal: checkpoint the last finished step, close the outputs and
    raise :class:`~mipo.errors.TrainingInterrupted` with the resume command (a
    new run stopped before its first step is removed: nothing was trained)."""
    progress = run.progress
    name = signal_name or "signal"
    if progress.step == 0 and not run.resumed:
        _close(run)
        if run.accelerator.is_main_process:
            shutil.rmtree(run.run_dir, ignore_errors=True)
        raise TrainingInterrupted(
            f"{name} before the first step; nothing was trained, and the run "
            "directory was removed"
        )
    if progress.saved_at != progress.step:
        checkpoints.save(run)
    _close(run)
    message = interrupted_message(
        name, progress.step, progress.total_steps, run.run_dir
    )
    if run.config.save_only_model:
        message = (
            f"{name} at step {progress.step}; checkpoint-{progress.step} written in "
            f"{run.run_dir} without optimiser state (save_only_model), so the run "
            "cannot be resumed"
        )
    raise TrainingInterrupted(message, run_dir=run.run_dir, step=progress.step)


def _finish(run: Run) -> TrainResult:
    """Final checkpoint and evaluation, outputs closed, the result."""
    progress = run.progress
    if progress.saved_at != progress.step:
        checkpoints.save(run)
    result_eval: dict[str, Any] = {}
    if progress.step >= progress.total_steps:
        result_eval = evaluate_step(run, progress.step)
        if run.accelerator.is_main_process:
            write_json(run.run_dir / "eval.json", result_eval)
            if run.log is not None:
                run.log.log(result_eval)
            last = run.run_dir / f"checkpoint-{progress.step}"
            if last.is_dir():  # its trainer_state.json and card gain the evaluation
                write_hub_files(run, last)
    _close(run)
    if run.log is not None:
        if result_eval:
            print(summary(run.recipe.name, run.config, run.run_dir, result_eval))
        print(f"outputs: {run.run_dir}")
    reference = run.models.reference
    calls = 0 if reference is None else reference.calls - run.reference_calls_before
    return TrainResult(
        run_dir=run.run_dir,
        step=progress.step,
        metrics=run.last_record,
        eval=result_eval,
        reference_forwards=calls,
    )


def _close(run: Run) -> None:
    if run.log is not None:
        run.log.close()
        write_plots(run.run_dir)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (errors in the common style of
    :mod:`mipo.training.command`; ``--debug`` shows tracebacks)."""
    run_command(_main, sys.argv[1:] if argv is None else argv)


def _main(args: list[str]) -> None:
    from mipo.training.launch import refuse_bad_launch

    refuse_bad_launch(args)
    command = parse_command_line(args)
    if command.show_help:
        recipe = load_recipe(command.recipe) if command.recipe else None
        print(help_text(recipe))
        return
    if command.recipe and command.origins:
        check_file_keys(load_recipe(command.recipe), command)
    overrides = command.overrides
    if command.preset is not None:
        recipe = load_recipe(command.recipe) if command.recipe else None
        if recipe is None:
            raise OverrideError(
                "--preset: needs a recipe (python -m mipo.train RECIPE --preset NAME)"
            )
        overrides = with_preset(recipe, command.preset, overrides)
    train(command.recipe, overrides, resume=command.resume)


if __name__ == "__main__":
    main()


__all__ = [
    "MASK_MODEL_FILE",
    "PRIOR_FILE",
    "TrainResult",
    "evaluate_run",
    "main",
    "train",
]
