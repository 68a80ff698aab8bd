"""How the run was launched: refuse a launch that asked for several processes
but started one.

``accelerate launch --cpu --num_processes 2`` runs its simple launcher: one
process, with ``MASTER_ADDR`` and ``MASTER_PORT`` set for a process group that
never forms (no ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK``). Training would go
on as a single process and the user would believe it used two. ``torchrun``
starts the processes itself and sets all of them; accelerate's GPU launcher
does too.
"""

import os
import shlex
import sys
from collections.abc import Mapping

from mipo.errors import ConfigError

GROUP_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
"""Set in every process of a real process group (torchrun, accelerate on GPUs)."""


def torchrun_command(argv: list[str], processes: str = "N") -> str:
    """The ``torchrun`` command that runs ``python -m mipo.train ARGS`` in
    ``processes`` processes."""
    args = " ".join(shlex.quote(arg) for arg in argv)
    return f"torchrun --nproc_per_node {processes} -m mipo.train {args}".rstrip()


def launch_problem(
    argv: list[str], environ: Mapping[str, str] | None = None
) -> str | None:
    """A one-line refusal when the environment shows a multi-process launch that
    started a single process (accelerate's CPU launcher), else ``None``."""
    env = os.environ if environ is None else environ
    if not env.get("MASTER_ADDR") or any(env.get(v) for v in GROUP_VARIABLES):
        return None
    if env.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1", "yes"):
        return None
    return (
        "accelerate launch --cpu with several processes starts only one process "
        "(MASTER_ADDR is set, WORLD_SIZE/RANK are not); run "
        f"`{torchrun_command(argv, '2')}` instead (set --nproc_per_node to the "
        "number of processes)"
    )


def refuse_bad_launch(argv: list[str] | None = None) -> None:
    """Raise :class:`~mipo.errors.ConfigError` with :func:`launch_problem`'s line
    when it has one (the command prints it and exits with status 2)."""
    problem = launch_problem(sys.argv[1:] if argv is None else argv)
    if problem is not None:
        raise ConfigError(problem)


__all__ = ["launch_problem", "refuse_bad_launch", "torchrun_command"]
