"""The proofs/ pages and the reduction tests point at each other.

Every ``proofs/*.md`` page (the README included) names tests as backticked
function names (```test_...```); every page but the README names at least one, and
every name is a module-level test function of some ``tests/test_*.py``. Every
reduction test has a docstring naming an existing page, and the README's table
links every page. Test functions are found with :mod:`ast`, so nothing is
imported or run.
"""

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PROOFS = REPO_ROOT / "proofs"
TEST_NAME = re.compile(r"`(test_\w+)`")
PAGE = re.compile(r"proofs/([\w-]+\.md)")


def _pages() -> list[Path]:
    return sorted(p for p in PROOFS.glob("*.md") if p.name != "README.md")


def _test_functions(module: Path) -> dict[str, str | None]:
    """Module-level ``test_*`` functions of a file and their docstrings."""
    tree = ast.parse(module.read_text(encoding="utf-8"), filename=str(module))
    return {
        node.name: ast.get_docstring(node)
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_there_are_proof_pages() -> None:
    assert len(_pages()) >= 20, f"expected the reduction pages in {PROOFS}"


def _all_test_functions() -> set[str]:
    names: set[str] = set()
    for module in sorted((REPO_ROOT / "tests").glob("test_*.py")):
        names |= set(_test_functions(module))
    return names


@pytest.mark.parametrize(
    "page", [*_pages(), PROOFS / "README.md"], ids=lambda p: p.name
)
def test_every_proof_page_names_existing_tests(page: Path) -> None:
    names = TEST_NAME.findall(page.read_text(encoding="utf-8"))
    if page.name != "README.md":
        assert names, f"{page.relative_to(REPO_ROOT)}: names no test function"
    defined = _all_test_functions()
    for name in names:
        assert name in defined, f"{page.name}: {name} is not a test function in tests/"


def test_every_reduction_test_names_an_existing_proof_page() -> None:
    module = REPO_ROOT / "tests" / "test_reductions.py"
    tests = _test_functions(module)
    assert len(tests) >= 20
    for name, docstring in tests.items():
        pages = PAGE.findall(docstring or "")
        assert pages, (
            f"tests/test_reductions.py::{name}: docstring names no proofs/ page"
        )
        for page in pages:
            assert (PROOFS / page).is_file(), f"{name}: proofs/{page} does not exist"


def test_readme_lists_every_page() -> None:
    readme = (PROOFS / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w-]+\.md)\)", readme))
    assert linked == {p.name for p in _pages()}
