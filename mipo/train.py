"""``python -m mipo.train RECIPE.py [--train.FIELD=VALUE] [--objective.NAME=VALUE]``.

The loop is generic over :class:`~mipo.objective.Objective`: it reads
``objective.needs`` and supplies exactly those inputs (:mod:`mipo.forward`);
it never asks which method it runs. It runs on accelerate, so the same command
works on one CPU, one GPU, or under ``accelerate launch`` (DDP, FSDP, DeepSpeed;
see ``docs/accelerate/``).

Python API::

    from mipo.train import train
    result = train("recipes/dpo.py", overrides={"train.max_steps": 2})
    result.run_dir, result.metrics, result.eval
"""

import contextlib
import dataclasses
import json
import math
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, final

import numpy as np
import torch

import mipo
from mipo.cli import (
    OverrideError,
    help_text,
    jsonable,
    parse_command_line,
    resolve,
    with_preset,
)
from mipo.config import TrainConfig
from mipo.errors import NonFiniteLossError
from mipo.eval import evaluate_pairs
from mipo.forward import CausalLMBody, build_pair_batch, count_tokens
from mipo.gold import gold_scores, resolve_gold
from mipo.learned_prior import find_learned_prior, fit_prior_to_policy
from mipo.masks import find_mask_source
from mipo.model import load_models
from mipo.needs import Need
from mipo.objective import Objective
from mipo.prepare import (
    cache_key,
    compute_reference_logps,
    load_run_data,
    lookup_reference,
    make_loader,
)
from mipo.recipes import Recipe, load_recipe
from mipo.run import (
    EvalScores,
    MetricsLog,
    latest_checkpoint,
    new_run_dir,
    save_checkpoint,
    write_json,
    write_plots,
)
from mipo.stats import bootstrap_mean, interval_fields
from mipo.summary import summary


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


def anchor_sampling_of(objective: Objective) -> Any:
    """The sampling settings of the term that needs a generated anchor, if any."""
    settings = [
        t.term.sampling for t in objective.active_terms if Need.ANCHOR in t.term.needs
    ]
    if len(set(settings)) > 1:
        raise ValueError(
            "the objective's terms ask for anchors with different sampling settings"
        )
    return settings[0] if settings else None


