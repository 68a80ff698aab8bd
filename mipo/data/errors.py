"""The error and warning the data pipeline raises for bad input.

Both live in :mod:`mipo.errors` (with the library's other exceptions); they are
re-exported here for the data modules and older imports.
"""

from mipo.errors import DataError as DataError
from mipo.errors import DataWarning as DataWarning

__all__ = ["DataError", "DataWarning"]
