"""``mipo.recipes.recipe_from``, ``load_recipe``, ``discover``: this path is kept for the documented commands and imports; the
code lives in :mod:`mipo.training.recipes` (``docs/architecture.md``), and every name of
that module is reachable here."""

from typing import Any

from mipo.training import recipes as _target
from mipo.training.recipes import *  # noqa: F403


def __getattr__(name: str) -> Any:
    return getattr(_target, name)
