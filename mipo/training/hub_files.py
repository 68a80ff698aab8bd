"""What a Hugging Face user looks for in a checkpoint besides the weights.

* ``trainer_state.json``, in the shape of transformers' ``TrainerState``
  (``TrainerState.load_from_json`` reads it): the step, epoch, schedule and a
  ``log_history`` with every logged training step and every evaluation up to
  the checkpoint. Training records keep TRL's metric names; evaluation keys are
  prefixed ``eval_`` as the Trainer writes them (``eval/loss`` -> ``eval_loss``).
* A model card, ``README.md``: front matter for the Hub (base model, library,
  tags), then the method, data, settings, the held-out results at that step and
  how to load the weights.

Both are written by the main process into ``checkpoint-N``, each atomically; the
last checkpoint's are written again after the final evaluation, so they hold it.
They describe the run and are never read back by mipo (``trainer_state.pt``
holds what resuming needs).
"""

import math
import os
from pathlib import Path
from typing import Any

import mipo
from mipo.training.run_dir import read_metrics, write_json

HF_STATE_FILE = "trainer_state.json"
CARD_FILE = "README.md"
KNOWN_BASES = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""mipo's model shorthands -> the Hub repository the weights come from."""


def log_history(
    records: list[dict[str, Any]], step: int, steps_per_epoch: int
) -> list[dict[str, Any]]:
    """The Trainer's ``log_history`` up to ``step``: training records as logged,
    evaluation records with ``eval/x`` renamed ``eval_x`` and their epoch added.

    Example:
        >>> log_history([{"step": 1, "epoch": 0.5, "loss": 0.7},
        ...              {"step": 2, "eval/loss": 0.6}, {"step": 3, "loss": 0.5}],
        ...             step=2, steps_per_epoch=2)
        [{'step': 1, 'epoch': 0.5, 'loss': 0.7}, {'step': 2, 'eval_loss': 0.6, 'epoch': 1.0}]
    """
    history = []
    for record in records:
        if record.get("step", 0) > step:
            continue
        if "loss" in record:
            history.append(dict(record))
        elif any(key.startswith("eval/") for key in record):
            renamed = {
                ("eval_" + key[5:] if key.startswith("eval/") else key): value
                for key, value in record.items()
            }
            renamed.setdefault("epoch", record["step"] / max(steps_per_epoch, 1))
            history.append(renamed)
    return history


def trainer_state(run: Any, records: list[dict[str, Any]]) -> dict[str, Any]:
    """``run``'s state at its current step as transformers' ``TrainerState``
    fields (no best-model tracking: those fields stay empty)."""
    progress, config = run.progress, run.config
    history = log_history(records, progress.step, progress.steps_per_epoch)
    tokens = [r["num_tokens"] for r in history if "num_tokens" in r]
    return {
        "epoch": progress.step / max(progress.steps_per_epoch, 1),
        "global_step": progress.step,
        "max_steps": progress.total_steps,
        "logging_steps": config.logging_steps,
        "eval_steps": config.eval_steps,
        "save_steps": config.save_steps,
        "train_batch_size": config.batch_size,
        "num_train_epochs": math.ceil(
            progress.total_steps / max(progress.steps_per_epoch, 1)
        ),
        "num_input_tokens_seen": tokens[-1] if tokens else 0,
        "total_flos": 0.0,
        "log_history": history,
        "best_metric": None,
        "best_global_step": None,
        "best_model_checkpoint": None,
        "is_local_process_zero": True,
        "is_world_process_zero": True,
        "is_hyper_param_search": False,
        "trial_name": None,
        "trial_params": None,
        "stateful_callbacks": {},
    }


def write_hub_files(run: Any, directory: Path) -> None:
    """``trainer_state.json`` and ``README.md`` of ``run`` into ``directory``
    (main process only)."""
    records = read_metrics(run.run_dir)
    state = trainer_state(run, records)
    write_json(directory / HF_STATE_FILE, state)
    name = f"checkpoint-{run.progress.step}"  # its name once in place
    text = model_card(run, state["log_history"], run.run_dir / name)
    tmp = directory / f".{CARD_FILE}.tmp"
    tmp.write_text(text)
    os.replace(tmp, directory / CARD_FILE)


