"""TRL's argument names read as mipo keys.

A TRL config file (``trl dpo --config FILE.yaml``) mixes the fields of four
argument classes: ``DPOConfig`` with transformers' ``TrainingArguments``,
``ScriptArguments`` (the data set) and ``ModelConfig`` (the model, LoRA). mipo
reads such a file as it is:

* a name that means the same as a mipo key under another name is renamed
  (:data:`TRL_NAMES`: ``per_device_train_batch_size`` -> ``batch_size``);
* a setting mipo spells differently is converted (:func:`translate`):
  ``bf16: true`` -> ``train.precision: bf16``, ``precompute_ref_log_probs:
  true`` -> ``train.reference: precomputed``, ``use_peft`` with ``lora_r``
  -> ``train.lora_rank``, ``optim: adamw_torch`` -> ``train.optimizer: adamw``,
  ``dataset_name`` with its config and splits -> ``train.dataset`` (and
  ``train.eval_dataset`` for ``dataset_test_split``);
* ``loss_type`` must name the recipe's own loss (:func:`check_loss_type`): in
  mipo the loss is the recipe, so a different one names the recipe to run;
* bookkeeping that has nothing to set in mipo is dropped with a note
  (:data:`IGNORED`), and a setting mipo cannot honour is refused in one line;
* every other name goes through the usual check, where an unknown key fails
  with the closest valid ones.

The TRL fields are those of TRL 1.16 (``docs/trl.md``).
"""

from collections.abc import Callable, Mapping
from typing import Any

from mipo.errors import ConfigError

TRL_NAMES = {
    "per_device_train_batch_size": "batch_size",
    "num_train_epochs": "epochs",
    "lr_scheduler_type": "lr_schedule",
    "model_name_or_path": "model",
    "lora_r": "lora_rank",
}
"""TRL / transformers argument names and the TrainConfig field each one sets."""

IGNORED = {
    "do_train": "mipo always trains",
    "do_eval": "mipo evaluates the held-out pairs at eval_steps and at the end",
    "run_name": "the run directory is OUTPUT_DIR/RECIPE-TIME",
    "remove_unused_columns": "mipo reads only the columns it knows",
    "dataset_num_proc": "tokenisation runs in the training process",
    "dataloader_num_workers": "batches are built in the training process",
}
"""Bookkeeping keys with nothing to set in mipo -> why (printed as a note)."""

LORA_RANK_DEFAULT = 16
"""TRL ``ModelConfig.lora_r``'s default, taken by ``use_peft: true`` alone."""

OPTIMIZERS = {
    "adamw_torch": "adamw",
    "adamw_torch_fused": "adamw",
    "rmsprop": "rmsprop",
}
"""transformers' ``optim`` values -> ``train.optimizer``."""

LOSS_TYPES = {
    "sigmoid": "dpo",
    "hinge": "slic",
    "ipo": "ipo",
    "exo_pair": "exo",
    "nca_pair": "nca",
    "robust": "cdpo",
    "bco_pair": "bco",
    "sppo_hard": "sppo",
    "aot": "aot",
    "apo_zero": "apo",
    "discopop": "discopop",
    "sigmoid_norm": "ln_dpo",
}
"""TRL ``loss_type`` -> the shipped recipe that computes it (``docs/trl.md``
lists the recipes' options for the other loss types)."""

STEP_STRATEGIES = ("eval_strategy", "save_strategy", "logging_strategy")
DATASET_KEYS = (
    "dataset_name",
    "dataset_config",
    "dataset_train_split",
    "dataset_test_split",
)


