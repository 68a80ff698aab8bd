"""The layout shows the architecture, and a test keeps it so.

Layers (``docs/architecture.md``): the **core** (objective, batch, needs,
typing, errors, service specs, primitives and their OT solvers) imports only the
core; **data** imports the core and data; **training** imports the core, data and
training; **tools** may import anything but the command shims. Every import of
every ``mipo`` module is read with :mod:`ast` (function-level imports included),
and the import graph has no cycle. Outside ``mipo/primitives/`` nothing
``isinstance``-checks a concrete primitive class, the training code names none,
and no function of the training code is longer than 80 lines.
"""

import ast
import inspect
from pathlib import Path

import pytest

import mipo.primitives

PACKAGE = Path(mipo.primitives.__file__).resolve().parent.parent
CORE_FILES = {
    "objective",
    "batch",
    "needs",
    "typing",
    "errors",
    "services",
    "sinkhorn",
    "_ot",
}
SHIMS = {
    "train",
    "eval",
    "recipes",
    "weights",
    "dice",
    "pictures",
    "site",
    "docs",
    "compare",
    "__main__",
}
MAX_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {
    module_name(p): p
    for p in sorted(PACKAGE.rglob("*.py"))
    if "_recipes" not in p.parts
}


def layer(name: str) -> str:
    """The layer of module ``name``."""
    parts = name.split(".")
    if name == "mipo":
        return "facade"
    if parts[1] in ("primitives",) or (len(parts) == 2 and parts[1] in CORE_FILES):
        return "core"
    if parts[1] in ("data", "training", "tools"):
        return parts[1]
    if len(parts) == 2 and parts[1] in SHIMS:
        return "shim"
    raise AssertionError(f"{name}: in no layer; add it to tests/test_architecture.py")


ALLOWED = {
    "core": {"core"},
    "data": {"core", "data"},
    "training": {"core", "data", "training", "facade"},
    "tools": {"core", "data", "training", "tools", "facade"},
    "facade": {"core", "training"},
    "shim": {"training", "tools"},
}


def imports_of(path: Path) -> set[str]:
    """Every ``mipo`` module ``path`` imports, resolved to a module of the package."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "mipo" or name.startswith("mipo."):
                while name not in MODULES:
                    name = name.rsplit(".", 1)[0]
                found.add(name)
    return found


GRAPH = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def test_every_module_has_a_layer() -> None:
    layers = {name: layer(name) for name in MODULES}
    assert layers["mipo.objective"] == "core"
    assert layers["mipo.primitives.prior"] == "core"
    assert layers["mipo.training.loop"] == "training"
    assert layers["mipo.tools.pictures"] == "tools"
    assert layers["mipo.train"] == "shim"


def test_the_scanner_resolves_imports(tmp_path: Path) -> None:
    """The reader itself: it must see module-level and function-level imports."""
    source = tmp_path / "x.py"
    source.write_text(
        "from mipo.training import checkpoint as c\n"
        "import mipo.needs\n"
        "def f():\n    from mipo.training.services.base import Service\n"
    )
    assert imports_of(source) == {
        "mipo.training.checkpoint",
        "mipo.training",
        "mipo.needs",
        "mipo.training.services.base",
    }


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_follow_the_layers(name: str) -> None:
    own = layer(name)
    bad = sorted(t for t in GRAPH[name] if layer(t) not in ALLOWED[own])
    assert not bad, f"{name} ({own}) imports {bad}, outside {sorted(ALLOWED[own])}"


def test_the_import_graph_has_no_cycle() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def concrete_primitives() -> set[str]:
    """Names of the concrete classes defined in ``mipo.primitives``."""
    names = set()
    for module_name_ in MODULES:
        if not module_name_.startswith("mipo.primitives"):
            continue
        module = __import__(module_name_, fromlist=["_"])
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and value.__module__ == module.__name__
                and not inspect.isabstract(value)
                and not name.startswith("Abstract")
            ):
                names.add(name)
    return names


CONCRETE = concrete_primitives()


def test_concrete_primitives_are_found() -> None:
    assert {"LearnedMasks", "MarginalFitPrior", "LogRatioTriplet"} <= CONCRETE
    assert (
        "AbstractPrior" not in CONCRETE and "AbstractSequenceWeighter" not in CONCRETE
    )


def _identifier(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.Tuple):
        return [n for element in node.elts for n in _identifier(element)]
    return []


def type_checks(path: Path) -> list[str]:
    """Classes named by ``isinstance``/``issubclass`` calls in ``path``."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
        ):
            names += _identifier(node.args[1])
    return names


OUTSIDE_PRIMITIVES = sorted(n for n in MODULES if not n.startswith("mipo.primitives"))


@pytest.mark.parametrize("name", OUTSIDE_PRIMITIVES)
def test_no_type_check_of_a_concrete_primitive(name: str) -> None:
    checked = sorted(set(type_checks(MODULES[name])) & CONCRETE)
    assert not checked, f"{name} isinstance-checks concrete primitives {checked}"


def test_the_type_check_reader_sees_calls(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("isinstance(a, (LearnedMasks, p.MarginalFitPrior))\n")
    assert type_checks(source) == ["LearnedMasks", "MarginalFitPrior"]


TRAINING = sorted(n for n in MODULES if layer(n) == "training")


@pytest.mark.parametrize("name", TRAINING)
def test_the_training_code_names_no_concrete_primitive(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    named = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    named |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    named |= {
        alias.asname or alias.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom)
        for alias in n.names
    }
    assert not named & CONCRETE, f"{name} names {sorted(named & CONCRETE)}"


def function_lengths(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [
        (node.end_lineno - node.lineno + 1, f"{path.name}:{node.lineno} {node.name}")
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    ]


def test_no_training_function_is_longer_than_80_lines() -> None:
    lengths = [row for name in TRAINING for row in function_lengths(MODULES[name])]
    longest = max(lengths)
    assert longest[0] <= MAX_LINES, f"{longest[1]} has {longest[0]} lines"
    # the fit loop itself reads like nanoGPT's
    loop = dict((where.split(" ")[1], n) for n, where in lengths if "loop.py" in where)
    assert loop["fit"] <= 40


@pytest.mark.parametrize("name", sorted(SHIMS))
def test_the_old_paths_reach_the_moved_modules(name: str) -> None:
    """``mipo.train``, ``mipo.eval``, ... give every name of the module that now
    holds the code (the documented commands and imports keep working)."""
    import importlib

    shim = importlib.import_module(f"mipo.{name}")
    target = shim._target
    assert layer(target.__name__) in ("training", "tools")
    public = [n for n in vars(target) if not n.startswith("_")]
    assert public and all(getattr(shim, n) is getattr(target, n) for n in public)