def _optimizer(config: TrainConfig, parameters: list[Any]) -> Any:
    if config.optimizer == "rmsprop":
        return torch.optim.RMSprop(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
    return torch.optim.AdamW(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay
    )


def _scheduler(config: TrainConfig, optimizer: Any, total_steps: int) -> Any:
    from transformers import get_scheduler

    warmup = config.warmup_steps or math.ceil(config.warmup_ratio * total_steps)
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


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _resolve_run(
    recipe: str | Path | Recipe | None,
    overrides: dict[str, Any],
    resume: str | Path | None,
) -> tuple[Any, dict[str, Any], Path | None]:
    """The recipe and merged overrides; with ``resume`` those of the saved run."""
    if resume is None:
        if recipe is None:
            raise OverrideError("no recipe given (python -m mipo.train RECIPE.py)")
        if isinstance(recipe, Recipe):
            return recipe, dict(overrides), None
        return load_recipe(recipe), dict(overrides), None
    run_dir = Path(resume)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"--resume {run_dir}: no config.json there")
    saved = json.loads(config_path.read_text())
    merged = {**saved["overrides"], **overrides}
    if isinstance(recipe, Recipe):
        return recipe, merged, run_dir
    return load_recipe(recipe or saved["recipe"]), merged, run_dir


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
            :class:`~mipo.recipes.Recipe` built in Python with
            :func:`~mipo.recipes.recipe_from`.
        overrides: dotted keys, e.g. ``{"train.max_steps": 2, "objective.beta": 0.2}``.
        resume: a run directory; continues from its latest checkpoint with the
            same recipe and overrides (``overrides`` given here win).
        stop_after: stop after this many optimiser steps in total, as if the run
            were interrupted (the schedule still follows the full length).
        progress: show the tqdm progress bar.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    recipe_obj, merged, resume_dir = _resolve_run(recipe, overrides or {}, resume)
    config, objective_kwargs, objective = resolve(recipe_obj, merged)
    needs = objective.needs
    accelerator = Accelerator(
        # Without a GPU, cpu=True lets torchrun / accelerate launch start gloo DDP.
        cpu=not torch.cuda.is_available(),
        mixed_precision="bf16" if config.precision == "bf16" else "no",
        gradient_accumulation_steps=config.gradient_accumulation_steps,
    )
    main_process = accelerator.is_main_process
    set_seed(config.seed)
    checkpoint = latest_checkpoint(resume_dir) if resume_dir is not None else None
    policy, reference, tokenizer, model_path = load_models(
        config, needs, checkpoint=checkpoint
    )
    device = accelerator.device
    data = load_run_data(config, tokenizer)
    gold_reward = resolve_gold(config.dataset, config.gold)
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    chunk_size = config.logps_chunk_size or None
    anchor_sampling = anchor_sampling_of(objective)
    mask_model = _mask_model(objective, policy, device, checkpoint)
    prior_settings = find_learned_prior(objective)
    prior_model = _prior_model(prior_settings, policy, device, checkpoint)
    prior_metrics: dict[str, float] = {}

    policy.to(device)
    reference_cache = None
    if config.reference == "precomputed" and Need.REFERENCE_LOGPS in needs:
        reference_cache = _reference_cache(
            config, model_path, data, policy, accelerator, chunk_size, pad_id
        )
    if reference is not None:
        reference.to(device)

    if resume_dir is None:
        run_dir = (
            new_run_dir(config.output_dir, recipe_obj.name) if main_process else None
        )
        run_dir = Path(_broadcast(accelerator, str(run_dir) if run_dir else ""))
    else:
        run_dir = resume_dir
    if main_process and resume_dir is None:
        write_json(
            run_dir / "config.json",
            {
                "recipe": str(recipe_obj.path),
                "recipe_name": recipe_obj.name,
                "overrides": {k: jsonable(v) for k, v in merged.items()},
                "train": dataclasses.asdict(config),
                "objective_kwargs": {
                    k: jsonable(v) for k, v in objective_kwargs.items()
                },
                "objective": repr(objective),
                "needs": sorted(n.value for n in needs),
                "model_path": model_path,
                "world_size": accelerator.num_processes,
                "mipo_version": mipo.__version__,
            },
        )

    world = accelerator.num_processes
    micro_per_epoch = math.ceil(len(data.train) / (config.batch_size * world))
    steps_per_epoch = math.ceil(micro_per_epoch / config.gradient_accumulation_steps)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))

    trainable = [p for p in policy.parameters() if p.requires_grad]
    mask_parameters = [] if mask_model is None else [p for p in mask_model.parameters()]
    groups: list[Any] = [{"params": trainable}]
    if mask_parameters:
        # SparsePO's mask networks have their own weight decay (mask_weight_decay).
        source = find_mask_source(objective)
        groups.append({"params": mask_parameters, "weight_decay": source.weight_decay})
    optimizer = _optimizer(config, groups)
    scheduler = _scheduler(config, optimizer, total_steps)
    body, optimizer = accelerator.prepare(CausalLMBody(policy), optimizer)

    step, epoch, consumed = 0, 0, 0
    if checkpoint is not None:
        state = torch.load(
            checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False
        )
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, consumed = state["step"], state["epoch"], state["consumed"]
        _set_rng_state(
            state["rng"][min(accelerator.process_index, len(state["rng"]) - 1)]
        )

    eval_loader = make_loader(
        data.eval,
        batch_size=config.batch_size,
        pad_token_id=pad_id,
        offset=len(data.train),
    )
    unwrapped = accelerator.unwrap_model(body).model

    scores = EvalScores(run_dir) if main_process else None

    def run_eval(at_step: int) -> dict[str, Any]:
        result: dict[str, Any] = {"step": at_step}
        if gold_reward is not None and main_process and data.eval_records:
            gold = gold_scores(
                unwrapped,
                tokenizer,
                data.eval_records,
                gold_reward,
                device=device,
                max_new_tokens=config.eval_max_new_tokens,
            )
            scores.add("gold", at_step, gold)
            result["eval/gold_prompts"] = len(gold)
            result.update(interval_fields("eval/gold_reward", bootstrap_mean(gold)))
            before = scores.get("gold", 0)
            if before is not None and at_step > 0:
                gains = [a - b for a, b in zip(gold, before, strict=True)]
                result["eval/gold_reward_before"] = sum(before) / len(before)
                result.update(interval_fields("eval/gold_gain", bootstrap_mean(gains)))
        if not data.eval or at_step == 0:
            return result
        correct: list[float] = []
        result |= evaluate_pairs(
            objective,
            unwrapped,
            reference,
            eval_loader,
            device=device,
            pad_token_id=pad_id,
            eos_token_id=eos_id,
            chunk_size=chunk_size,
            reference_cache=reference_cache,
            anchor_sampling=anchor_sampling,
            mask_model=mask_model,
            prior_model=prior_model,
            correct=correct,
        )
        if scores is not None:
            scores.add("correct", at_step, correct)
        return result

    metrics_log = MetricsLog(run_dir) if main_process else None
    if checkpoint is None and gold_reward is not None and data.eval_records:
        before_record = run_eval(0)
        if metrics_log is not None:
            metrics_log.log(before_record)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total_steps,
        initial=step,
        desc=recipe_obj.name,
        disable=not (progress and main_process),
        dynamic_ncols=True,
    )
    sums: dict[str, float] = {}
    count = 0
    tokens = 0
    last_log_time, last_log_step = time.perf_counter(), step
    last_record: dict[str, Any] = {}
    stop = total_steps if stop_after is None else min(stop_after, total_steps)
    accum = config.gradient_accumulation_steps
    in_group = 0
    reference_calls_before = 0 if reference is None else reference.calls

    def state_dict() -> dict[str, Any]:
        rng = accelerator.gather_for_metrics([_rng_state()], use_gather_object=True)
        return {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng,
            "step": step,
            "epoch": epoch,
            "consumed": consumed,
        }

    def checkpoint_now() -> None:
        state = state_dict()
        # get_state_dict gathers sharded weights (FSDP, ZeRO-3); every process joins.
        weights = {
            key.removeprefix("model."): value
            for key, value in accelerator.get_state_dict(body).items()
        }
        if main_process:
            save_checkpoint(
                run_dir,
                step,
                model=unwrapped,
                tokenizer=tokenizer,
                state=state,
                weights=weights,
            )
            if mask_model is not None:
                _save_mask_model(mask_model, run_dir / f"checkpoint-{step}")
            if prior_model is not None:
                _save_module(prior_model, run_dir / f"checkpoint-{step}", PRIOR_FILE)
        accelerator.wait_for_everyone()

    saved_at = -1
    try:
        while step < stop:
            loader = accelerator.prepare_data_loader(
                make_loader(
                    data.train,
                    batch_size=config.batch_size,
                    pad_token_id=pad_id,
                    shuffle_seed=config.seed + epoch,
                ),
                device_placement=False,
            )
            total_micro = len(loader)
            if consumed:
                loader = accelerator.skip_first_batches(loader, consumed)
            for batch in loader:
                consumed += 1
                in_group += 1
                last_micro = consumed == total_micro
                sync = in_group == accum or last_micro
                batch = batch.to(device)
                cached = (
                    None
                    if reference_cache is None
                    else lookup_reference(reference_cache, batch)
                )
                if (
                    prior_model is not None
                    and in_group == 1
                    and step % prior_settings.prior_update_every == 0
                ):
                    # the Blahut-Arimoto prior step, outside J
                    # (docs/objective.md#the-prior-step-blahut-arimoto)
                    prior_metrics = fit_prior_to_policy(
                        prior_model,
                        prior_settings,
                        unwrapped,
                        reference,
                        batch.tensors.prompt_input_ids,
                        batch.tensors.prompt_attention_mask,
                        pad_token_id=pad_id,
                        eos_token_id=eos_id,
                    )
                context = (
                    contextlib.nullcontext() if sync else accelerator.no_sync(body)
                )
                with context:
                    with accelerator.autocast():
                        pair_batch = build_pair_batch(
                            needs,
                            unwrapped,
                            reference,
                            batch.tensors,
                            policy_body=body,
                            chunk_size=chunk_size,
                            precomputed_reference=cached,
                            anchor_sampling=anchor_sampling,
                            pad_token_id=pad_id,
                            eos_token_id=eos_id,
                            mask_model=mask_model,
                            prior_model=prior_model,
                            padding_free=config.padding_free,
                        )
                    try:
                        out = objective(pair_batch)
                    except NonFiniteLossError as error:
                        raise NonFiniteLossError(
                            f"step {step + 1} (epoch {epoch}, micro-batch {consumed}): "
                            f"{error}"
                        ) from error
                    accelerator.backward(out.loss)
                for key, value in out.metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(value)
                count += 1
                tokens += count_tokens(batch.tensors)
                if not sync:
                    continue
                in_group = 0
                clip = config.max_grad_norm if config.max_grad_norm > 0 else math.inf
                grad_norm = accelerator.clip_grad_norm_(
                    [*body.parameters(), *mask_parameters], clip
                )
                learning_rate = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                if step % config.logging_steps == 0 or step == stop:
                    last_record = _log(
                        accelerator,
                        sums,
                        count,
                        tokens,
                        time.perf_counter() - last_log_time,
                        step=step,
                        steps=step - last_log_step,
                        epoch=step / steps_per_epoch,
                        learning_rate=learning_rate,
                        grad_norm=float(grad_norm),
                        device=device,
                    )
                    last_record.update(prior_metrics)
                    if metrics_log is not None:
                        metrics_log.log(last_record)
                    accuracy = last_record.get("rewards/accuracies", math.nan)
                    bar.set_postfix(
                        {
                            "loss": f"{last_record['loss']:.4f}",
                            "rewards/accuracies": f"{accuracy:.2f}",
                        }
                    )
                    sums, count, tokens = {}, 0, 0
                    last_log_time, last_log_step = time.perf_counter(), step
                if config.eval_steps and step % config.eval_steps == 0 and step < stop:
                    eval_metrics = run_eval(step)
                    if metrics_log is not None and len(eval_metrics) > 1:
                        metrics_log.log(eval_metrics)
                    last_log_time = time.perf_counter()  # step times leave eval out
                if config.save_steps and step % config.save_steps == 0:
                    checkpoint_now()
                    saved_at = step
                if step >= stop:
                    break
            else:
                epoch += 1
                consumed = 0
                continue
            if consumed == total_micro:
                epoch += 1
                consumed = 0
    except NonFiniteLossError:
        bar.close()
        if metrics_log is not None:
            metrics_log.close()
            write_plots(run_dir)
        raise
    bar.close()
    if saved_at != step:
        checkpoint_now()
    result_eval: dict[str, Any] = {}
    if step >= total_steps:
        result_eval = run_eval(step)
        if main_process:
            write_json(run_dir / "eval.json", result_eval)
            if metrics_log is not None:
                metrics_log.log(result_eval)
    if metrics_log is not None:
        metrics_log.close()
        write_plots(run_dir)
        if result_eval:
            print(summary(recipe_obj.name, config, run_dir, result_eval))
        print(f"outputs: {run_dir}")
    reference_forwards = (
        0 if reference is None else reference.calls - reference_calls_before
    )
    return TrainResult(
        run_dir=run_dir,
        step=step,
        metrics=last_record,
        eval=result_eval,
        reference_forwards=reference_forwards,
    )


