"""Build the documentation site (mkdocs-material + mkdocstrings), for offline use.

``python -m mipo.site [--out DIR] [--serve [--port N]]`` assembles the site
sources in a build directory — every page of ``docs/`` and ``docs/guides/``, one
page per recipe (its docstring, its slots in full, the proofs that involve it,
its notes and its source), the ``proofs/`` pages (each followed by the source of
the test that checks it) and the API reference per slot — writes ``mkdocs.yml``
there and runs ``mkdocs build --strict``. Nothing is written into the
repository. ``--serve`` then serves the built site on ``http://127.0.0.1:N/``
(Python's ``http.server``) until interrupted.

The site needs no network: formulas are typeset by a copy of MathJax taken from
the installed ``django-static-mathjax`` package (the ``dev`` extra), the theme
uses the system fonts, and links between pages name their ``.html`` files, so
the built folder also reads from ``file://``.
"""

import argparse
import ast
import functools
import http.server
import importlib
import importlib.resources
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import final

from mipo.tools.docs import methods_table, recipe_slots
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
# The generated pages link a class to its file (``[Name](../mipo/x/y.py)``, which
# reads on GitHub); on the site such a link goes to the class in the API pages.
CLASS_LINK = re.compile(r"\[(\w+)\]\(\.\./(mipo/[\w/]+)\.py\)")
MATHJAX_DIR = "vendor/mathjax"
# The parts of MathJax's es5 build the pages use: the TeX-to-HTML bundle, its
# fonts and lazily loaded TeX extensions, and the menu's accessibility tools.
MATHJAX_PARTS = (
    "tex-mml-chtml.js",
    "input",
    "output/chtml",
    "ui",
    "a11y",
    "sre",
)


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
            "mipo.training.checkpoint",
            "mipo.training.sharding",
            "mipo.training.precision",
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


def _recipe_page(recipe: Recipe, proofs: list[str]) -> str:
    source = recipe.path.read_text()
    proof_links = (
        "\n".join(f"- [{p}](../proofs/{p}.md)" for p in proofs) or "- (none yet)"
    )
    return (
        f"# `{recipe.name}`\n\n{recipe.doc}\n\n## Slots\n\n{recipe_slots(recipe)}\n"
        f"## Proofs involving this recipe\n\n{proof_links}\n\n"
        f"## Source\n\n```python\n{source}\n```\n"
    )


def _api_links(text: str, rendered: set[str]) -> str:
    """Class links to repository files become cross-references to the API pages
    (resolved by mkdocs-autorefs); a class whose module has no API page keeps
    its name without a link."""

    def replace(match: re.Match[str]) -> str:
        name, module = match.group(1), match.group(2).replace("/", ".")
        return f"[{name}][{module}.{name}]" if module in rendered else name

    return CLASS_LINK.sub(replace, text)


def _public_classes(module: ModuleType) -> list[type]:
    return [
        value
        for name, value in vars(module).items()
        if isinstance(value, type)
        and value.__module__ == module.__name__
        and not name.startswith("_")
    ]


def _role(module: str, groups: dict[str, list[str]]) -> str | None:
    """The API page whose abstract roles (the ABCs its modules define) one of
    the module's classes implements or refines; None when there is none."""
    classes = _public_classes(importlib.import_module(module))
    for group, modules in groups.items():
        roles = [
            cls
            for listed in modules
            for cls in _public_classes(importlib.import_module(listed))
            if inspect.isabstract(cls)
        ]
        if any(issubclass(c, r) or issubclass(r, c) for c in classes for r in roles):
            return group
    return None


def _api_modules() -> dict[str, tuple[str, ...]]:
    """API page title -> the modules it renders: the listed ones, those of the
    optional modules this checkout has, and every other ``mipo/primitives/``
    module, on the page of its role ("Other primitives" when it has none), so a
    new primitive needs no entry here."""
    optional = _optional_modules()
    groups = {
        group: [*modules, *optional.get(group, ())]
        for group, modules in API_PAGES.items()
    }
    listed = {module for modules in groups.values() for module in modules}
    pending = [
        f"mipo.primitives.{path.stem}"
        for path in sorted((REPO / "mipo" / "primitives").glob("[a-z]*.py"))
        if f"mipo.primitives.{path.stem}" not in listed
    ]
    placed = True
    while placed:  # a module placed on a page lends its own ABCs to that page
        placed = False
        for module in list(pending):
            if (group := _role(module, groups)) is not None:
                groups[group].append(module)
                pending.remove(module)
                placed = True
    if pending:
        groups["Other primitives"] = pending
    return {group: tuple(modules) for group, modules in groups.items()}


