"""``python -m mipo.train RECIPE.py`` and ``mipo.train.train``: this path is kept for the documented commands and imports; the
code lives in :mod:`mipo.training.trainer` (``docs/architecture.md``). Importing this module
gives that module itself."""

import sys

from mipo.training import trainer as _module

if __name__ == "__main__":
    _module.main()
else:
    sys.modules[__name__] = _module