def model_card(run: Any, history: list[dict[str, Any]], checkpoint: Path) -> str:
    """The model card of ``run``'s ``checkpoint`` at its current step
    (``history``: its :func:`log_history`)."""
    config, recipe = run.config, run.recipe
    base = KNOWN_BASES.get(config.model, config.model)
    on_hub = "/" in base and not Path(base).exists()
    lines = ["---"]
    if on_hub:
        lines.append(f"base_model: {base}")
    lines += [
        "library_name: transformers",
        "tags:",
        "- mipo",
        f"- {recipe.name}",
        "- preference-optimization",
        "---",
        "",
        f"# {run.run_dir.name} / {checkpoint.name}",
        "",
        f"`{base}` trained with mipo's `{recipe.name}` recipe on "
        f"`{config.dataset}`, {run.progress.step} of {run.progress.total_steps} "
        "optimiser steps.",
        "",
        *_settings(run),
        *_results(history),
        *_usage(config.lora_rank > 0, checkpoint),
    ]
    return "\n".join(lines) + "\n"


def _settings(run: Any) -> list[str]:
    config = run.config
    rows = {
        "optimizer": f"{config.optimizer}, lr {config.learning_rate:g}, "
        f"{config.lr_schedule} schedule",
        "batch": f"{config.batch_size} pairs per process x "
        f"{config.gradient_accumulation_steps} accumulation x "
        f"{run.accelerator.num_processes} processes",
        "lengths": f"max_length {config.max_length}, "
        f"max_prompt_length {config.max_prompt_length}",
        "precision": config.precision,
        "seed": str(config.seed),
        "LoRA": f"rank {config.lora_rank}" if config.lora_rank > 0 else "none (full)",
    }
    table = [f"| {key} | {value} |" for key, value in rows.items()]
    return [
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        *table,
        "",
        "The objective, as mipo composes it:",
        "",
        "```python",
        repr(run.objective),
        "```",
        "",
    ]


RESULT_KEYS = (
    "eval_rewards/accuracies",
    "eval_rewards/margins",
    "eval_loss",
    "eval_kl_reverse_per_token",
    "eval_gold_reward",
    "eval_gold_reward_before",
    "eval_gold_gain",
    "eval_gold_answer_chars_before",
    "eval_gold_answer_chars",
)


def _results(history: list[dict[str, Any]]) -> list[str]:
    evals = [r for r in history if any(k in r for k in RESULT_KEYS)]
    if not evals:
        return ["No held-out evaluation up to this step.", ""]
    last = evals[-1]
    rows = []
    for key in RESULT_KEYS:
        if last.get(key) is None:
            continue
        low, high = last.get(f"{key}_low"), last.get(f"{key}_high")
        interval = f" (95 % CI {low:.3f} to {high:.3f})" if low is not None else ""
        rows.append(f"| `{key}` | {last[key]:.4f}{interval} |")
    return [
        f"## Held-out results at step {last['step']}",
        "",
        "| metric | value |",
        "|---|---|",
        *rows,
        "",
    ]


def _usage(lora: bool, checkpoint: Path) -> list[str]:
    loader = (
        [
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
        ]
        if lora
        else ["from transformers import AutoModelForCausalLM, AutoTokenizer"]
    )
    model = "AutoPeftModelForCausalLM" if lora else "AutoModelForCausalLM"
    return [
        "## Use",
        "",
        "```python",
        *loader,
        "",
        f'path = "{checkpoint}"',
        f"model = {model}.from_pretrained(path)",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "```",
        "",
        f"Made with mipo {mipo.__version__}.",
    ]


__all__ = [
    "CARD_FILE",
    "HF_STATE_FILE",
    "log_history",
    "model_card",
    "trainer_state",
    "write_hub_files",
]
