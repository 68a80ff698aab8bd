"""Checkpoints of a training run: the policy (or its LoRA adapter), the tokenizer,
the trainer state (optimiser, scheduler, every process's RNG, the position in
the data) and every service's own state, written atomically as
``checkpoint-{step}`` (:func:`mipo.training.run_dir.save_checkpoint`).

Resuming restores all of it, so a run stopped and resumed matches one trained
straight through. ``save_total_limit`` keeps the newest N checkpoints;
``save_only_model`` leaves the optimiser, scheduler and RNG state out (a model
export, which ``--resume`` refuses: :func:`check_resumable`).

A run with sharded parameters (``TrainConfig.sharding="fsdp2"``) writes its
trained state with ``torch.distributed.checkpoint`` instead: every process
saves its own shards of the policy's trainable parameters and their optimiser
state (plus the service modules, replicated, written once) under
``checkpoint-N/distributed/``, and resuming loads them back into the sharded
model. The last checkpoint of a run (the step it stops at) also holds the
consolidated weights as ``save_pretrained`` writes them (``model.safetensors``
or the LoRA adapter), which ``AutoModelForCausalLM.from_pretrained`` and
``python -m mipo.eval`` read. The RNG states are each process's own (its CPU
generator and its own GPU's).
"""

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mipo.errors import ConfigError, TrainingStopped
from mipo.training.distributed import any_process, gather_lists
from mipo.training.hub_files import write_hub_files
from mipo.training.run_dir import prune_checkpoints, save_checkpoint

TRAINER_STATE = "trainer_state.pt"
"""Optimiser, scheduler, RNG and data position inside ``checkpoint-N``."""

SHARDED_DIR = "distributed"
"""The ``torch.distributed.checkpoint`` shards inside ``checkpoint-N`` of a
sharded run."""


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch and (with CUDA) this process's own GPU generator
    states. Each process saves its own; the GPU state is that of the current
    device only (a process under torchrun drives one GPU)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (on the current GPU only; an older checkpoint
    holding every GPU's state gives the current GPU its own entry)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, list | tuple):
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)


def save(run: Any) -> Path:
    """Write ``checkpoint-{step}`` of ``run`` (every process joins: sharded
    weights are gathered; the main process writes)."""
    accelerator, progress = run.accelerator, run.progress
    if run.sharding.shards_parameters:
        rng = accelerator.gather_for_metrics([rng_state()], use_gather_object=True)
        return _save_sharded(run, _progress_state(run, rng))
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
        write_hub_files(run, directory)
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
        "num_tokens": run.metrics.tokens_seen(run.accelerator),
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


