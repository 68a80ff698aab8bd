"""``python -m mipo.pictures RECIPE_OR_RUN ...``: this path is kept for the documented commands and imports; the
code lives in :mod:`mipo.tools.pictures` (``docs/architecture.md``), and every name of
that module is reachable here."""

from typing import Any

from mipo.tools import pictures as _target
from mipo.tools.pictures import *  # noqa: F403


def __getattr__(name: str) -> Any:
    return getattr(_target, name)


if __name__ == "__main__":
    _target.main()