MASK_MODEL_FILE = "mask_model.safetensors"
"""The learned mask model's weights inside a ``checkpoint-N`` directory."""


def _mask_model(
    objective: Objective,
    policy: torch.nn.Module,
    device: torch.device,
    checkpoint: Path | None,
) -> Any:
    """The mask model the objective's mask source asks for (``None`` without one),
    restored from ``checkpoint`` when resuming."""
    source = find_mask_source(objective)
    if source is None:
        return None
    config = policy.config
    model = source.build_model(
        hidden_size=config.hidden_size, num_layers=config.num_hidden_layers
    )
    if model is None:
        return None
    if checkpoint is not None and any(True for _ in model.parameters()):
        from safetensors.torch import load_file

        path = Path(checkpoint) / MASK_MODEL_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the run's mask model is missing")
        model.load_state_dict(load_file(str(path)))
    model.train()
    return model.to(device)


def _save_mask_model(model: torch.nn.Module, checkpoint: Path) -> None:
    _save_module(model, checkpoint, MASK_MODEL_FILE)


def _save_module(model: torch.nn.Module, checkpoint: Path, name: str) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if state:
        from safetensors.torch import save_file

        save_file(state, str(checkpoint / name))


PRIOR_FILE = "prior_model.safetensors"
"""The learned prior's bias inside a ``checkpoint-N`` directory."""


