"""recipe loading (``recipe_from``, ``load_recipe``, ``discover``): kept at this path for the documented commands and imports; the
code lives in :mod:`mipo.training.recipes` (``docs/architecture.md``)."""

import sys

from mipo.training import recipes as _module

if __name__ == "__main__":
    _module.main()
else:
    sys.modules[__name__] = _module
