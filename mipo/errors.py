"""Exceptions with one clear message each."""


class BatchError(ValueError):
    """A :class:`~mipo.batch.PairBatch` is malformed or lacks a field the objective
    needs. The message names the field (``chosen.reference_logps``, ...)."""


class CompositionError(ValueError):
    """An :class:`~mipo.objective.Objective` was composed from parts that cannot work
    together. Raised at construction, never in the middle of training."""


class NonFiniteLossError(FloatingPointError):
    """The loss (or one of its parts) is NaN or infinite. The message says which."""


__all__ = ["BatchError", "CompositionError", "NonFiniteLossError"]
