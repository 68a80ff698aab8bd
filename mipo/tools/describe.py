"""Compact one-line rendering of primitives and objectives.

:func:`describe` prints a frozen dataclass as its class name and the fields that
differ from their defaults, recursively, so a recipe's objective reads like the
code that built it. The generated methods table (:mod:`mipo.docs`) is made of
these strings.

Example:
    >>> from mipo.primitives import ProductPrior, ReferencePrior, SequentialKLPenalty
    >>> describe(ProductPrior(base=ReferencePrior(),
    ...          factors=(SequentialKLPenalty(kappa=0.5, detach_role="chosen"),)))
    "ProductPrior(base=ReferencePrior(), factors=(SequentialKLPenalty(kappa=0.5, detach_role='chosen'),))"
"""

import dataclasses


def _is_default(field: dataclasses.Field, value: object) -> bool:
    if field.default is not dataclasses.MISSING:
        default = field.default
    elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    else:
        return False
    # Same type and equal: 1 == 1.0 == True must not hide a changed value.
    return type(value) is type(default) and bool(value == default)


def describe(obj: object) -> str:
    """``ClassName(field=value, ...)`` with default-valued fields left out.

    Dataclass instances recurse into their fields, tuples and lists into their
    items; classes print their name; anything else prints its ``repr``.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = [
            f"{field.name}={describe(getattr(obj, field.name))}"
            for field in dataclasses.fields(obj)
            if field.repr and not _is_default(field, getattr(obj, field.name))
        ]
        return f"{type(obj).__name__}({', '.join(fields)})"
    if isinstance(obj, tuple):
        items = [describe(item) for item in obj]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if isinstance(obj, list):
        return f"[{', '.join(describe(item) for item in obj)}]"
    if isinstance(obj, type):
        return obj.__name__
    return repr(obj)


__all__ = ["describe"]
