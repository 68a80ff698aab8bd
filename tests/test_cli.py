"""Dotted overrides, --config files and --help of ``python -m mipo.train``."""

import re
from typing import Literal

import pytest

from mipo.primitives import LogSigmoidLink
from mipo.training.cli import (
    OverrideError,
    convert,
    parse_command_line,
    resolve,
    split_overrides,
)
from mipo.training.recipes import load_recipe
from mipo.training.trainer import main


@pytest.mark.parametrize(
    ("raw", "annotation", "expected"),
    [
        ("3", int, 3),
        ("5e-7", float, 5e-7),
        ("2", float, 2.0),
        ("true", bool, True),
        ("False", bool, False),
        ("rmsprop", Literal["adamw", "rmsprop"], "rmsprop"),
        ("none", Literal["chosen", "rejected"] | None, None),
        ("chosen", Literal["chosen", "rejected"] | None, "chosen"),
        ("0.5", float | None, 0.5),
        ("runs/x", str, "runs/x"),
        (4, int, 4),
        (1e-3, float, 1e-3),
    ],
)
def test_convert_types(raw: object, annotation: object, expected: object) -> None:
    value = convert(raw, annotation, "train.x")
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("raw", "annotation", "message"),
    [
        ("3.5", int, r"--train\.x='3\.5': expected an int"),
        ("fast", float, "expected a float"),
        ("maybe", bool, "expected a bool"),
        ("sgd", Literal["adamw", "rmsprop"], "expected one of 'adamw', 'rmsprop'"),
        (True, int, "expected an int"),
    ],
)
def test_convert_rejects_bad_values(
    raw: object, annotation: object, message: str
) -> None:
    with pytest.raises(OverrideError, match=message):
        convert(raw, annotation, "train.x")


def test_overrides_reach_config_and_factory() -> None:
    recipe = load_recipe("recipes/tdpo.py")
    config, kwargs, objective = resolve(
        recipe,
        {
            "train.learning_rate": "1e-6",
            "train.optimizer": "adamw",
            "objective.beta": "0.2",
            "objective.detach_role": "None",
        },
    )
    assert config.learning_rate == 1e-6
    assert config.optimizer == "adamw"
    assert config.warmup_steps == recipe.train.warmup_steps  # untouched
    assert kwargs == {"beta": 0.2, "detach_role": None}
    assert objective.beta == 0.2
    assert objective == recipe.make_objective(beta=0.2, detach_role=None)


def test_unknown_key_lists_valid_keys() -> None:
    recipe = load_recipe("recipes/dpo.py")
    with pytest.raises(OverrideError) as error:
        split_overrides(recipe, {"train.learning_rat": "1"})
    message = str(error.value)
    assert "--train.learning_rat: unknown key" in message
    assert "--train.learning_rate" in message
    assert "--objective.beta" in message
    assert "--objective.prior" in message


def test_unknown_group_fails() -> None:
    recipe = load_recipe("recipes/dpo.py")
    with pytest.raises(OverrideError, match="--model.beta: unknown key"):
        split_overrides(recipe, {"model.beta": "1"})


def test_primitive_valued_factory_arguments_parse() -> None:
    """``--objective.prior=UniformPrior()`` gives reference-free DPO; a class-valued
    argument (cdpo's ``link``) takes a bare class name; nested keyword values work."""
    from mipo.primitives import RankTransform, RobustLink, UniformPrior

    _, _, objective = resolve(load_recipe("dpo"), {"objective.prior": "UniformPrior()"})
    assert objective.prior == UniformPrior()
    _, _, objective = resolve(load_recipe("cdpo"), {"objective.link": "RobustLink"})
    assert objective.link == RobustLink(epsilon=0.1)
    _, kwargs, _ = resolve(
        load_recipe("tis_dpo"), {"objective.transform": "RankTransform(low=0.5)"}
    )
    assert kwargs["transform"] == RankTransform(low=0.5)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("RankTransform()", "expected AbstractPrior, got RankTransform"),
        ("__import__('os')", "unknown name '__import__'"),
        ("UniformPrior(1)", "keyword arguments only"),
        ("ReferencePrior(", "not a Python expression"),
    ],
)
def test_bad_primitive_values_are_refused_clearly(value: str, message: str) -> None:
    recipe = load_recipe("recipes/dpo.py")
    with pytest.raises(OverrideError, match=re.escape(message)):
        split_overrides(recipe, {"objective.prior": value})


def test_config_validation_error_names_the_field() -> None:
    recipe = load_recipe("recipes/dpo.py")
    with pytest.raises(OverrideError, match="TrainConfig.batch_size: must be > 0"):
        resolve(recipe, {"train.batch_size": "0"})


def test_config_file_and_command_line_precedence(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "train.learning_rate: 1.0e-6\n"
        "train:\n  max_steps: 7\n  batch_size: 2\n"
        "objective.beta: 0.3\n"
    )
    command = parse_command_line(
        ["recipes/dpo.py", "--config", str(path), "--train.max_steps=3"]
    )
    assert command.recipe == "recipes/dpo.py"
    config, kwargs, _ = resolve(load_recipe(command.recipe), command.overrides)
    assert config.max_steps == 3  # command line wins
    assert config.learning_rate == 1e-6
    assert config.batch_size == 2
    assert kwargs == {"beta": 0.3}


def test_parse_resume_and_space_separated_values() -> None:
    command = parse_command_line(["--resume", "runs/dpo-1", "--train.max_steps", "9"])
    assert command.recipe is None
    assert command.resume == "runs/dpo-1"
    assert command.overrides == {"train.max_steps": "9"}


def test_help_lists_both_groups_with_defaults(capsys: pytest.CaptureFixture) -> None:
    main(["recipes/simpo.py", "--help"])
    out = capsys.readouterr().out
    assert "usage: python -m mipo.train" in out
    assert "--train.learning_rate=6e-07" in out  # the recipe's default
    assert "--train.optimizer='adamw'  ('adamw' | 'rmsprop')" in out
    assert "--objective.beta=2.0  (float)" in out
    assert "--objective.gamma_beta_ratio=0.25" in out
    assert f"--objective.link={LogSigmoidLink()!r}" in out


def test_main_reports_unknown_key(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["recipes/dpo.py", "--objective.gama=1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--objective.gama: unknown key" in err
    assert "--objective.beta" in err
