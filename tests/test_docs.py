"""Generated docs stay in sync with the recipes and read well (short linked
cells in the table, the full values on the recipe page);
:func:`mipo.tools.describe.describe` renders primitives compactly."""

import dataclasses
import re
from pathlib import Path

import pytest

from mipo import Objective, Term
from mipo.primitives import (
    ChosenNLL,
    ConstantMargin,
    LabelSmoothedLink,
    ProductPrior,
    ReferencePrior,
    SequentialKLPenalty,
)
from mipo.tools.describe import describe, describe_wrapped
from mipo.tools.docs import (
    COLUMNS,
    METHODS_MD,
    REPO,
    SLOTS,
    main,
    methods_table,
    objective_code,
    recipe_slots,
    row,
)
from mipo.training.recipes import discover

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_methods_md_is_up_to_date() -> None:
    committed = METHODS_MD.read_text() if METHODS_MD.is_file() else ""
    assert committed == methods_table(), (
        f"{METHODS_MD} is out of date with the recipes: regenerate it with "
        "`python -m mipo.docs` and commit the result"
    )


def test_methods_table_has_one_row_per_recipe_and_every_column() -> None:
    lines = methods_table().splitlines()
    rows = [line for line in lines if line.startswith("| **[")]
    assert [
        re.match(r"\| \*\*\[(\w+)\]\(\.\./recipes/", line).group(1) for line in rows
    ] == [recipe.name for recipe in discover()]
    assert len(rows) == len([line for line in lines if line.startswith("| ")]) - 1
    for line in rows:
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        assert len(cells) == len(COLUMNS), line
        assert "arxiv.org/abs/" in cells[0], f"no arXiv id in the recipe cell: {line}"
    assert "python -m mipo.docs" in methods_table().splitlines()[2]


LINK = re.compile(r"\[(\w+)\]\(\.\./([\w/]+\.py)\)")


def _visible(cell: str) -> str:
    """The text a reader sees: link texts, no markup."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", cell)
    for markup, shown in (
        ("&nbsp;", " "),
        ("<br>", " "),
        ("<wbr>", ""),
        ("`", ""),
        ("**", ""),
    ):
        text = text.replace(markup, shown)
    return text


def test_methods_table_cells_are_short_class_names_linked_to_their_files() -> None:
    """A slot cell names the slot's class first and holds no field values; every
    name links to the file that defines that class; no row is wider than a
    screen's worth of text."""
    for recipe in discover():
        cells = row(recipe)
        for slot, cell in zip(SLOTS[:4], cells[1:5], strict=True):
            value = getattr(recipe.objective, slot)
            assert LINK.match(cell).group(1) == type(value).__name__, (slot, cell)
            assert "=" not in cell and "'" not in cell, cell
        for name, path in LINK.findall(" ".join(cells[1:6])):
            assert re.search(rf"^class {name}\b", (REPO / path).read_text(), re.M), (
                f"{path} does not define {name}"
            )
        visible = sum(len(_visible(cell)) for cell in cells)
        # the longest row (ti_dpo: prior, weighter, beta, triplet and sft terms) is ~175
        assert visible < 180, f"{recipe.name}: {visible} characters"
        for term in recipe.objective.terms:
            assert type(term.term).__name__ in cells[5]
        if any(term.weight == 0 for term in recipe.objective.terms):
            assert "(off)" in cells[5]


def _classes(value: object) -> dict[str, type]:
    """Every dataclass type inside a value, by name."""
    if isinstance(value, tuple | list):
        return {k: v for item in value for k, v in _classes(item).items()}
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return {}
    found = {type(value).__name__: type(value)}
    for field in dataclasses.fields(value):
        found |= _classes(getattr(value, field.name))
    return found


def test_recipe_page_slots_rebuild_the_objective() -> None:
    """The recipe page's code block is faithful: evaluated, each ``slot = value``
    line gives back the recipe's slot exactly (so no value is lost by leaving
    defaults out), and the slot table names every term."""
    for recipe in discover():
        objective = recipe.objective
        code = objective_code(objective)
        namespace: dict[str, object] = {}
        exec(code, _classes(objective), namespace)  # noqa: S102
        for slot in SLOTS:
            assert namespace[slot] == getattr(objective, slot), (recipe.name, slot)
        page = recipe_slots(recipe)
        assert f"```python\n{code}\n```" in page
        for term in objective.terms:
            assert f"`{term.name}`" in page


@pytest.mark.parametrize("width", [24, 40, 60, 88, 200])
def test_describe_wrapped_is_describe_over_lines(width: int) -> None:
    """Wrapping only adds line breaks, indentation and trailing commas, and at
    a page's width every recipe's slots fit."""

    def squash(text: str) -> str:
        return re.sub(r",(?=[)\]])", "", re.sub(r"\s+", "", text))

    for recipe in discover():
        for slot in SLOTS:
            value = getattr(recipe.objective, slot)
            text = describe_wrapped(value, width, prefix=f"{slot} = ")
            assert squash(text) == squash(f"{slot} = {describe(value)}")
            if width >= 60:
                assert max(map(len, text.splitlines())) <= width, text
    wrapped = describe_wrapped(
        Objective(terms=(Term(name="sft", term=ChosenNLL()),)), width=30
    )
    assert wrapped.splitlines() == [
        "Objective(",
        "    terms=(",
        "        Term(",
        "            name='sft',",
        "            term=ChosenNLL(),",
        "        ),",
        "    ),",
        ")",
    ]


def test_check_mode_reports_drift_and_write_mode_fixes_it(tmp_path: Path) -> None:
    output = tmp_path / "methods.md"
    output.write_text("stale\n")
    assert main(["--check", "--output", str(output)]) == 1
    assert main(["--output", str(output)]) == 0
    assert main(["--check", "--output", str(output)]) == 0
    assert output.read_text() == methods_table()


def test_describe_renders_non_default_fields_recursively() -> None:
    prior = ProductPrior(
        base=ReferencePrior(),
        factors=(SequentialKLPenalty(kappa=0.5, detach_role="chosen"),),
    )
    assert describe(prior) == (
        "ProductPrior(base=ReferencePrior(), "
        "factors=(SequentialKLPenalty(kappa=0.5, detach_role='chosen'),))"
    )


def test_describe_an_objective_hides_defaults() -> None:
    objective = Objective(
        margin=ConstantMargin(gamma=0.5),
        link=LabelSmoothedLink(epsilon=0.1),
        beta=2.0,
        terms=(Term(name="sft", term=ChosenNLL(normalise="sequence_mean")),),
    )
    assert describe(objective) == (
        "Objective(margin=ConstantMargin(gamma=0.5), "
        "link=LabelSmoothedLink(epsilon=0.1), beta=2.0, "
        "terms=(Term(name='sft', term=ChosenNLL(normalise='sequence_mean')),))"
    )
    assert describe(Objective()) == "Objective()"


@pytest.mark.parametrize(
    ("value", "expected"),
    [((), "()"), ((1, 2), "(1, 2)"), ([0.5], "[0.5]"), (int, "int"), (None, "None")],
)
def test_describe_plain_values(value: object, expected: str) -> None:
    assert describe(value) == expected


def test_describe_shows_a_required_field_even_at_zero() -> None:
    """A field without a default is always shown (kappa=0.0 is still a choice)."""
    assert describe(SequentialKLPenalty(kappa=0.0)) == "SequentialKLPenalty(kappa=0.0)"


def test_objective_md_names_the_slots_and_classes() -> None:
    text = (DOCS / "objective.md").read_text()
    for word in ("prior", "weighter", "margin", "link", "terms", "Class G"):
        assert word in text, word
