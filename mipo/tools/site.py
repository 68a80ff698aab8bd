"""Build the documentation site (mkdocs-material + mkdocstrings).

``python -m mipo.site [--out DIR] [--serve]`` assembles the site sources in a
build directory — the hand-written pages of ``docs/``, one page per recipe
(its docstring, its row of the methods table, its source, and the proofs that
involve it), the ``proofs/`` pages (each followed by the source of the test that
checks it) and the API reference per slot — writes ``mkdocs.yml`` there and runs
``mkdocs build --strict``. Nothing is written into the repository.
"""

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import final

from mipo.training.recipes import Recipe, discover

REPO = Path(__file__).resolve().parents[2]
API_PAGES: dict[str, tuple[str, ...]] = {
    "Objective and batch": (
        "mipo.objective",
        "mipo.batch",
        "mipo.needs",
        "mipo.services",
        "mipo.errors",
    ),
    "Priors": ("mipo.primitives.prior",),
    "Token weighters": ("mipo.primitives.weighter", "mipo.primitives.transforms"),
    "Margins": ("mipo.primitives.margin",),
    "Links": ("mipo.primitives.link",),
    "Terms": ("mipo.primitives.terms",),
    "Training": ("mipo.training.config", "mipo.training.recipes"),
}
TEST_NAME = re.compile(r"`(test_[A-Za-z0-9_]+)`")


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class SitePlan:
    """What the site will contain: page path (relative to the site root) -> text,
    plus the navigation."""

    pages: dict[str, str]
    nav: list[object]


def _optional_modules() -> dict[str, tuple[str, ...]]:
    """API pages for modules that exist in this checkout (later features add theirs)."""
    extra = {
        "Priors": (
            "mipo.primitives.learned_prior",
            "mipo.training.services.learned_prior",
            "mipo.tools.mi",
        ),
        "Token weighters": (
            "mipo.primitives.otpo",
            "mipo.primitives.attribution",
            "mipo.primitives.masks",
            "mipo.training.services.masks",
        ),
        "Terms": ("mipo.primitives.triplet",),
        "Training": (
            "mipo.training.trainer",
            "mipo.training.setup",
            "mipo.training.loop",
            "mipo.training.batching",
            "mipo.training.services.base",
            "mipo.training.evaluate",
            "mipo.training.logps",
            "mipo.data",
        ),
    }
    found: dict[str, tuple[str, ...]] = {}
    for group, modules in extra.items():
        present = []
        for module in modules:
            relative = Path(*module.split("."))
            if (REPO / f"{relative}.py").is_file() or (
                REPO / relative / "__init__.py"
            ).is_file():
                present.append(module)
        found[group] = tuple(present)
    return found


