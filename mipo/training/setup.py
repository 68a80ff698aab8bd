"""Set a run up: recipe and settings, models, data, services, optimiser.

:func:`setup_run` returns a :class:`Run` holding everything the fit loop
(:mod:`mipo.training.loop`) reads; :func:`load_saved_run` rebuilds the models,
data and services of a saved run for evaluation and the tools. The services of a
run are the objective's (declared by its primitives) plus those its settings
declare (:func:`config_services`): which method runs is never asked.
"""

import dataclasses
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import mipo
from mipo.needs import Need
from mipo.objective import Objective
from mipo.services import AbstractServiceSpec, ReferenceSync
from mipo.training import checkpoint as checkpoints
from mipo.training.batching import BatchBuilder, check_served
from mipo.training.cli import OverrideError, jsonable, resolve
from mipo.training.command import print_warning
from mipo.training.config import TrainConfig, warmup_length
from mipo.training.distributed import leave_group_at_exit
from mipo.training.gold import resolve_gold
from mipo.training.interrupts import StopRequest
from mipo.training.loaders import RunData, load_run_data, make_loader
from mipo.training.metrics import MetricsAccumulator
from mipo.training.models import (
    check_reference_kind,
    default_device,
    load_models,
    load_tokenizer,
    resolve_model_path,
)
from mipo.training.precision import enable_tf32
from mipo.training.recipes import (
    Recipe,
    is_composed,
    load_recipe,
    recipe_of_run,
    save_composed,
)
from mipo.training.run_dir import (
    EvalScores,
    MetricsLog,
    RunLock,
    latest_checkpoint,
    new_run_dir,
    read_run_config,
    truncate_metrics,
    write_json,
)
from mipo.training.services import (
    Models,
    ReferenceCache,
    Service,
    ServiceSetup,
    build_services,
    check_specs,
)
from mipo.training.sharding import Replicated, Sharding, sharding_of


@dataclass(kw_only=True, eq=False)
class Progress:
    """Where a run is: optimiser steps done, epoch, micro-batches consumed in it."""

    total_steps: int
    stop: int
    steps_per_epoch: int
    step: int = 0
    epoch: int = 0
    consumed: int = 0
    saved_at: int = -1