def _prior_model(
    settings: Any,
    policy: torch.nn.Module,
    device: torch.device,
    checkpoint: Path | None,
) -> Any:
    """The learned prior (``None`` without one), restored when resuming."""
    if settings is None:
        return None
    from mipo.learned_prior import LogitBiasPrior

    vocab = policy.get_output_embeddings().weight.shape[0]
    model = LogitBiasPrior(vocab)
    if checkpoint is not None:
        from safetensors.torch import load_file

        path = Path(checkpoint) / PRIOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the run's learned prior is missing")
        model.load_state_dict(load_file(str(path)))
    return model.to(device)


def _broadcast(accelerator: Any, value: str) -> str:
    from accelerate.utils import broadcast_object_list

    box = [value]
    if accelerator.num_processes > 1:
        broadcast_object_list(box, from_process=0)
    return box[0]


def _log(
    accelerator: Any,
    sums: dict[str, float],
    count: int,
    tokens: int,
    seconds: float,
    *,
    step: int,
    steps: int,
    epoch: float,
    learning_rate: float,
    grad_norm: float,
    device: torch.device,
) -> dict[str, Any]:
    """Average the metrics over micro-batches, then over processes."""
    keys = sorted(sums)
    values = torch.tensor(
        [sums[k] / max(count, 1) for k in keys] + [float(tokens)],
        dtype=torch.float64,
        device=device,
    )
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, reduction="sum")
        values[:-1] /= accelerator.num_processes
    averaged = values.tolist()
    record: dict[str, Any] = {"step": step, "epoch": round(epoch, 4)}
    record.update(dict(zip(keys, averaged[:-1], strict=True)))
    record["learning_rate"] = learning_rate
    record["grad_norm"] = grad_norm
    record["tokens_per_second"] = averaged[-1] / max(seconds, 1e-9)
    record["num_tokens"] = int(averaged[-1])
    record["step_seconds"] = seconds / max(steps, 1)
    record["peak_memory_mb"] = _peak_memory_mb(device)
    return record


