"""``python -m mipo COMMAND ...``: the ``mipo`` console command
(:mod:`mipo.tools.console`) for environments where the script is not on PATH;
every name of that module is reachable here."""

from typing import Any

from mipo.tools import console as _target
from mipo.tools.console import *  # noqa: F403


def __getattr__(name: str) -> Any:
    return getattr(_target, name)


if __name__ == "__main__":
    _target.main()
