"""The ``mipo`` console command: one entry point, one subcommand per tool.

``mipo train RECIPE ...`` is ``python -m mipo.train RECIPE ...``, ``mipo eval
RUN`` is ``python -m mipo.eval RUN``, and so on; every subcommand takes the
arguments (and ``--help``) of the module it runs. The ``python -m`` forms keep
working.
"""

import difflib
import importlib
import sys

from mipo.training.command import DEBUG_FLAG, fail, run_command

COMMANDS = {
    "train": ("mipo.training.trainer", "train a recipe (python -m mipo.train)"),
    "eval": (
        "mipo.training.evaluate",
        "evaluate a run directory (python -m mipo.eval)",
    ),
    "compare": ("mipo.tools.compare", "train several recipes and compare them"),
    "weights": ("mipo.tools.weights", "estimate TIS-DPO token weights"),
    "pictures": ("mipo.tools.pictures", "draw a run's token pictures"),
    "dice": ("mipo.tools.dice", "self-rewarding DPO rounds (DICE)"),
    "docs": ("mipo.tools.site", "build or serve the offline documentation site"),
    "methods": ("mipo.tools.docs", "regenerate docs/methods.md (--check: verify)"),
}
"""Subcommand -> (module whose ``main(argv)`` it runs, one-line description)."""


def usage() -> str:
    """The top-level help: every subcommand and what it does."""
    width = max(map(len, COMMANDS))
    lines = [
        "usage: mipo [--debug] COMMAND [ARGS ...]   (mipo COMMAND --help for its "
        "options; --debug shows tracebacks)"
    ]
    lines += ["", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``argv`` (default: the process's arguments) to a subcommand;
    ``--debug`` may come before the subcommand (``mipo --debug train ...``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] == DEBUG_FLAG:
        args = [*args[1:], DEBUG_FLAG]
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        run_command(lambda _: fail(unknown_command(name)), args)
    module = importlib.import_module(COMMANDS[name][0])
    code = module.main(rest)
    if isinstance(code, int) and code:
        raise SystemExit(code)


def unknown_command(name: str) -> str:
    """The one-line error for a subcommand that does not exist."""
    close = difflib.get_close_matches(name, list(COMMANDS), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return (
        f"unknown command {name!r}; {hint}commands: {', '.join(COMMANDS)} "
        "(mipo --help lists them)"
    )


if __name__ == "__main__":
    main()


__all__ = ["COMMANDS", "main", "unknown_command", "usage"]
