"""Compact rendering of primitives and objectives.

:func:`describe` prints a frozen dataclass as its class name and the fields that
differ from their defaults, recursively, so a recipe's objective reads like the
code that built it; :func:`describe_wrapped` is the same text broken over lines
to fit a width. The generated methods table and the recipe pages
(:mod:`mipo.docs`) are made of these.

Example:
    >>> from mipo.primitives import ProductPrior, ReferencePrior, SequentialKLPenalty
    >>> prior = ProductPrior(base=ReferencePrior(),
    ...     factors=(SequentialKLPenalty(kappa=0.5, detach_role="chosen"),))
    >>> describe(prior)
    "ProductPrior(base=ReferencePrior(), factors=(SequentialKLPenalty(kappa=0.5, detach_role='chosen'),))"
    >>> print(describe_wrapped(prior, width=72))
    ProductPrior(
        base=ReferencePrior(),
        factors=(SequentialKLPenalty(kappa=0.5, detach_role='chosen'),),
    )
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


def changed_fields(obj: object) -> list[tuple[str, object]]:
    """``(name, value)`` of the shown fields of a dataclass instance: those that
    differ from their defaults (a field without a default is always shown)."""
    return [
        (field.name, getattr(obj, field.name))
        for field in dataclasses.fields(obj)
        if field.repr and not _is_default(field, getattr(obj, field.name))
    ]


def describe(obj: object) -> str:
    """``ClassName(field=value, ...)`` with default-valued fields left out.

    Dataclass instances recurse into their fields, tuples and lists into their
    items; classes print their name; anything else prints its ``repr``.
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = [f"{name}={describe(value)}" for name, value in changed_fields(obj)]
        return f"{type(obj).__name__}({', '.join(fields)})"
    if isinstance(obj, tuple):
        items = [describe(item) for item in obj]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    if isinstance(obj, list):
        return f"[{', '.join(describe(item) for item in obj)}]"
    if isinstance(obj, type):
        return obj.__name__
    return repr(obj)


def _wrapped(obj: object, indent: int, used: int, width: int) -> str:
    """``obj`` starting ``used`` characters into a line indented by ``indent``;
    broken one field (or item) per line when it does not fit."""
    flat = describe(obj)
    if used + len(flat) + 1 <= width:  # + 1: the comma that may follow
        return flat
    pad = " " * (indent + 4)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        parts = [
            f"{pad}{name}={_wrapped(value, indent + 4, indent + 5 + len(name), width)},"
            for name, value in changed_fields(obj)
        ]
        opening, closing = f"{type(obj).__name__}(", ")"
    elif isinstance(obj, tuple | list):
        parts = [
            f"{pad}{_wrapped(item, indent + 4, indent + 4, width)}," for item in obj
        ]
        opening, closing = ("(", ")") if isinstance(obj, tuple) else ("[", "]")
    else:
        return flat
    if not parts:
        return flat
    return "\n".join([opening, *parts, " " * indent + closing])


def describe_wrapped(obj: object, width: int = 80, *, prefix: str = "") -> str:
    """``prefix`` then :func:`describe`, broken over indented lines (one field
    per line, as a formatter would) wherever a line would pass ``width``
    characters; the text equals ``prefix + describe(obj)`` once whitespace and
    trailing commas are removed."""
    return prefix + _wrapped(obj, 0, len(prefix), width)


__all__ = ["changed_fields", "describe", "describe_wrapped"]
