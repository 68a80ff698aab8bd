"""The one exception the data pipeline raises for bad input."""


class DataError(ValueError):
    """A preference record is malformed.

    The message always starts with where the record came from (``FILE:LINE`` for
    JSON lines, ``FILE[INDEX]`` for a JSON array, ``builtin:...[INDEX]`` for the
    built-in task) and names the offending field, so one message is enough to find
    and fix the row.
    """


__all__ = ["DataError"]
