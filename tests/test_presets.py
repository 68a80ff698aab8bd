"""Recipe presets: ``--preset NAME`` applies a recipe's named overrides."""

import pytest

from mipo.training.cli import (
    OverrideError,
    help_text,
    parse_command_line,
    resolve,
    with_preset,
)
from mipo.training.recipes import discover, load_recipe


def test_a_preset_sets_its_keys_and_the_command_line_wins() -> None:
    recipe = load_recipe("ti_dpo")
    assert "released" in recipe.presets
    command = parse_command_line(
        ["recipes/ti_dpo.py", "--preset", "released", "--train.max_steps=3"]
    )
    assert command.preset == "released"
    overrides = with_preset(recipe, command.preset, command.overrides)
    config, kwargs, _ = resolve(recipe, overrides)
    assert config.optimizer == "rmsprop" and config.warmup_steps == 150
    assert kwargs["nll"] == 0.0 and kwargs["anchor_tokens"] == 64
    assert config.max_steps == 3
    assert kwargs["beta"] == 0.2 and kwargs["span"] == "sequence"


def test_an_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(OverrideError, match="presets: .*released"):
        with_preset(load_recipe("ti_dpo"), "fast", {})


def test_every_preset_of_every_recipe_resolves() -> None:
    for recipe in discover():
        for name in recipe.presets:
            resolve(recipe, with_preset(recipe, name, {}))
        if recipe.presets:
            assert "--preset" in help_text(recipe)