def plan_site() -> SitePlan:
    """Collect every page of the site from the repository."""
    api = _api_modules()
    rendered = {module for modules in api.values() for module in modules}
    pages: dict[str, str] = {}
    docs_dir = REPO / "docs"
    for path in sorted(docs_dir.rglob("*.md")):
        if path.parent.name != "recipe_notes":  # shown inside the recipe pages
            pages[str(path.relative_to(docs_dir))] = path.read_text()
    # Rows of the methods table link to the recipe files in the repository; on the
    # site they link to the recipe pages.
    # The table's own file in the repository is checked against the recipes by
    # tests/test_docs.py; the site shows the table generated now.
    methods = re.sub(
        r"\]\(\.\./recipes/([a-z0-9_]+)\.py\)", r"](recipes/\1.md)", methods_table()
    )
    pages["methods.md"] = "---\nhide: [navigation, toc]\n---\n\n" + _api_links(
        methods, rendered
    )
    tests = _test_sources()
    pages |= _proof_pages(tests)
    recipe_nav = []
    proof_texts = {
        p.stem: p.read_text()
        for p in (REPO / "proofs").glob("*.md")
        if p.name != "README.md"
    }
    for recipe in discover():
        involved = sorted(
            stem
            for stem, text in proof_texts.items()
            if re.search(rf"\b{recipe.name}\b", text)
        )
        page = _api_links(_recipe_page(recipe, involved), rendered)
        notes = docs_dir / "recipe_notes" / f"{recipe.name}.md"
        if notes.is_file():
            page += "\n" + notes.read_text()
        pages[f"recipes/{recipe.name}.md"] = page
        recipe_nav.append({recipe.name: f"recipes/{recipe.name}.md"})
    api_nav = []
    for group, members in api.items():
        slug = re.sub(r"[^a-z]+", "-", group.lower()).strip("-")
        body = "\n\n".join(f"::: {module}" for module in members)
        pages[f"api/{slug}.md"] = f"# {group}\n\n{body}\n"
        api_nav.append({group: f"api/{slug}.md"})
    guides = sorted(p for p in pages if p.startswith("guides/"))
    proof_nav = [
        p for p in sorted(pages) if p.startswith("proofs/") and p != "proofs/index.md"
    ]
    # Any other page of docs/ (docs/*.md, docs/<topic>/README.md) is listed
    # under "More", so a new page needs no entry here.
    extra = sorted(
        p
        for p in pages
        if not p.startswith(("guides/", "proofs/", "recipes/", "api/"))
        and p not in ("index.md", "objective.md", "architecture.md", "methods.md")
    )
    # The long lists (recipes, proofs) are folded sections under their index.
    nav: list[object] = [
        {"Home": "index.md"},
        {"The objective": "objective.md"},
        {"Architecture": "architecture.md"},
        {"Methods": [{"Methods table": "methods.md"}, {"Recipes": recipe_nav}]},
        {"Proofs": [{"Reductions": "proofs/index.md"}, {"All proofs": proof_nav}]},
        {"Guides": guides},
        *([{"More": extra}] if extra else []),
        {"API reference": api_nav},
    ]
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


# Not material's "offline" plugin: it adds a script from a CDN (a worker shim) so
# that search runs from file://; here search needs --serve.
CONFIG = """site_name: mipo
site_description: Composable DPO-family objectives under one mutual-information loss
docs_dir: src
site_dir: site
strict: true
use_directory_urls: false
theme:
  name: material
  font: false
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
  - javascripts/mathjax-config.js
  - {mathjax}/tex-mml-chtml.js
extra_css:
  - stylesheets/mipo.css
hooks:
  - hooks.py
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


# MathJax reads this before it loads: typeset only what pymdownx.arithmatex
# marked as maths (its generic mode writes \( \) and \[ \]).
MATHJAX_CONFIG = r"""window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
};
"""

STYLESHEET = """\
/* Tables of class names (the methods table, the recipe pages): top-aligned,
   compact cells that wrap at spaces; a recipe's name stays on one line. */
