"""``python -m mipo.compare`` and ``mipo.compare.compare``: this path is kept for
the documented commands and imports; the code lives in :mod:`mipo.tools.compare`
(``docs/architecture.md``), and every name of that module is reachable here."""

from typing import Any

from mipo.tools import compare as _target
from mipo.tools.compare import *  # noqa: F403


def __getattr__(name: str) -> Any:
    return getattr(_target, name)


if __name__ == "__main__":
    _target.main()
