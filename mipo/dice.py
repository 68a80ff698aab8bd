"""``python -m mipo.dice RECIPE ...``: this path is kept for the documented commands and imports; the
code lives in :mod:`mipo.tools.dice` (``docs/architecture.md``). Importing this module
gives that module itself."""

import sys

from mipo.tools import dice as _module

if __name__ == "__main__":
    _module.main()
else:
    sys.modules[__name__] = _module
