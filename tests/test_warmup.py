"""The warmup rule: ``warmup_steps`` as transformers 5 reads it (steps when
>= 1, a share of the run in (0, 1), none at 0), ``warmup_ratio`` only when
``warmup_steps`` is unset; ``--train.warmup_steps=0`` removes any recipe's
warmup (a recipe with a ratio used to keep it)."""

import pytest
import torch

from mipo.training.cli import resolve
from mipo.training.config import TrainConfig, warmup_length
from mipo.training.recipes import load_recipe
from mipo.training.setup import _scheduler


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, 10),  # the default ratio 0.1 of 100 steps
        ({"warmup_ratio": 0.25}, 25),
        ({"warmup_steps": 0}, 0),
        ({"warmup_steps": 0, "warmup_ratio": 0.25}, 0),
        ({"warmup_steps": 7, "warmup_ratio": 0.25}, 7),
        ({"warmup_steps": 0.05}, 5),
        ({"warmup_steps": 0.051}, 6),  # ceil, as transformers
        ({"warmup_steps": 150.0}, 150),
    ],
)
def test_warmup_length(settings: dict, expected: int) -> None:
    assert warmup_length(TrainConfig(**settings), 100) == expected


@pytest.mark.parametrize("steps", [2.5, -1.0, float("nan"), float("inf")])
def test_bad_warmup_steps_are_refused(steps: float) -> None:
    with pytest.raises(ValueError, match="TrainConfig.warmup_steps"):
        TrainConfig(warmup_steps=steps)


def test_warmup_steps_zero_removes_a_recipes_ratio_warmup() -> None:
    """SimPO's recipe warms up over a ratio; ``--train.warmup_steps=0`` makes the
    first step run at the full learning rate."""
    recipe = load_recipe("simpo")
    assert recipe.train.warmup_ratio > 0
    for overrides, first in (({}, 0.0), ({"train.warmup_steps": "0"}, 1.0)):
        config, _, _ = resolve(recipe, {"train.max_steps": 20, **overrides})
        weight = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.AdamW([weight], lr=config.learning_rate)
        scheduler = _scheduler(config, optimizer, 20)
        assert scheduler.get_last_lr()[0] == pytest.approx(first * config.learning_rate)
