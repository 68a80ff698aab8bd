"""Load recipes by path (importlib, never exec) and discover the shipped ones.

A recipe is a Python file with a docstring, a ``make_objective(**kwargs)``
factory, ``objective = make_objective()`` and ``train = TrainConfig(...)``.
"""

import hashlib
import importlib.util
import inspect
import pickle
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, final

from mipo.errors import ConfigError
from mipo.objective import Objective
from mipo.training.config import TrainConfig


@final
@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A loaded recipe file.

    Args:
        name: the file stem (``ti_dpo``).
        path: the file.
        module: the imported module.
    """

    name: str
    path: Path
    module: ModuleType

    @property
    def make_objective(self) -> Callable[..., Objective]:
        """The recipe's factory."""
        return self.module.make_objective

    @property
    def objective(self) -> Objective:
        """The objective at the recipe's defaults."""
        return self.module.objective

    @property
    def train(self) -> TrainConfig:
        """The recipe's training defaults."""
        return self.module.train

    @property
    def presets(self) -> dict[str, dict[str, Any]]:
        """Named sets of dotted overrides (``--preset NAME``), e.g. the authors'
        released settings; the module's ``presets`` (none by default)."""
        return dict(getattr(self.module, "presets", {}))

    @property
    def doc(self) -> str:
        """The recipe's module docstring."""
        return inspect.getdoc(self.module) or ""

    def factory_defaults(self) -> dict[str, Any]:
        """Keyword defaults of ``make_objective``."""
        signature = inspect.signature(self.make_objective)
        return {
            name: p.default
            for name, p in signature.parameters.items()
            if p.default is not inspect.Parameter.empty
        }


def recipe_from(
    objective: Objective, train: TrainConfig | None = None, *, name: str = "custom"
) -> Recipe:
    """A recipe built in Python rather than read from a file, for
    ``mipo.train.train(recipe_from(objective, TrainConfig(...)))``. Its factory
    takes no arguments (there are no ``--objective.*`` keys). A run of it stores
    the objective in its directory (:func:`save_composed`), so evaluation,
    ``--resume`` and the tools rebuild it from there.
    """
    if not isinstance(objective, Objective):
        raise TypeError(
            f"recipe_from: expected an Objective, got {type(objective).__name__}"
        )
    module = ModuleType(f"mipo_recipe_{name}")
    module.__doc__ = f"{name}: an objective composed in Python."

    def make_objective() -> Objective:
        return objective

    module.make_objective = make_objective
    module.objective = objective
    module.train = TrainConfig() if train is None else train
    return Recipe(name=name, path=Path(f"<python:{name}>"), module=module)


COMPOSED_FILE = "objective.pkl"
"""The composed objective and training defaults inside a run directory."""


def is_composed(recipe: Recipe) -> bool:
    """True for a recipe built in Python (:func:`recipe_from`)."""
    return str(recipe.path).startswith("<python:")


def save_composed(recipe: Recipe, run_dir: Path) -> Path:
    """Pickle the objective and training defaults of a composed recipe into
    ``run_dir``; the primitives' classes are stored by module path, so they must
    be importable (a module or a test file, not a notebook cell)."""
    path = Path(run_dir) / COMPOSED_FILE
    payload = {
        "name": recipe.name,
        "objective": recipe.objective,
        "train": recipe.train,
    }
    try:
        path.write_bytes(pickle.dumps(payload))
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        raise TypeError(
            f"recipe {recipe.name!r}: its objective cannot be stored with the run "
            f"({error}); define its primitives in an importable module"
        ) from None
    return path


def load_composed(run_dir: Path) -> Recipe:
    """The composed recipe a run stored with :func:`save_composed`."""
    path = Path(run_dir) / COMPOSED_FILE
    try:
        payload = pickle.loads(path.read_bytes())  # noqa: S301 (the run's own file)
    except (ImportError, AttributeError) as error:
        raise ImportError(
            f"{path}: the run's objective was composed in Python from classes that "
            f"cannot be imported here ({error}); import their module first"
        ) from None
    return recipe_from(payload["objective"], payload["train"], name=payload["name"])


def recipe_of_run(run_dir: Path, saved: dict[str, Any]) -> Recipe:
    """The recipe of a saved run: its stored composition, else its recipe file."""
    if (Path(run_dir) / COMPOSED_FILE).is_file():
        return load_composed(run_dir)
    return load_recipe(saved["recipe"])


def recipes_dir() -> Path:
    """Where the shipped recipes live: ``recipes/`` beside the package in a source
    checkout, ``mipo/_recipes`` in an installed wheel."""
    package = Path(__file__).resolve().parents[1]  # the mipo package
    for candidate in (package.parent / "recipes", package / "_recipes"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no recipes directory beside {package}")


def load_recipe(path_or_name: str | Path | Recipe) -> Recipe:
    """Import a recipe from a file path, or a shipped recipe by bare name; a
    :class:`Recipe` (one built with :func:`recipe_from`) is returned as is, so
    every command that takes a recipe takes a composed one too."""
    if isinstance(path_or_name, Recipe):
        return path_or_name
    path = Path(path_or_name)
    if path.suffix != ".py":
        path = recipes_dir() / f"{path_or_name}.py"
    if not path.is_file():
        known = ", ".join(r.name for r in discover())
        raise FileNotFoundError(
            f"recipe {path_or_name!r} not found; shipped recipes: {known}"
        )
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(
        f"mipo_recipe_{path.stem}_{digest}", path
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: cannot import")
    module = importlib.util.module_from_spec(spec)
    _run_recipe(spec.loader, module, path)
    for attribute, kind in (("objective", Objective), ("train", TrainConfig)):
        if not isinstance(getattr(module, attribute, None), kind):
            raise ConfigError(
                f"{path}: must define `{attribute}` (a {kind.__name__} instance); "
                "see recipes/dpo.py for the shape of a recipe"
            )
    if not callable(getattr(module, "make_objective", None)):
        raise ConfigError(f"{path}: must define a make_objective(...) factory")
    return Recipe(name=path.stem, path=path, module=module)


def _run_recipe(loader: Any, module: Any, path: Path) -> None:
    """Execute a recipe file; a recipe that fails names its own line.

    Raises:
        SyntaxError: as Python reports it (file and line).
        ConfigError: for any other exception the file raises (the user's code:
            ``FILE:LINE: what it raised``); mipo's own user errors pass through.
    """
    try:
        loader.exec_module(module)
    except (SyntaxError, ConfigError):
        raise
    except Exception as error:
        frames = traceback.extract_tb(error.__traceback__)
        lines = [f.lineno for f in frames if Path(f.filename) == path]
        where = f"{path}:{lines[-1]}" if lines else str(path)
        raise ConfigError(
            f"{where}: the recipe raised {type(error).__name__}: {error}; fix the "
            "recipe (--debug shows the traceback)"
        ) from error


def discover(directory: Path | None = None) -> list[Recipe]:
    """Every recipe in ``directory`` (default: the shipped ones), sorted by name."""
    directory = recipes_dir() if directory is None else directory
    return [
        load_recipe(path)
        for path in sorted(directory.glob("*.py"))
        if not path.name.startswith("_")
    ]


__all__ = [
    "COMPOSED_FILE",
    "Recipe",
    "discover",
    "is_composed",
    "load_composed",
    "load_recipe",
    "recipe_from",
    "recipe_of_run",
    "recipes_dir",
    "save_composed",
]