def check_resumable(
    checkpoint: Path, processes: int = 1, *, sharded_now: bool = False
) -> None:
    """Refuse, before any model loads, a checkpoint written with
    ``save_only_model`` (it holds no optimiser state to continue from), a
    sharded one resumed without sharding or the other way round
    (``sharded_now``: this launch shards), or one written by
    another number of processes than the ``processes`` resuming it (the data
    position and the random states are per process, so the run would not
    continue as it was going).

    Raises:
        ConfigError: naming the checkpoint and what to do instead.
    """
    state = torch.load(
        checkpoint / TRAINER_STATE, map_location="cpu", weights_only=False, mmap=True
    )
    sharded = (checkpoint / SHARDED_DIR).is_dir()  # its optimiser state is there
    if "optimizer" not in state and not sharded:
        raise ConfigError(
            f"--resume: {checkpoint} was saved with --train.save_only_model=true and "
            "holds no optimiser state, so the run cannot continue exactly; start a "
            f"new run from its weights with --train.model={checkpoint}"
        )
    if sharded and not sharded_now:
        raise ConfigError(
            f"--resume: {checkpoint} was written by a run with sharding='fsdp2' "
            "(sharded weights and optimiser state); resume it with "
            "--train.sharding=fsdp2"
        )
    if sharded_now and not sharded:
        raise ConfigError(
            f"--resume: {checkpoint} holds whole weights and optimiser state, not "
            "fsdp2 shards; resume it with the sharding it was written with "
            "(--train.sharding=none or ddp)"
        )
    written = len(state.get("rng", ())) or processes
    if written != processes:
        launch = (
            "python -m mipo.train --resume RUN"
            if written == 1
            else f"torchrun --nproc_per_node {written} -m mipo.train --resume RUN"
        )
        raise ConfigError(
            f"--resume: {checkpoint} was written by {written} process(es) and this "
            f"launch has {processes}; the data position and random states are per "
            f"process, so resume with the same number: {launch}"
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
    if run.sharding.shards_parameters:  # check_resumable matched the two
        _restore_sharded(run, checkpoint)
    else:
        run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    progress = run.progress
    progress.step, progress.epoch = state["step"], state["epoch"]
    progress.consumed = state["consumed"]
    run.metrics.total_tokens = state.get("num_tokens", 0)
    index = min(run.accelerator.process_index, len(state["rng"]) - 1)
    set_rng_state(state["rng"][index])


def _progress_state(run: Any, rng: list[Any]) -> dict[str, Any]:
    """The trainer state of a sharded run (its optimiser state is sharded)."""
    progress = run.progress
    return {
        "scheduler": run.scheduler.state_dict(),
        "rng": rng,
        "step": progress.step,
        "epoch": progress.epoch,
        "consumed": progress.consumed,
        "num_tokens": run.metrics.tokens_seen(run.accelerator),
    }


def _save_sharded(run: Any, state: dict[str, Any]) -> Path:
    """``checkpoint-{step}`` of a sharded run, written atomically: every process
    writes its shards into a temporary directory, the main process adds the
    rest (and, at the run's last step, the consolidated weights) and renames
    it into place."""
    from mipo.training.sharding import release

    accelerator, progress = run.accelerator, run.progress
    release(run.models)  # the registered parameters are the shards again
    _check_finite_shards(run)
    final = run.run_dir / f"checkpoint-{progress.step}"
    tmp = run.run_dir / f".tmp-checkpoint-{progress.step}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    _save_trained_state(run, tmp / SHARDED_DIR)
    weights = full_weights(run) if progress.step >= progress.stop else None
    if accelerator.is_main_process:
        if weights is not None:
            run.models.policy.save_pretrained(str(tmp), state_dict=weights)
        run.tokenizer.save_pretrained(str(tmp))
        torch.save(state, tmp / TRAINER_STATE)
        for service in run.services:
            service.save(tmp)
        write_hub_files(run, tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        prune_checkpoints(run.run_dir, run.config.save_total_limit)
    accelerator.wait_for_everyone()
    progress.saved_at = progress.step
    return final


def _check_finite_shards(run: Any) -> None:
    """:func:`check_finite_weights` over every process's shards; all processes
    refuse together."""
    bad = [
        name.removeprefix("model.")
        for name, value in run.models.body.named_parameters()
        if not bool(torch.isfinite(_local(value)).all())
    ][:1]
    if any_process(run.accelerator, bool(bad)):
        name = gather_lists(run.accelerator, bad)[0]
        raise TrainingStopped(
            f"checkpoint-{run.progress.step} not written: parameter '{name}' holds "
            "non-finite values; the last good checkpoint is kept (lower the "
            "learning rate or check the data)"
        )


def _local(value: torch.Tensor) -> torch.Tensor:
    return value.to_local() if hasattr(value, "to_local") else value


def trained_modules(run: Any) -> nn.Module:
    """One module holding what a sharded checkpoint saves: the policy body
    (``policy.*``) and every service's modules (``services.{i}.{j}.*``)."""
    holder = nn.Module()
    holder.add_module("policy", run.models.body)
    services = nn.Module()
    for i, service in enumerate(run.services):
        owned = nn.ModuleList(service.modules())
        services.add_module(str(i), owned)
    holder.add_module("services", services)
    return holder


def _state_dicts(run: Any) -> tuple[nn.Module, Any, dict[str, Any], Any]:
    """``(holder, optimizer, state, options)``: the sharded state of the
    trainable parameters and of the optimiser, keyed by name (frozen parameters
    come from ``TrainConfig.model``)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_state_dict,
    )

    holder = trained_modules(run)
    optimizer = getattr(run.optimizer, "optimizer", run.optimizer)
    options = StateDictOptions(ignore_frozen_params=True)
    model, optim = get_state_dict(holder, optimizer, options=options)
    return holder, optimizer, {"model": model, "optimizer": optim}, options


def _save_trained_state(run: Any, path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    _, _, state, _ = _state_dicts(run)
    dcp.save(state, checkpoint_id=str(path))


def _restore_sharded(run: Any, checkpoint: Path) -> None:
    """Load the shards of ``checkpoint`` into the sharded policy, the service
    modules and the optimiser."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = checkpoint / SHARDED_DIR
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(
            f"{path}/.metadata: no sharded state in {checkpoint.name} (it was "
            f"written without --train.sharding=fsdp2, or not finished); resume "
            f"it with the run's own sharding"
        )
    holder, optimizer, state, options = _state_dicts(run)
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(
        holder,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=options,
    )


def full_weights(run: Any) -> dict[str, torch.Tensor]:
    """The policy's trainable weights gathered whole on the main process's CPU
    (empty on the others), named as ``save_pretrained`` expects; every process
    must call it."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
    )

    options = StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=True
    )
    weights = get_model_state_dict(run.models.body, options=options)
    tied = _tied_names(run.models.policy)
    named = {key.removeprefix("model."): value for key, value in weights.items()}
    return {key: value for key, value in named.items() if key not in tied}


def _tied_names(model: nn.Module) -> set[str]:
    """Names of parameters that are another parameter (a tied head): gathered
    copies no longer share storage, so ``save_pretrained`` would write them
    twice."""
    seen: set[int] = set()
    tied: set[str] = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if id(parameter) in seen:
            tied.add(name)
        seen.add(id(parameter))
    return tied


__all__ = [
    "SHARDED_DIR",
    "TRAINER_STATE",
    "check_finite_weights",
    "check_resumable",
    "full_weights",
    "restore",
    "rng_state",
    "save",
    "set_rng_state",
    "trained_modules",
]