class TRLKeyError(ConfigError):
    """A TRL setting mipo cannot honour: the ``key`` and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def translate(
    keys: Mapping[str, Any], note: Callable[[str, str], None]
) -> dict[str, Any]:
    """``keys`` (a config file's flat names) with TRL's settings as mipo keys;
    ``note(key, text)`` is told about each dropped key.

    Raises:
        TRLKeyError: a TRL setting mipo cannot honour (``fp16: true``, an
            unknown ``optim``, a strategy other than ``steps``).
    """
    out = {k: v for k, v in keys.items() if k not in IGNORED}
    for key in IGNORED.keys() & keys.keys():
        note(key, f"ignored: {IGNORED[key]}")
    for convert in (_precision, _reference, _optimizer, _dataset):
        out = convert(out)
    return _strategies(_lora(out, note), note)


def check_loss_type(value: Any, recipe_name: str) -> None:
    """Accept ``loss_type`` when it is the recipe's own loss; otherwise raise
    :class:`TRLKeyError` naming the recipe that computes it."""
    wanted = LOSS_TYPES.get(str(value))
    if wanted == recipe_name:
        return
    if wanted is None:
        raise TRLKeyError(
            "loss_type",
            f"{value!r} is a recipe with options in mipo, not a key; "
            "docs/trl.md gives the recipe and options for each TRL loss type",
        )
    raise TRLKeyError(
        "loss_type",
        f"{value!r} is recipes/{wanted}.py in mipo, but this run's recipe "
        f"is {recipe_name!r}; run `python -m mipo.train recipes/{wanted}.py` instead",
    )


def _precision(keys: dict[str, Any]) -> dict[str, Any]:
    if keys.pop("fp16", False) is True:
        raise TRLKeyError(
            "fp16",
            "not supported (float16 needs loss scaling); use bf16: true "
            "(--train.precision=bf16)",
        )
    if "bf16" in keys:
        keys["train.precision"] = "bf16" if _true(keys.pop("bf16"), "bf16") else "fp32"
    return keys


def _reference(keys: dict[str, Any]) -> dict[str, Any]:
    if "precompute_ref_log_probs" in keys:
        if _true(keys.pop("precompute_ref_log_probs"), "precompute_ref_log_probs"):
            keys["train.reference"] = "precomputed"
    return keys


def _lora(keys: dict[str, Any], note: Callable[[str, str], None]) -> dict[str, Any]:
    if "use_peft" not in keys:
        return keys
    if _true(keys.pop("use_peft"), "use_peft"):
        keys.setdefault("lora_r", LORA_RANK_DEFAULT)
    else:
        if "lora_r" in keys:
            note("lora_r", "ignored: use_peft is false")
        keys.pop("lora_r", None)
        keys["train.lora_rank"] = 0
    return keys


def _optimizer(keys: dict[str, Any]) -> dict[str, Any]:
    if "optim" in keys:
        name = str(keys.pop("optim"))
        if name not in OPTIMIZERS:
            raise TRLKeyError(
                "optim",
                f"{name!r} is not available in mipo; use one of "
                f"{', '.join(OPTIMIZERS)} (--train.optimizer=adamw or rmsprop)",
            )
        keys["train.optimizer"] = OPTIMIZERS[name]
    return keys


def _strategies(
    keys: dict[str, Any], note: Callable[[str, str], None]
) -> dict[str, Any]:
    for key in STEP_STRATEGIES:
        if key not in keys:
            continue
        value = str(keys.pop(key))
        if value != "steps":
            raise TRLKeyError(
                key,
                f"{value!r} is not available; mipo counts in optimiser steps "
                f"({key.replace('strategy', 'steps')}: N, 0 for the end of the run)",
            )
        note(key, "ignored: mipo counts in optimiser steps")
    return keys


def _dataset(keys: dict[str, Any]) -> dict[str, Any]:
    """``dataset_name`` (+ ``dataset_config``, ``dataset_train_split``,
    ``dataset_test_split``) as ``NAME?name=CONFIG&split=SPLIT`` data specs."""
    given = [k for k in DATASET_KEYS if k in keys]
    if not given:
        return keys
    if "dataset_name" not in keys:
        raise TRLKeyError(
            given[0],
            "needs dataset_name (or use --train.dataset=NAME?name=CONFIG&split=SPLIT)",
        )
    name, config, train_split, test_split = (keys.pop(k, None) for k in DATASET_KEYS)
    keys["train.dataset"] = _spec(str(name), config, train_split)
    if test_split is not None:
        keys["train.eval_dataset"] = _spec(str(name), config, test_split)
    return keys


def _spec(name: str, config: Any, split: Any) -> str:
    options = [f"name={config}"] if config is not None else []
    options += [f"split={split}"] if split is not None else []
    return name + ("?" + "&".join(options) if options else "")


def _true(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise TRLKeyError(key, f"expected true or false, got {value!r}")


__all__ = ["TRLKeyError", "TRL_NAMES", "check_loss_type", "translate"]
