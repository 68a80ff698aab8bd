"""``mipo.recipes.recipe_from``, ``load_recipe``, ``discover``: this path is kept for the documented commands and imports; the
code lives in :mod:`mipo.training.recipes` (``docs/architecture.md``). Importing this module
gives that module itself."""

import sys

from mipo.training import recipes as _module

sys.modules[__name__] = _module
