"""``python -m mipo.train RECIPE.py`` and ``mipo.train.train``: this path is kept for the documented commands and imports; the
code lives in :mod:`mipo.training.trainer` (``docs/architecture.md``), and every name of
that module is reachable here."""

from typing import Any

from mipo.training import trainer as _target
from mipo.training.trainer import *  # noqa: F403


def __getattr__(name: str) -> Any:
    return getattr(_target, name)


if __name__ == "__main__":
    _target.main()