@dataclass(kw_only=True, eq=False)
class Run:
    """A run set up for training (built by :func:`setup_run`)."""

    recipe: Recipe
    config: TrainConfig
    objective: Objective
    accelerator: Any
    models: Models
    services: tuple[Service, ...]
    builder: BatchBuilder
    optimizer: Any
    scheduler: Any
    data: RunData
    tokenizer: Any
    run_dir: Path
    progress: Progress
    metrics: MetricsAccumulator
    log: MetricsLog | None
    eval_loader: Any
    reference_calls_before: int = 0
    last_record: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    gold_reward: Any = None
    scores: EvalScores | None = None
    sharding: Sharding = field(default_factory=Replicated)
    lock: RunLock | None = None
    stop_request: StopRequest | None = None

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def service_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters of the services' optimiser groups."""
        return [
            p for s in self.services for g in s.parameter_groups() for p in g["params"]
        ]

    def clipped_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser steps: the policy's, then the services'."""
        return [*self.models.body.parameters(), *self.service_parameters()]


@dataclass(kw_only=True, eq=False)
class SavedRun:
    """A saved run rebuilt at its latest checkpoint (:func:`load_saved_run`)."""

    recipe: Recipe
    config: TrainConfig
    objective: Objective
    models: Models
    services: tuple[Service, ...]
    data: RunData
    tokenizer: Any
    device: torch.device
    checkpoint: Path
    eval_loader: Any


def config_services(
    config: TrainConfig, objective: Objective
) -> tuple[AbstractServiceSpec, ...]:
    """The objective's service specs plus those the run's settings declare: the
    precomputed reference cache and the moving (TR-DPO) reference."""
    specs = list(objective.services)
    if config.reference == "precomputed" and Need.REFERENCE_LOGPS in objective.needs:
        specs.append(ReferenceCache())
    if config.sync_ref_model:
        specs.append(
            ReferenceSync(
                alpha=config.ref_model_mixup_alpha, every=config.ref_model_sync_steps
            )
        )
    return tuple(specs)


def check_run(
    config: TrainConfig, objective: Objective
) -> tuple[AbstractServiceSpec, ...]:
    """Refuse, before any model is loaded, a run its settings cannot serve;
    returns its service specs."""
    specs = config_services(config, objective)
    sharding_of(config).check(config)
    check_reference_kind(config, objective.needs)
    check_specs(specs, config)
    check_served(objective.needs, frozenset().union(*(s.provides for s in specs)))
    return specs


def resolve_run(
    recipe: str | Path | Recipe | None, overrides: dict[str, Any], resume: Any
) -> tuple[Recipe, dict[str, Any], Path | None]:
    """The recipe and merged overrides; with ``resume`` those of the saved run
    (a composed objective comes from the run directory)."""
    if resume is None:
        if recipe is None:
            raise OverrideError("no recipe given (python -m mipo.train RECIPE.py)")
        return _recipe(recipe), dict(overrides), None
    run_dir = Path(resume)
    saved = read_run_config(run_dir)
    merged = {**saved["overrides"], **overrides}
    found = recipe_of_run(run_dir, saved) if recipe is None else _recipe(recipe)
    return found, merged, run_dir


def _recipe(recipe: str | Path | Recipe) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def setup_run(
    recipe: str | Path | Recipe | None,
    overrides: dict[str, Any],
    *,
    resume: str | Path | None = None,
    stop_after: int | None = None,
) -> Run:
    """Everything a training run needs, restored from its latest checkpoint when
    resuming.

    Everything the user gave is checked before a run directory exists and
    before the model loads: the recipe and settings, the gold reward, the
    checkpoint to resume, and the whole data set (read with the tokenizer alone,
    weight columns checked against the objective's needs). A resumed run's
    directory is locked first (:class:`~mipo.training.run_dir.RunLock`); a new
    one right after it is made. If setting up fails, the lock is released and a
    run directory made here is removed.
    """
    found, merged, resume_dir = resolve_run(recipe, overrides, resume)
    config, objective_kwargs, objective = resolve(found, merged)
    specs = check_run(config, objective)
    gold_reward = resolve_gold(config.dataset, config.gold)
    accelerator = _accelerator(config)
    sharding_of(config).check_processes(accelerator.num_processes)
    enable_tf32(accelerator.device, config.tf32)
    checkpoint = latest_checkpoint(resume_dir) if resume_dir is not None else None
    if checkpoint is not None:
        checkpoints.check_resumable(
            checkpoint,
            accelerator.num_processes,
            sharded_now=sharding_of(config).shards_parameters,
        )
    lock = _lock(accelerator, resume_dir)
    made: Path | None = None
    try:
        data = _validated_data(config, objective, specs, accelerator)
        parts = _build(found, config, objective, specs, accelerator, checkpoint, data)
        if resume_dir is None:
            made = _new_run_dir(accelerator, config, found)
            lock = _lock(accelerator, made)
            if accelerator.is_main_process:
                record = {"objective_kwargs": objective_kwargs, **parts.record}
                _write_config(
                    made, found, merged, config, objective, record, accelerator
                )
        parts = dataclasses.replace(parts, run_dir=resume_dir or made, lock=lock)
        return _assemble(parts, checkpoint, stop_after, gold_reward)
    except BaseException:
        if lock is not None:
            lock.release()
        if made is not None and accelerator.is_main_process:
            shutil.rmtree(made, ignore_errors=True)
        raise


def _lock(accelerator: Any, run_dir: Path | None) -> RunLock | None:
    """The run directory's lock, taken by the main process."""
    if run_dir is None or not accelerator.is_main_process:
        return None
    return RunLock(run_dir)


def data_needs(
    objective: Objective, specs: tuple[AbstractServiceSpec, ...]
) -> frozenset[Need]:
    """The objective's needs no service of the run fills (the data must)."""
    provided = frozenset().union(*(spec.provides for spec in specs))
    return objective.needs - provided


def _validated_data(
    config: TrainConfig,
    objective: Objective,
    specs: tuple[AbstractServiceSpec, ...],
    accelerator: Any,
) -> RunData:
    """The whole data set, checked and encoded with the tokenizer alone (the
    model is not loaded yet); warnings printed by the main process."""
    tokenizer = load_tokenizer(resolve_model_path(config.model))
    return load_run_data(
        config,
        tokenizer,
        needs=data_needs(objective, specs),
        warn=print_warning if accelerator.is_main_process else None,
    )


def _build(
    recipe: Recipe,
    config: TrainConfig,
    objective: Objective,
    specs: tuple[AbstractServiceSpec, ...],
    accelerator: Any,
    checkpoint: Path | None,
    data: RunData,
) -> "_Parts":
    """Models and services, on the accelerator's device."""
    from accelerate.utils import set_seed

    set_seed(config.seed)
    # sharded weights are loaded into the sharded model (checkpoint.restore)
    sharded = sharding_of(config).shards_parameters
    policy, reference, tokenizer, model_path = load_models(
        config,
        objective.needs,
        checkpoint=None if sharded else checkpoint,
        device=accelerator.device,
    )
    device = accelerator.device
    policy.to(device)
    if reference is not None:
        reference.to(device)
    models = Models(
        policy=policy,
        reference=reference,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    services = build_services(
        specs,
        ServiceSetup(
            config=config,
            models=models,
            device=device,
            checkpoint=checkpoint,
            data=data,
            model_path=model_path,
            accelerator=accelerator,
        ),
    )
    return _Parts(
        recipe=recipe,
        config=config,
        objective=objective,
        accelerator=accelerator,
        models=models,
        services=services,
        data=data,
        tokenizer=tokenizer,
        record={"model_path": model_path},
    )


@dataclass(frozen=True, kw_only=True)
class _Parts:
    """What :func:`setup_run` built before the optimiser."""

    recipe: Recipe
    config: TrainConfig
    objective: Objective
    accelerator: Any
    models: Models
    services: tuple[Service, ...]
    data: RunData
    tokenizer: Any
    record: dict[str, Any] = field(default_factory=dict)
    run_dir: Path = Path()
    lock: RunLock | None = None


def _assemble(
    parts: _Parts, checkpoint: Path | None, stop_after: int | None, gold_reward: Any
) -> Run:
    """Optimiser, schedule, progress and logging around the built parts."""
    config, accelerator, models = parts.config, parts.accelerator, parts.models
    data, services, run_dir = parts.data, parts.services, parts.run_dir
    steps = _schedule_length(config, len(data.train), accelerator.num_processes)
    sharding = sharding_of(config)
    models = sharding.shard(accelerator, models, config)
    groups: list[dict[str, Any]] = [
        {"params": [p for p in models.policy.parameters() if p.requires_grad]}
    ]
    for service in services:
        groups += service.parameter_groups()
    optimizer = _optimizer(config, groups)
    scheduler = _scheduler(config, optimizer, steps[0])
    models, optimizer = sharding.prepare(accelerator, models, optimizer)
    stop = steps[0] if stop_after is None else min(stop_after, steps[0])
    run = Run(
        recipe=parts.recipe,
        config=config,
        objective=parts.objective,
        accelerator=accelerator,
        models=models,
        services=services,
        builder=BatchBuilder(
            needs=parts.objective.needs,
            services=services,
            chunk_size=config.logps_chunk_size or None,
            padding_free=config.padding_free,
        ),
        optimizer=optimizer,
        scheduler=scheduler,
        data=data,
        tokenizer=parts.tokenizer,
        run_dir=run_dir,
        progress=Progress(total_steps=steps[0], stop=stop, steps_per_epoch=steps[1]),
        metrics=MetricsAccumulator(accelerator.device),
        log=(
            MetricsLog(run_dir, config.report_to, resume_step=_step_of(checkpoint))
            if accelerator.is_main_process
            else None
        ),
        eval_loader=_eval_loader(config, data, models.pad_token_id),
        reference_calls_before=getattr(models.reference, "calls", 0),
        resumed=checkpoint is not None,
        gold_reward=gold_reward,
        scores=EvalScores(run_dir) if accelerator.is_main_process else None,
        sharding=sharding,
        lock=parts.lock,
    )
    if checkpoint is not None:
        checkpoints.restore(run, checkpoint)
        run.progress.saved_at = run.progress.step  # that checkpoint exists
        if accelerator.is_main_process:
            truncate_metrics(run_dir, run.progress.step)
    run.metrics.reset(run.progress.step)
    return run


def _step_of(checkpoint: Path | None) -> int | None:
    return None if checkpoint is None else int(checkpoint.name.split("-")[-1])


def load_saved_run(run_dir: Path) -> SavedRun:
    """The models, data and services of a saved run at its latest checkpoint
    (nothing is created: a missing cache or service file is an error)."""
    saved = read_run_config(run_dir)
    recipe = recipe_of_run(run_dir, saved)
    config, _, objective = resolve(recipe, saved["overrides"])
    specs = check_run(config, objective)
    checkpoint = latest_checkpoint(run_dir)
    _check_consolidated(checkpoint)
    device = default_device()
    enable_tf32(device, config.tf32)
    policy, reference, tokenizer, model_path = load_models(
        config, objective.needs, checkpoint=checkpoint, device=device
    )
    policy.to(device)
    if reference is not None:
        reference.to(device)
    data = load_run_data(config, tokenizer)
    models = Models(
        policy=policy,
        reference=reference,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    setup = ServiceSetup(
        config=config,
        models=models,
        device=device,
        checkpoint=checkpoint,
        data=data,
        model_path=model_path,
        training=False,
    )
    return SavedRun(
        recipe=recipe,
        config=config,
        objective=objective,
        models=models,
        services=build_services(specs, setup),
        data=data,
        tokenizer=tokenizer,
        device=device,
        checkpoint=checkpoint,
        eval_loader=_eval_loader(config, data, tokenizer.pad_token_id),
    )


def _check_consolidated(checkpoint: Path) -> None:
    """Refuse a checkpoint that holds only sharded weights (an intermediate
    checkpoint of a ``sharding="fsdp2"`` run)."""
    whole = ("config.json", "adapter_config.json")
    if (checkpoint / checkpoints.SHARDED_DIR).is_dir() and not any(
        (checkpoint / name).is_file() for name in whole
    ):
        raise FileNotFoundError(
            f"{checkpoint}: holds only sharded weights ({checkpoints.SHARDED_DIR}/); "
            f"the last checkpoint of a sharded run holds consolidated ones: resume "
            f"the run to its end (torchrun ... --resume RUN_DIR)"
        )


def _accelerator(config: TrainConfig) -> Any:
    from accelerate import Accelerator

    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("true", "1", "yes"):
        # accelerate's FSDP plugin would shard the policy only, and on CPU it
        # silently falls back to plain DDP
        raise ValueError(
            "accelerate's FSDP config is not used by mipo: launch with torchrun (or "
            "docs/accelerate/multi_gpu.yaml) and pass --train.sharding=fsdp2"
        )
    accelerator = Accelerator(
        # Without a GPU, cpu=True lets torchrun / accelerate launch start gloo DDP.
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if config.precision == "bf16" else "no",
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )
    leave_group_at_exit()
    return accelerator


def _eval_loader(config: TrainConfig, data: RunData, pad_token_id: int) -> Any:
    return make_loader(
        data.eval,
        batch_size=config.batch_size,
        pad_token_id=pad_token_id,
        offset=len(data.train),
    )


def _schedule_length(config: TrainConfig, pairs: int, world: int) -> tuple[int, int]:
    """``(total optimiser steps, optimiser steps per epoch)``."""
    micro_per_epoch = math.ceil(pairs / (config.batch_size * world))
    steps_per_epoch = math.ceil(micro_per_epoch / config.gradient_accumulation_steps)
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    return total, steps_per_epoch


def _optimizer(config: TrainConfig, groups: list[dict[str, Any]]) -> Any:
    kind = torch.optim.RMSprop if config.optimizer == "rmsprop" else torch.optim.AdamW
    return kind(groups, lr=config.learning_rate, weight_decay=config.weight_decay)


def _scheduler(config: TrainConfig, optimizer: Any, total_steps: int) -> Any:
    from transformers import get_scheduler

    warmup = warmup_length(config, total_steps)
    if warmup > total_steps:
        # Said out loud: a short run would otherwise never reach the peak rate.
        print(
            f"note: warmup of {warmup} steps is longer than the run ({total_steps} "
            f"steps); warming up over {total_steps} steps instead"
        )
    name = "cosine" if config.lr_schedule == "cosine" else "constant_with_warmup"
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=min(warmup, total_steps),
        num_training_steps=total_steps,
    )


def _new_run_dir(accelerator: Any, config: TrainConfig, recipe: Recipe) -> Path:
    """A fresh run directory, made by the main process and broadcast."""
    from accelerate.utils import broadcast_object_list

    made = (
        new_run_dir(config.output_dir, recipe.name)
        if accelerator.is_main_process
        else None
    )
    box = [str(made) if made else ""]
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    return Path(box[0])


def _write_config(
    run_dir: Path,
    recipe: Recipe,
    merged: dict[str, Any],
    config: TrainConfig,
    objective: Objective,
    record: dict[str, Any],
    accelerator: Any,
) -> None:
    """``config.json`` (and, for a composed objective, ``objective.pkl``)."""
    write_json(
        run_dir / "config.json",
        {
            "recipe": str(recipe.path),
            "recipe_name": recipe.name,
            "overrides": {k: jsonable(v) for k, v in merged.items()},
            "train": dataclasses.asdict(config),
            "objective_kwargs": {
                k: jsonable(v) for k, v in record["objective_kwargs"].items()
            },
            "objective": repr(objective),
            "needs": sorted(n.value for n in objective.needs),
            "services": [repr(s) for s in config_services(config, objective)],
            "model_path": record["model_path"],
            "world_size": accelerator.num_processes,
            "mipo_version": mipo.__version__,
        },
    )
    if is_composed(recipe):
        try:
            save_composed(recipe, run_dir)
        except TypeError as error:
            print(
                f"note: {error}; evaluating or resuming this run will need the recipe "
                f"passed again",
                file=sys.stderr,
            )


__all__ = [
    "Progress",
    "Run",
    "SavedRun",
    "check_run",
    "config_services",
    "data_needs",
    "load_saved_run",
    "resolve_run",
    "setup_run",
]
