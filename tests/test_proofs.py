"""The proofs/ pages and the reduction tests point at each other.

Every ``proofs/*.md`` page (except the README) names at least one pytest node id,
and every node id it names is a module-level test function that exists. Every
test in ``tests/test_reductions.py`` has a docstring naming an existing page, and
the README's table links every page. Test functions are found with :mod:`ast`,
so nothing is imported or run.
"""

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PROOFS = REPO_ROOT / "proofs"
NODE_ID = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
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


@pytest.mark.parametrize("page", _pages(), ids=lambda p: p.name)
def test_every_proof_page_names_existing_tests(page: Path) -> None:
    node_ids = NODE_ID.findall(page.read_text(encoding="utf-8"))
    assert node_ids, f"{page.relative_to(REPO_ROOT)}: names no test node id"
    for path, name in node_ids:
        module = REPO_ROOT / path
        assert module.is_file(), f"{page.name}: {path} does not exist"
        assert name in _test_functions(module), (
            f"{page.name}: {path}::{name} is not a test function in {path}"
        )


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
