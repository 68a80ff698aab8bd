"""A method is a value, not a branch (a house rule): no string dispatch in mipo.

Scans every ``mipo/**/*.py`` with :mod:`ast` for comparisons of a name that
mentions ``method``, ``loss_type`` or ``variant`` against a string literal
(``==``, ``!=``, ``in``, ``not in``) and for ``match`` statements on such names.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mipo"
SUSPECT_WORDS = ("method", "loss_type", "variant")


def _name(node: ast.expr) -> str | None:
    """The dotted name of a Name/Attribute/Subscript chain, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _name(node.value)
    if isinstance(node, ast.Call):
        return _name(node.func)
    return None


def _suspect(node: ast.expr) -> bool:
    name = _name(node)
    return name is not None and any(word in name.lower() for word in SUSPECT_WORDS)


def _is_string(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_is_string(element) for element in node.elts)
    return False


def dispatch_sites(source: str, filename: str) -> list[str]:
    """Every ``name == "literal"``-style comparison or ``match name`` on a
    suspect name in ``source``, as ``file:line``."""
    sites: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_suspect(op) for op in operands) and any(
                _is_string(op) for op in operands
            ):
                sites.append((node.lineno, f"{filename}:{node.lineno}"))
        elif isinstance(node, ast.Match) and _suspect(node.subject):
            sites.append((node.lineno, f"{filename}:{node.lineno}"))
    return [site for _, site in sorted(sites)]


def test_the_scanner_finds_string_dispatch() -> None:
    """The scanner itself: it must catch the patterns it is meant to forbid."""
    source = (
        "if loss_type == 'sigmoid': pass\n"
        "if config.method in ('dpo', 'ipo'): pass\n"
        "if 'hinge' != self.variant: pass\n"
        "match args.method:\n    case 'dpo': pass\n"
        "if kind == 'sigmoid': pass\n"
        "if method is None: pass\n"
    )
    assert dispatch_sites(source, "x.py") == ["x.py:1", "x.py:2", "x.py:3", "x.py:4"]


def test_package_files_are_found() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert PACKAGE / "objective.py" in files
    assert PACKAGE / "primitives" / "prior.py" in files


@pytest.mark.parametrize(
    "path",
    sorted(PACKAGE.rglob("*.py")),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_no_string_dispatch_on_method_names(path: Path) -> None:
    sites = dispatch_sites(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert not sites, (
        f"string dispatch on a method name at {sites}: pass a primitive instead"
    )
