"""The ``mipo`` console command: one entry point, one subcommand per tool.

``mipo train RECIPE ...`` is ``python -m mipo.train RECIPE ...``, ``mipo eval
RUN`` is ``python -m mipo.eval RUN``, and so on; every subcommand takes the
arguments (and ``--help``) of the module it runs. The ``python -m`` forms keep
working.
"""

import importlib
import sys

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
    lines = ["usage: mipo COMMAND [ARGS ...]   (mipo COMMAND --help for its options)"]
    lines += ["", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Dispatch ``argv`` (default: the process's arguments) to a subcommand."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"error: mipo: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    module = importlib.import_module(COMMANDS[name][0])
    code = module.main(rest)
    if isinstance(code, int) and code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()


__all__ = ["COMMANDS", "main", "usage"]
