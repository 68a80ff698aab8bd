"""``python -m mipo COMMAND ...``: the ``mipo`` console command
(:mod:`mipo.tools.console`) for environments where the script is not on PATH."""

from mipo.tools.console import main

if __name__ == "__main__":
    main()