def _test_sources() -> dict[str, dict[str, str]]:
    """module -> test name -> source, for every tests/test_*.py."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted((REPO / "tests").glob("test_*.py")):
        text = path.read_text()
        tree = ast.parse(text)
        functions = {
            node.name: ast.get_source_segment(text, node) or ""
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        }
        out[path.stem] = functions
    return out


def _proof_pages(tests: dict[str, dict[str, str]]) -> dict[str, str]:
    pages = {}
    for path in sorted((REPO / "proofs").glob("*.md")):
        text = path.read_text()
        if path.name != "README.md":
            checked = []
            for name in dict.fromkeys(TEST_NAME.findall(text)):
                found = [(m, f[name]) for m, f in tests.items() if name in f]
                if not found:
                    raise ValueError(f"{path}: names {name}, which no test defines")
                module, source = found[0]
                checked.append(
                    f"### `{name}` (tests/{module}.py)\n\n```python\n{source}\n```\n"
                )
            if not checked:
                raise ValueError(f"{path}: names no test function (`test_...`)")
            text += "\n\n## The test that checks it\n\n" + "\n".join(checked)
        pages[f"proofs/{'index' if path.name == 'README.md' else path.stem}.md"] = text
    return pages


def _recipe_page(recipe: Recipe, table_row: str, header: str, proofs: list[str]) -> str:
    source = recipe.path.read_text()
    proof_links = (
        "\n".join(f"- [{p}](../proofs/{p}.md)" for p in proofs) or "- (none yet)"
    )
    return (
        f"# `{recipe.name}`\n\n{recipe.doc}\n\n## Slots\n\n{header}\n{table_row}\n\n"
        f"## Proofs involving this recipe\n\n{proof_links}\n\n"
        f"## Source\n\n```python\n{source}\n```\n"
    )


def plan_site() -> SitePlan:
    """Collect every page of the site from the repository."""
    from mipo.tools.docs import methods_table  # generated table (tests keep it in sync)

    pages: dict[str, str] = {}
    docs_dir = REPO / "docs"
    for path in sorted(docs_dir.rglob("*.md")):
        if path.parent.name != "recipe_notes":  # shown inside the recipe pages
            pages[str(path.relative_to(docs_dir))] = path.read_text()
    # Rows of the methods table link to the recipe files in the repository; on the
    # site they link to the recipe pages.
    pages["methods.md"] = re.sub(
        r"\]\(\.\./recipes/([a-z0-9_]+)\.py\)", r"](recipes/\1.md)", pages["methods.md"]
    )
    tests = _test_sources()
    pages |= _proof_pages(tests)
    table = methods_table()
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = "\n".join(lines[:2])
    recipe_nav = []
    proof_texts = {
        p.stem: p.read_text()
        for p in (REPO / "proofs").glob("*.md")
        if p.name != "README.md"
    }
    for recipe in discover():
        row = next((line for line in lines[2:] if f"`{recipe.name}`" in line), "")
        involved = sorted(
            stem
            for stem, text in proof_texts.items()
            if re.search(rf"\b{recipe.name}\b", text)
        )
        page = _recipe_page(recipe, row, header, involved)
        notes = docs_dir / "recipe_notes" / f"{recipe.name}.md"
        if notes.is_file():
            page += "\n" + notes.read_text()
        pages[f"recipes/{recipe.name}.md"] = page
        recipe_nav.append({recipe.name: f"recipes/{recipe.name}.md"})
    api_nav = []
    optional = _optional_modules()
    for group, modules in API_PAGES.items():
        slug = re.sub(r"[^a-z]+", "-", group.lower()).strip("-")
        members = modules + optional.get(group, ())
        body = "\n\n".join(f"::: {module}" for module in members)
        pages[f"api/{slug}.md"] = f"# {group}\n\n{body}\n"
        api_nav.append({group: f"api/{slug}.md"})
    guides = sorted(p for p in pages if p.startswith("guides/"))
    proof_nav = [
        p for p in sorted(pages) if p.startswith("proofs/") and p != "proofs/index.md"
    ]
    nav: list[object] = [
        {"Home": "index.md"},
        {"The objective": "objective.md"},
        {"Architecture": "architecture.md"},
        {"Methods": ["methods.md", *recipe_nav]},
        {"Proofs": ["proofs/index.md", *proof_nav]},
        {"Guides": guides},
        {"API reference": api_nav},
    ]
    extra = sorted(
        p
        for p in pages
        if not p.startswith(("guides/", "proofs/", "recipes/", "api/"))
        and p not in ("index.md", "objective.md", "architecture.md", "methods.md")
    )
    if extra:
        nav.append({"More": extra})
    return SitePlan(pages=pages, nav=nav)


def _yaml(nav: list[object], indent: int = 0) -> str:
    lines = []
    pad = " " * indent
    for item in nav:
        if isinstance(item, dict):
            for key, value in item.items():
                if isinstance(value, list):
                    lines.append(f"{pad}- {key!r}:")
                    lines.append(_yaml(value, indent + 4))
                else:
                    lines.append(f"{pad}- {key!r}: {value}")
        else:
            lines.append(f"{pad}- {item}")
    return "\n".join(line for line in lines if line)


CONFIG = """site_name: mipo
site_description: Composable DPO-family objectives under one mutual-information loss
docs_dir: src
site_dir: site
strict: true
theme:
  name: material
  features: [navigation.sections, content.code.copy]
markdown_extensions:
  - admonition
  - tables
  - toc:
      permalink: true
  - pymdownx.arithmatex:
      generic: true
  - pymdownx.highlight
  - pymdownx.superfences
extra_javascript:
  - https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js
plugins:
  - search
  - mkdocstrings:
      handlers:
        python:
          paths: [{repo}]
          options:
            docstring_style: google
            show_source: true
            show_root_heading: true
            members_order: source
            filters: ["!^_"]
validation:
  nav:
    omitted_files: warn
  links:
    not_found: warn
    anchors: warn
nav:
{nav}
"""


def build_site(out: Path) -> Path:
    """Assemble the sources under ``out`` and run ``mkdocs build --strict``.
    Returns the built site directory."""
    plan = plan_site()
    if out.exists():
        shutil.rmtree(out)
    source = out / "src"
    for relative, text in plan.pages.items():
        target = source / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    for image in sorted((REPO / "docs").rglob("*.png")):
        target = source / image.relative_to(REPO / "docs")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, target)
    config = CONFIG.format(repo=REPO, nav=_yaml(plan.nav, 2))
    (out / "mkdocs.yml").write_text(config)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--quiet",
            "-f",
            str(out / "mkdocs.yml"),
        ],
        check=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    return out / "site"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mipo.site", description=__doc__)
    parser.add_argument(
        "--out", type=Path, default=None, help="build directory (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="mipo-site-"))
    site = build_site(out)
    print(f"site built: {site}/index.html")


if __name__ == "__main__":
    main()