def _reference_cache(
    config: TrainConfig,
    model_path: str,
    data: Any,
    policy: torch.nn.Module,
    accelerator: Any,
    chunk_size: int | None,
    pad_id: int,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Load or compute the cached reference token log-probs (main process writes)."""
    key = cache_key(config, model_path, data)
    path = Path(config.output_dir) / ".reference_cache" / f"{key}.pt"
    if not path.is_file():
        if accelerator.is_main_process:
            cache = compute_reference_logps(
                policy,
                data,
                batch_size=config.batch_size,
                pad_token_id=pad_id,
                device=accelerator.device,
                chunk_size=chunk_size,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(cache, tmp)
            tmp.replace(path)
        accelerator.wait_for_everyone()
    return torch.load(path, map_location="cpu", weights_only=False)


def evaluate_run(run_dir: str | Path, *, gold: str = "") -> dict[str, Any]:
    """Re-run the evaluation of a saved run on its latest checkpoint; writes
    ``eval.json`` there.

    Args:
        run_dir: the run directory.
        gold: a ``module:function`` gold reward (default: the run's own).
    """
    run_dir = Path(run_dir)
    saved = json.loads((run_dir / "config.json").read_text())
    recipe = load_recipe(saved["recipe"])
    config, _, objective = resolve(recipe, saved["overrides"])
    gold_reward = resolve_gold(config.dataset, gold or config.gold)
    checkpoint = latest_checkpoint(run_dir)
    policy, reference, tokenizer, model_path = load_models(
        config, objective.needs, checkpoint=checkpoint
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    policy.to(device)
    if reference is not None:
        reference.to(device)
    data = load_run_data(config, tokenizer)
    cache = None
    if config.reference == "precomputed" and Need.REFERENCE_LOGPS in objective.needs:
        key = cache_key(config, model_path, data)
        path = Path(config.output_dir) / ".reference_cache" / f"{key}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the run's reference cache is gone")
        cache = torch.load(path, map_location="cpu", weights_only=False)
    loader = make_loader(
        data.eval,
        batch_size=config.batch_size,
        pad_token_id=tokenizer.pad_token_id,
        offset=len(data.train),
    )
    result: dict[str, Any] = {}
    if data.eval:
        result = evaluate_pairs(
            objective,
            policy,
            reference,
            loader,
            device=device,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            chunk_size=config.logps_chunk_size or None,
            reference_cache=cache,
            anchor_sampling=anchor_sampling_of(objective),
            mask_model=_mask_model(objective, policy, device, checkpoint),
            prior_model=_prior_model(
                find_learned_prior(objective), policy, device, checkpoint
            ),
        )
    if gold_reward is not None and data.eval_records:
        after = gold_scores(
            policy,
            tokenizer,
            data.eval_records,
            gold_reward,
            device=device,
            max_new_tokens=config.eval_max_new_tokens,
        )
        result["eval/gold_prompts"] = len(after)
        result.update(interval_fields("eval/gold_reward", bootstrap_mean(after)))
    result["checkpoint"] = checkpoint.name
    write_json(run_dir / "eval.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    args = sys.argv[1:] if argv is None else argv
    try:
        command = parse_command_line(args)
        if command.show_help:
            recipe = load_recipe(command.recipe) if command.recipe else None
            print(help_text(recipe))
            return
        overrides = command.overrides
        if command.preset is not None:
            recipe = load_recipe(command.recipe) if command.recipe else None
            if recipe is None:
                raise OverrideError("--preset needs a recipe")
            overrides = with_preset(recipe, command.preset, overrides)
        train(command.recipe, overrides, resume=command.resume)
    except (OverrideError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()


__all__ = ["TrainResult", "evaluate_run", "main", "train"]
