"""The documentation site: complete, built with ``mkdocs --strict``, and its home-page
example runs."""

import re
from pathlib import Path

import pytest

import mipo.primitives
from mipo.tools.site import API_PAGES, REPO, build_site, plan_site
from mipo.training.recipes import discover


def test_every_recipe_and_proof_has_a_page() -> None:
    """A recipe or proof missing from the site fails here."""
    pages = plan_site().pages
    for recipe in discover():
        assert f"](recipes/{recipe.name}.md)" in pages["methods.md"]
        page = pages[f"recipes/{recipe.name}.md"]
        assert recipe.doc.splitlines()[0] in page
        assert "## Source" in page
    for proof in (REPO / "proofs").glob("*.md"):
        stem = "index" if proof.name == "README.md" else proof.stem
        assert f"proofs/{stem}.md" in pages
        if stem != "index":
            assert "## The test that checks it" in pages[f"proofs/{stem}.md"]


def test_every_primitive_is_in_the_api_reference() -> None:
    """Each class exported by mipo.primitives lives in a module the API pages render."""
    text = "\n".join(
        p for name, p in plan_site().pages.items() if name.startswith("api/")
    )
    rendered = set(re.findall(r"^::: (\S+)$", text, flags=re.M))
    for name, value in vars(mipo.primitives).items():
        if isinstance(value, type) and not name.startswith("_"):
            assert value.__module__ in rendered, (
                f"{name} ({value.__module__}) has no API page"
            )
    assert {m for modules in API_PAGES.values() for m in modules} <= rendered


def test_recipe_notes_appear_on_their_recipe_pages() -> None:
    """docs/recipe_notes/<recipe>.md (e.g. TI-DPO's paper-vs-code list) is part of
    that recipe's page, not a page of its own."""
    pages = plan_site().pages
    notes = sorted((REPO / "docs" / "recipe_notes").glob("*.md"))
    assert notes
    for note in notes:
        assert note.read_text() in pages[f"recipes/{note.stem}.md"]
        assert not any(name.startswith("recipe_notes/") for name in pages)


def test_guides_cover_the_issue_list() -> None:
    guides = {name for name in plan_site().pages if name.startswith("guides/")}
    for guide in ("data", "training", "pictures", "tis_dpo_weights", "new_primitive"):
        assert f"guides/{guide}.md" in guides


def test_site_builds_strict(tmp_path: Path) -> None:
    site = build_site(tmp_path / "build")
    assert (site / "index.html").is_file()
    for recipe in discover():
        assert (site / "recipes" / recipe.name / "index.html").is_file()
    api = (site / "api" / "priors" / "index.html").read_text()
    assert "TokenInterpolationPrior" in api


@pytest.mark.slow
def test_home_page_example_runs(tmp_path: Path) -> None:
    """The 20-line example of docs/index.md, on the tiny model for one step."""
    from tiny import build_tiny_model_dir

    text = (REPO / "docs" / "index.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    model = build_tiny_model_dir(tmp_path / "model")
    assert 'model="smollm2"' in code and "max_steps=12" in code
    code = code.replace('model="smollm2"', f"model={str(model)!r}")
    code = code.replace("max_steps=12", f"max_steps=1, output_dir={str(tmp_path)!r}")
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/index.md", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert (result.run_dir / "metrics.jsonl").is_file()


def test_the_architecture_page_is_in_the_navigation() -> None:
    plan = plan_site()
    assert {"Architecture": "architecture.md"} in plan.nav
    page = plan.pages["architecture.md"]
    assert "BatchBuilder" in page and "AbstractServiceSpec" in page
    guide = plan.pages["guides/new_primitive.md"]
    assert "tests/test_openness.py" in guide and "class FrozenScorerService" in guide
