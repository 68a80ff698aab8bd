"""Checkpoints of a training run: the policy (or its LoRA adapter), the tokenizer,
the trainer state (optimiser, scheduler, every process's RNG, the position in
the data) and every service's own state, written atomically as
``checkpoint-{step}`` (:func:`mipo.training.run_dir.save_checkpoint`).

Resuming restores all of it, so a run stopped and resumed matches one trained
straight through. ``save_total_limit`` keeps the newest N checkpoints;
``save_only_model`` leaves the optimiser, scheduler and RNG state out (a model
export, which ``--resume`` refuses: :func:`check_resumable`).
"""

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mipo.errors import ConfigError, TrainingStopped
from mipo.training.run_dir import prune_checkpoints, save_checkpoint

TRAINER_STATE = "trainer_state.pt"
"""Optimiser, scheduler, RNG and data position inside ``checkpoint-N``."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run: Any) -> Path:
    """Write ``checkpoint-{step}`` of ``run`` (every process joins: sharded
    weights are gathered; the main process writes)."""
    accelerator, progress = run.accelerator, run.progress
    state = _trainer_state(run)
    # get_state_dict gathers sharded weights (FSDP, ZeRO-3); every process joins.
    weights = {
        key.removeprefix("model."): value
        for key, value in accelerator.get_state_dict(run.models.body).items()
    }
    check_finite_weights(weights, progress.step)
    directory = run.run_dir / f"checkpoint-{progress.step}"
    if accelerator.is_main_process:
        directory = save_checkpoint(
            run.run_dir,
            progress.step,
            model=run.models.policy,
            tokenizer=run.tokenizer,
            state=state,
            weights=weights,
        )
        for service in run.services:
            service.save(directory)
        prune_checkpoints(run.run_dir, run.config.save_total_limit)
    accelerator.wait_for_everyone()
    progress.saved_at = progress.step
    return directory


def _trainer_state(run: Any) -> dict[str, Any]:
    """``trainer_state.pt``: the position, and unless ``save_only_model`` the
    optimiser, scheduler and every process's RNG."""
    progress = run.progress
    state: dict[str, Any] = {
        "step": progress.step,
        "epoch": progress.epoch,
        "consumed": progress.consumed,
    }
    if run.config.save_only_model:
        return state
    rng = run.accelerator.gather_for_metrics([rng_state()], use_gather_object=True)
    optimizer = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": rng,
    }
    return {**optimizer, **state}


def check_resumable(checkpoint: Path) -> None:
    """Refuse, before any model loads, a checkpoint written with
    ``save_only_model`` (it holds no optimiser state to continue from).

    Raises:
        ConfigError: naming the checkpoint and what to do instead.
    """
    state = torch.load(
        checkpoint / TRAINER_STATE, map_location="cpu", weights_only=False, mmap=True
    )
    if "optimizer" not in state:
        raise ConfigError(
            f"--resume: {checkpoint} was saved with --train.save_only_model=true and "
            "holds no optimiser state, so the run cannot continue exactly; start a "
            f"new run from its weights with --train.model={checkpoint}"
        )


def check_finite_weights(weights: dict[str, torch.Tensor], step: int) -> None:
    """Refuse to write a checkpoint whose weights hold a NaN or an infinity.

    Raises:
        TrainingStopped: naming the first such tensor.
    """
    for key, value in weights.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise TrainingStopped(
                f"checkpoint-{step} not written: parameter '{key}' holds non-finite "
                "values; the last good checkpoint is kept (lower the learning rate "
                "or check the data)"
            )


def restore(run: Any, checkpoint: Path) -> None:
    """Load the trainer state of ``checkpoint`` into ``run`` (the policy and the
    services were restored when they were built)."""
    state = torch.load(
        checkpoint / TRAINER_STATE, map_location="cpu", weights_only=False
    )
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    progress = run.progress
    progress.step, progress.epoch = state["step"], state["epoch"]
    progress.consumed = state["consumed"]
    index = min(run.accelerator.process_index, len(state["rng"]) - 1)
    set_rng_state(state["rng"][index])


__all__ = [
    "TRAINER_STATE",
    "check_finite_weights",
    "check_resumable",
    "restore",
    "rng_state",
    "save",
    "set_rng_state",
]