.md-typeset table:not([class]) td { vertical-align: top; }
.md-typeset table:not([class]) th,
.md-typeset table:not([class]) td { padding: 0.6em 0.75em; }
.md-typeset table:not([class]) td:first-child code { white-space: nowrap; }
"""


# Docstrings name objects the Sphinx way (:class:`Name`), which Markdown renders
# as ":class:" then the code; on the site these become links to the API pages.
SPHINX_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|mod|data|exc|obj):<code>(~?)\.?([\w.]+)</code>"
)


@functools.cache
def _api_names() -> dict[str, str]:
    """Short name -> full identifier, for the public classes and functions of
    the modules the API pages render (names defined twice are left out)."""
    found: dict[str, list[str]] = {}
    for modules in _api_modules().values():
        for module in modules:
            for name, value in vars(importlib.import_module(module)).items():
                if getattr(value, "__module__", None) == module and not name.startswith(
                    "_"
                ):
                    found.setdefault(name, []).append(f"{module}.{name}")
    return {name: ids[0] for name, ids in found.items() if len(set(ids)) == 1}


def _identifier(target: str) -> str:
    """The identifier mkdocstrings gives the object ``target`` names (a dotted
    path, possibly through a re-export, or a short name); ``target`` itself when
    it cannot be found."""
    parts = target.split(".")
    if parts[0] != "mipo":
        head = _api_names().get(parts[0])
        return target if head is None else _identifier(".".join([head, *parts[1:]]))
    for split in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                value = getattr(value, attribute)
        except AttributeError:
            return target
        value = value.fget if isinstance(value, property) else value
        if isinstance(value, ModuleType):
            return value.__name__
        module, name = (
            getattr(value, "__module__", None),
            getattr(value, "__qualname__", None),
        )
        return f"{module}.{name}" if module and name else target
    return target


def on_page_content(html: str, **_: object) -> str:
    """mkdocs hook: Sphinx roles become cross-references, resolved by
    mkdocs-autorefs (a name it cannot place stays plain code)."""

    def replace(match: re.Match[str]) -> str:
        short, target = match.group(1), match.group(2)
        shown = target.rsplit(".", 1)[-1] if short else target
        identifier = _identifier(target)
        return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'

    return SPHINX_ROLE.sub(replace, html)


def mathjax_source() -> Path:
    """The es5 build of MathJax inside the installed ``django-static-mathjax``."""
    try:
        root = importlib.resources.files("mathjax") / "static" / "mathjax" / "es5"
    except ModuleNotFoundError:
        root = None
    if root is None or not (root / "tex-mml-chtml.js").is_file():
        raise RuntimeError(
            "mipo.site: MathJax not found (package django-static-mathjax, in the "
            "dev extra): pip install -e '.[dev]'"
        )
    return Path(str(root))


def _copy_mathjax(target: Path) -> None:
    source = mathjax_source()
    for part in MATHJAX_PARTS:
        if (source / part).is_dir():
            shutil.copytree(source / part, target / part)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / part, target / part)
    shutil.copyfile(source.parent / "LICENSE", target / "LICENSE")


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
    _copy_mathjax(source / MATHJAX_DIR)
    (source / "javascripts").mkdir()
    (source / "javascripts" / "mathjax-config.js").write_text(MATHJAX_CONFIG)
    (source / "stylesheets").mkdir()
    (source / "stylesheets" / "mipo.css").write_text(STYLESHEET)
    config = CONFIG.format(repo=REPO, nav=_yaml(plan.nav, 2), mathjax=MATHJAX_DIR)
    (out / "mkdocs.yml").write_text(config)
    (out / "hooks.py").write_text(
        "from mipo.tools.site import on_page_content  # noqa: F401\n"
    )
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
        # the hook file imports mipo.site, from this checkout
        env={
            **os.environ,
            "NO_MKDOCS_2_WARNING": "1",
            "PYTHONPATH": os.pathsep.join(
                [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        },
    )
    return out / "site"


def site_server(
    site: Path, port: int = 8000, host: str = "127.0.0.1"
) -> http.server.ThreadingHTTPServer:
    """An HTTP server for the built ``site`` folder (not started: call
    ``serve_forever``); port 0 picks a free port."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(site)
    )
    return http.server.ThreadingHTTPServer((host, port), handler)


def main(argv: list[str] | None = None) -> None:
    """``python -m mipo.site`` (errors in the common style of
    :mod:`mipo.training.command`)."""
    from mipo.training.command import run_command

    run_command(_main, sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> None:
    from mipo.training.command import ArgumentParser, fail

    parser = ArgumentParser(
        prog="python -m mipo.site",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="build directory (default: a temp dir)"
    )
    parser.add_argument(
        "--serve", action="store_true", help="serve the built site until Ctrl-C"
    )
    parser.add_argument("--port", type=int, default=8000, help="with --serve")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        fail(f"--port: must be in 0..65535, got {args.port}")
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        fail(f"--out: {args.out} is a file; give a directory")
    out = args.out or Path(tempfile.mkdtemp(prefix="mipo-site-"))
    server = None
    if args.serve:  # take the port first: a busy one fails before the build
        try:
            server = site_server(out / "site", args.port)
        except OSError as error:
            raise OSError(
                f"--port {args.port}: cannot serve on 127.0.0.1:{args.port} "
                f"({error.strerror}); choose another port"
            ) from None
    site = build_site(out)
    print(f"site built: {site}/index.html")
    if server is not None:
        with server:
            host, port = server.server_address[:2]
            print(f"serving http://{host}:{port}/ (Ctrl-C stops)", flush=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                print("stopped")


if __name__ == "__main__":
    main()
