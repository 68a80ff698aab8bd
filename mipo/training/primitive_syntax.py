"""Parse primitives written on the command line: ``UniformPrior()``,
``RankTransform(low=0.5, high=1.5)``, ``RobustLink`` (a class).

Only names exported by :mod:`mipo.primitives` are allowed, with keyword arguments
that are literals (numbers, strings, booleans, ``None``, tuples) or further
primitive calls. The text is parsed with :mod:`ast`; nothing is executed with
``eval``, so ``--objective.prior=__import__('os')`` is an error, not a command.
"""

import ast
from typing import Any

import mipo.primitives as primitives


class PrimitiveSyntaxError(ValueError):
    """The text is not a primitive expression mipo accepts."""


def _namespace() -> dict[str, type]:
    return {
        name: value
        for name, value in vars(primitives).items()
        if isinstance(value, type) and not name.startswith("_")
    }


def _build(node: ast.expr, names: dict[str, type], text: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _build(node.operand, names, text)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return -value
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_build(item, names, text) for item in node.elts)
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise PrimitiveSyntaxError(f"{text!r}: unknown name {node.id!r}")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        cls = _build(node.func, names, text)
        if node.args:
            raise PrimitiveSyntaxError(f"{text!r}: use keyword arguments only")
        kwargs = {
            kw.arg: _build(kw.value, names, text) for kw in node.keywords if kw.arg
        }
        if len(kwargs) != len(node.keywords):
            raise PrimitiveSyntaxError(f"{text!r}: ** arguments are not allowed")
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as error:
            raise PrimitiveSyntaxError(f"{text!r}: {error}") from None
    raise PrimitiveSyntaxError(
        f"{text!r}: expected a primitive such as UniformPrior() or "
        f"RankTransform(low=0.5), with literal keyword arguments"
    )


def parse_primitive(text: str) -> Any:
    """The primitive (or primitive class) that ``text`` spells.

    >>> parse_primitive("RankTransform(low=0.5, high=1.5)")
    RankTransform(low=0.5, high=1.5)
    >>> parse_primitive("RobustLink").__name__
    'RobustLink'
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise PrimitiveSyntaxError(f"{text!r}: not a Python expression") from None
    return _build(tree.body, _namespace(), text)


__all__ = ["PrimitiveSyntaxError", "parse_primitive"]
