"""Every citation a user meets can be followed inside the repository.

The project's method notes are ``docs/objective.md`` and
``docs/recipe_notes/<recipe>.md``. Code, recipes, proofs, docs and tests cite them
by file, or as ``file.md#anchor`` with the anchor of one of their headings; never
by a section number of a document the repository does not hold (papers are cited
as "Sec. N", "Eq. N").
"""

import re
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("mipo", "recipes", "proofs", "docs", "tests", "benchmarks")
THIS = Path(__file__).resolve()

SECTION_SIGN = re.compile("\u00a7" + r"\s*\d")
# a section number right after a document name: "methods.md 7.4", "x.md Section 5"
NUMBERED = re.compile(
    r"\b[\w-]+\.md`{0,2}\)?[,:]?\s*(?:\u00a7|[Ss]ections?\s+\d|\d+(?:\.\d+)*\b)"
)
# a cited document: a path under docs/ or proofs/, or the bare name of one of the
# notes the project's team keeps (which must then be a file of the repository)
MD_NAME = re.compile(
    r"(?<![\w/.:\\-])((?:docs|proofs)/(?:[\w.-]+/)*[\w-]+\.md"
    r"|(?:methods|objective|style|assets|ecosystem|learned_priors)\.md)"
    r"(?:#([\w-]+))?"
)
# pages the site generates from another file
SITE_PAGES = {"proofs/index.md": "proofs/README.md"}


def _scanned_files() -> list[Path]:
    found = [REPO / "README.md"]
    for root in SCANNED:
        for suffix in ("*.py", "*.md"):
            found += sorted((REPO / root).rglob(suffix))
    return [path for path in found if path.resolve() != THIS]


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", path.read_text(), flags=re.M)
    return {slugify(text, "-") for text in headings}


def _resolve(name: str, source: Path) -> Path | None:
    name = SITE_PAGES.get(name, name)
    for base in (source.parent, REPO, REPO / "docs"):
        if (base / name).is_file():
            return base / name
    return None


def _line_problems(line: str, source: Path) -> list[str]:
    out = [f"section sign {m.group()!r}" for m in SECTION_SIGN.finditer(line)]
    out += [f"numbered section {m.group()!r}" for m in NUMBERED.finditer(line)]
    for match in MD_NAME.finditer(line):
        name, anchor = match.groups()
        target = _resolve(name, source)
        if target is None:
            out.append(f"{name} is not a file of the repository")
        elif anchor and anchor not in _anchors(target):
            out.append(f"{name} has no heading #{anchor}")
    return out


def test_every_citation_points_inside_the_repository() -> None:
    problems = [
        f"{path.relative_to(REPO)}:{number}: {problem}"
        for path in _scanned_files()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        for problem in _line_problems(line, path)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        ("see methods.md " + "\u00a7" + "10.3", True),
        ("(``objective.md`` Section 5.2)", True),
        ("Config history (methods.md 7.4)", True),
        ("the spec's style.md", True),
        ("docs/recipe_notes/dice.md", True),
        ("docs/objective.md#no-such-heading", True),
        ("docs/objective.md#exactness-classes", False),
        ("(`docs/recipe_notes/otpo.md`)", False),
        ("[proof page](proofs/index.md)", False),
        ("arXiv 2505.19653 v3, Sec. 4.2, Eq. 7", False),
    ],
)
def test_the_checker_flags_unfollowable_citations(line: str, bad: bool) -> None:
    """The rules on single lines, cited from a page in docs/."""
    problems = _line_problems(line, REPO / "docs" / "index.md")
    assert bool(problems) == bad, problems
