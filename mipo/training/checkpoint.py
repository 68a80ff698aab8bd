"""Checkpoints of a training run: the policy (or its LoRA adapter), the tokenizer,
the trainer state (optimiser, scheduler, every process's RNG, the position in
the data) and every service's own state, written atomically as
``checkpoint-{step}`` (:func:`mipo.training.run_dir.save_checkpoint`).

Resuming restores all of it, so a run stopped and resumed matches one trained
straight through.
"""

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mipo.errors import TrainingStopped
from mipo.training.run_dir import save_checkpoint

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
    rng = accelerator.gather_for_metrics([rng_state()], use_gather_object=True)
    state = {
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": rng,
        "step": progress.step,
        "epoch": progress.epoch,
        "consumed": progress.consumed,
        "num_tokens": run.metrics.tokens_seen(accelerator),
    }
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
    accelerator.wait_for_everyone()
    progress.saved_at = progress.step
    return directory


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
    run.metrics.total_tokens = state.get("num_tokens", 0)
    index = min(run.accelerator.process_index, len(state["rng"]) - 1)
    set_rng_state(state["rng"][index])


__all__ = [
    "TRAINER_STATE",
    "check_finite_weights",
    "restore",
    "rng_state",
    "save",
    "set_rng_state",
]
