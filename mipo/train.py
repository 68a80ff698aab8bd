"""the trainer: ``python -m mipo.train RECIPE.py``, ``mipo.train.train``: kept at this path for the documented commands and imports; the
code lives in :mod:`mipo.training.trainer` (``docs/architecture.md``)."""

import sys

from mipo.training import trainer as _module

if __name__ == "__main__":
    _module.main()
else:
    sys.modules[__name__] = _module
