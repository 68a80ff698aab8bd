"""``docs/trl.md`` covers TRL 1.16's ``DPOConfig`` and names only things that exist.

Every loss type TRL's ``DPOTrainer`` branches on and every loss knob of
``DPOConfig`` appears in the first column of the table; every recipe the page
names is a shipped recipe; every test it names is a test function of
``tests/test_trl_parity.py`` (and every parametrised id one of its cases), and
every parity case is named on the page. The lists are pinned here so the check
runs without TRL; with TRL installed they are checked against TRL itself.
"""

import ast
import dataclasses
import inspect
import re

import pytest
from conftest import REPO_ROOT

from mipo.training.recipes import discover

PAGE = REPO_ROOT / "docs" / "trl.md"
PARITY = REPO_ROOT / "tests" / "test_trl_parity.py"

TRL_LOSS_TYPES = frozenset(
    {
        "sigmoid",
        "hinge",
        "ipo",
        "exo_pair",
        "nca_pair",
        "robust",
        "bco_pair",
        "sppo_hard",
        "aot",
        "aot_unpaired",
        "apo_zero",
        "apo_down",
        "discopop",
        "sft",
        "sigmoid_norm",
    }
)
TRL_KNOBS = frozenset(
    {
        "beta",
        "loss_weights",
        "label_smoothing",
        "f_divergence_type",
        "f_alpha_divergence_coef",
        "ld_alpha",
        "use_weighting",
        "discopop_tau",
        "sync_ref_model",
        "ref_model_mixup_alpha",
        "ref_model_sync_steps",
    }
)


def _rows() -> list[list[str]]:
    rows = []
    for line in PAGE.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| TRL |"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def _first_column() -> str:
    return "\n".join(row[0] for row in _rows())


def test_every_trl_loss_type_has_a_row() -> None:
    column = _first_column()
    missing = sorted(t for t in TRL_LOSS_TYPES if f'`"{t}"' not in column)
    assert not missing, f"docs/trl.md: no row for loss types {missing}"


def test_every_trl_knob_has_a_row() -> None:
    column = _first_column()
    missing = sorted(k for k in TRL_KNOBS if f"`{k}`" not in column)
    assert not missing, f"docs/trl.md: no row for DPOConfig fields {missing}"


def test_pinned_lists_are_trl_1_16s() -> None:
    """The loss types TRL's loss code branches on, and the knobs are fields."""
    trl = pytest.importorskip("trl")
    source = inspect.getsource(trl.DPOTrainer._compute_loss)
    assert set(re.findall(r'loss_type == "(\w+)"', source)) == TRL_LOSS_TYPES
    fields = {field.name for field in dataclasses.fields(trl.DPOConfig)}
    assert fields >= TRL_KNOBS


def test_every_named_recipe_exists() -> None:
    named = set(re.findall(r"`recipes/(\w+)\.py`", PAGE.read_text()))
    shipped = {recipe.name for recipe in discover()}
    assert named, "docs/trl.md names no recipe"
    assert named <= shipped, f"docs/trl.md names missing recipes {named - shipped}"


def _parity_tests_and_ids() -> tuple[set[str], dict[str, set[str]]]:
    tree = ast.parse(PARITY.read_text())
    functions = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }
    ids: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            (target,) = node.targets
            name = target.id if isinstance(target, ast.Name) else ""
            first = [
                element.elts[0].value
                for element in node.value.elts
                if isinstance(element, ast.Tuple)
                and isinstance(element.elts[0], ast.Constant)
            ]
            ids[name] = set(first)
    return functions, ids


def test_every_named_test_exists_and_every_case_is_named() -> None:
    functions, ids = _parity_tests_and_ids()
    case_ids = {
        "test_dpo_trainer_parity": ids["CASES"],
        "test_cpo_equals_trl_experimental": ids["CPO_CASES"],
    }
    text = PAGE.read_text()
    named = re.findall(r"`(test_\w+)(?:\[([\w.]+)\])?`", text)
    assert named, "docs/trl.md names no test"
    for function, case in named:
        assert function in functions, f"docs/trl.md: {function} is not a parity test"
        if case:
            assert case in case_ids[function], (
                f"docs/trl.md: no case {function}[{case}]"
            )
    on_page = {(function, case) for function, case in named}
    for function, cases in case_ids.items():
        unnamed = sorted(c for c in cases if (function, c) not in on_page)
        assert not unnamed, f"parity cases not in docs/trl.md: {function}{unnamed}"
