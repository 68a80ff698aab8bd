"""Generated docs stay in sync with the recipes; :func:`mipo.tools.describe.describe`
renders primitives compactly."""

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
from mipo.tools.describe import describe
from mipo.tools.docs import COLUMNS, METHODS_MD, main, methods_table
from mipo.training.recipes import discover

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_methods_md_is_up_to_date() -> None:
    committed = METHODS_MD.read_text() if METHODS_MD.is_file() else ""
    assert committed == methods_table(), (
        f"{METHODS_MD} is out of date with the recipes: regenerate it with "
        "`python -m mipo.docs` and commit the result"
    )


def test_methods_table_has_one_row_per_recipe_and_every_column() -> None:
    rows = [line for line in methods_table().splitlines() if line.startswith("| [")]
    assert [re.match(r"\| \[`(\w+)`\]", line).group(1) for line in rows] == [
        recipe.name for recipe in discover()
    ]
    for line in rows:
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        assert len(cells) == len(COLUMNS), line
        assert "arxiv.org/abs/" in cells[-1], f"no arXiv id in the paper cell: {line}"
    assert "python -m mipo.docs" in methods_table().splitlines()[2]


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
