"""A TRL config file read by ``python -m mipo.train --config``
(``mipo/training/trl_config.py``): TRL's names become the mipo settings that
mean the same, with the file's lines in every message."""

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from mipo.training.cli import (
    OverrideError,
    check_file_keys,
    parse_command_line,
    resolve,
)
from mipo.training.recipes import load_recipe
from mipo.training.trl_config import (
    DATASET_KEYS,
    IGNORED,
    LOSS_TYPES,
    OPTIMIZERS,
    STEP_STRATEGIES,
    TRL_NAMES,
)

TRL_FILE = """\
model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct
dataset_name: trl-lib/ultrafeedback_binarized
dataset_config: default
dataset_test_split: test
do_train: true
learning_rate: 5.0e-7
per_device_train_batch_size: 8
gradient_accumulation_steps: 2
num_train_epochs: 1
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
optim: adamw_torch_fused
use_peft: true
lora_r: 8
lora_alpha: 16
precompute_ref_log_probs: true
eval_strategy: steps
eval_steps: 50
save_steps: 100
logging_steps: 10
max_length: 1024
loss_type: sigmoid
beta: 0.1
seed: 42
report_to: none
"""


def _command(tmp_path: Path, text: str, *argv: str) -> tuple:
    path = tmp_path / "dpo.yaml"
    path.write_text(text)
    return parse_command_line(["dpo", "--config", str(path), *argv]), path


def test_a_trl_dpo_config_file_sets_the_same_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command, path = _command(tmp_path, TRL_FILE)
    recipe = load_recipe("dpo")
    check_file_keys(recipe, command)
    config, objective_kwargs, objective = resolve(recipe, command.overrides)
    name = "trl-lib/ultrafeedback_binarized?name=default"
    expected = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "dataset": name,
        "eval_dataset": f"{name}&split=test",
        "learning_rate": 5e-7,
        "batch_size": 8,
        "gradient_accumulation_steps": 2,
        "epochs": 1,
        "lr_schedule": "cosine",
        "warmup_ratio": 0.1,
        "precision": "bf16",
        "optimizer": "adamw",
        "lora_rank": 8,
        "lora_alpha": 16,
        "reference": "precomputed",
        "eval_steps": 50,
        "save_steps": 100,
        "logging_steps": 10,
        "max_length": 1024,
        "seed": 42,
    }
    assert {k: getattr(config, k) for k in expected} == expected
    assert objective_kwargs == {"beta": 0.1} and objective.beta == 0.1
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        f"mipo: warning: {path}:5: --do_train ignored: mipo always trains",
        f"mipo: warning: {path}:18: --eval_strategy ignored: mipo counts in "
        "optimiser steps",
    ]


@pytest.mark.parametrize(
    ("text", "argv", "changes"),
    [
        ("use_peft: true\n", [], {"lora_rank": 16}),  # TRL's default lora_r
        ("use_peft: false\nlora_r: 8\n", [], {"lora_rank": 0}),
        ("bf16: false\n", [], {"precision": "fp32"}),
        ("bf16: true\n", ["--train.precision=fp32"], {"precision": "fp32"}),
        ("precompute_ref_log_probs: false\n", [], {"reference": "copy"}),
        ("optim: rmsprop\n", [], {"optimizer": "rmsprop"}),
        (
            "dataset_name: a/b\ndataset_train_split: dev\n",
            [],
            {"dataset": "a/b?split=dev"},
        ),
        (
            "beta: 0.1\n",
            ["--bf16=true", "--lora_r=4"],
            {"precision": "bf16", "lora_rank": 4},
        ),
    ],
)
def test_each_translation(
    tmp_path: Path, text: str, argv: list[str], changes: dict
) -> None:
    """A key the command line gives wins over the file's translated one."""
    command, _ = _command(tmp_path, text, *argv)
    config, _, _ = resolve(load_recipe("dpo"), command.overrides)
    assert {k: getattr(config, k) for k in changes} == changes


def test_use_peft_false_warns_that_lora_r_is_unused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = _command(tmp_path, "use_peft: false\nlora_r: 8\n")
    assert capsys.readouterr().err.strip() == (
        f"mipo: warning: {path}:2: --lora_r ignored: use_peft is false"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed: 1\nmax_stepz: 3\n", ":2: --max_stepz: unknown key for recipe 'dpo'"),
        ("train:\n  seed: two\n", ":2: --train.seed='two': expected an int"),
        ("beta: big\n", ":1: --objective.beta='big': expected a float"),
    ],
)
def test_an_error_in_the_file_names_its_line(
    tmp_path: Path, text: str, message: str
) -> None:
    command, path = _command(tmp_path, text)
    with pytest.raises(OverrideError) as error:
        check_file_keys(load_recipe("dpo"), command)
    assert str(error.value).startswith(f"{path}{message}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fp16: true\n", ":1: --fp16: not supported"),
        ("bf16: sometimes\n", ":1: --bf16: expected true or false, got 'sometimes'"),
        ("seed: 1\neval_strategy: epoch\n", ":2: --eval_strategy: 'epoch' is not"),
        ("optim: sgd\n", ":1: --optim: 'sgd' is not available in mipo"),
        ("dataset_test_split: test\n", ":1: --dataset_test_split: needs dataset_name"),
    ],
)
def test_a_setting_mipo_cannot_honour_is_refused_with_its_line(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(OverrideError) as error:
        _command(tmp_path, text)
    assert str(error.value).startswith(f"{tmp_path / 'dpo.yaml'}{message}")


def test_loss_type_must_be_the_recipes_own_loss() -> None:
    for loss_type, recipe_name in LOSS_TYPES.items():
        resolve(load_recipe(recipe_name), {"loss_type": loss_type})  # accepted
    with pytest.raises(OverrideError, match=r"'ipo' is recipes/ipo.py in mipo"):
        resolve(load_recipe("dpo"), {"loss_type": "ipo"})
    with pytest.raises(OverrideError, match=r"docs/trl.md gives the recipe"):
        resolve(load_recipe("dpo"), {"loss_type": "apo_down"})


def test_every_name_read_is_a_field_of_trl_1_16() -> None:
    """The names translated, dropped or renamed exist in TRL's argument classes
    (a misspelt table entry would never match a user's file)."""
    trl = pytest.importorskip("trl")
    fields = {
        field.name
        for cls in (trl.DPOConfig, trl.ScriptArguments, trl.ModelConfig)
        for field in dataclasses.fields(cls)
    }
    read = {
        *TRL_NAMES,
        *IGNORED,
        *STEP_STRATEGIES,
        *DATASET_KEYS,
        "bf16",
        "fp16",
        "optim",
        "use_peft",
        "precompute_ref_log_probs",
        "loss_type",
    }
    assert read <= fields, sorted(read - fields)
    source = inspect.getsource(trl.DPOTrainer._compute_loss)
    assert set(LOSS_TYPES) <= set(re.findall(r'loss_type == "(\w+)"', source))
    from transformers.training_args import OptimizerNames

    assert set(OPTIMIZERS) <= {name.value for name in OptimizerNames}
