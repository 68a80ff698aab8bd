"""Dotted command-line overrides for a recipe: ``--train.FIELD=VALUE`` and
``--objective.NAME=VALUE``.

``--train.*`` keys are the fields of :class:`~mipo.training.config.TrainConfig`;
``--objective.*`` keys are the keyword arguments of the recipe's
``make_objective``. Values are converted to the annotated type (``int``,
``float``, ``bool``, ``str``, ``Literal[...]``, ``... | None``); a value that does
not fit, or a key that does not exist, raises one :class:`OverrideError` naming
the key and what was expected. ``--config FILE.yaml`` holds the same dotted keys
(``train.learning_rate: 1e-6``), or TRL's flat names (``learning_rate: 1e-6``,
``beta: 0.1``, ``per_device_train_batch_size: 8``) where one group has the
name, and TRL's own settings translated (:mod:`mipo.training.trl_config`); keys
given on the command line win. An unknown key suggests the closest, and an
error in the file names its ``FILE:LINE``.
"""

import contextlib
import dataclasses
import difflib
import inspect
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, final

from mipo.errors import ConfigError
from mipo.objective import Objective
from mipo.training.config import TrainConfig
from mipo.training.primitive_syntax import PrimitiveSyntaxError, parse_primitive
from mipo.training.recipes import Recipe
from mipo.training.trl_config import TRL_NAMES, TRLKeyError, check_loss_type, translate

GROUPS = ("train", "objective")


class OverrideError(ConfigError):
    """A dotted override names an unknown key or carries a value of the wrong
    type, or a config file does not parse; the message names the key or file."""


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class CommandLine:
    """The parsed command line of ``python -m mipo.train``.

    Args:
        recipe: recipe path or shipped name (``None`` with ``--resume``).
        overrides: dotted key -> raw value (strings from the command line, typed
            values from a YAML file), command line applied last.
        resume: a run directory to continue.
        show_help: ``--help`` was given.
        preset: a named set of overrides the recipe defines (``--preset NAME``);
            the config file and the command line win over it.
        origins: ``FILE:LINE`` of each key the config file set (and the command
            line did not), for errors that name the line.
    """

    recipe: str | None
    overrides: dict[str, Any] = field(default_factory=dict)
    resume: str | None = None
    show_help: bool = False
    preset: str | None = None
    origins: dict[str, str] = field(default_factory=dict)


def parse_command_line(argv: list[str]) -> CommandLine:
    """Split ``argv`` into the recipe, ``--config``, ``--resume`` and dotted keys."""
    recipe: str | None = None
    config_file: str | None = None
    resume: str | None = None
    preset: str | None = None
    show_help = False
    command_line: dict[str, Any] = {}
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            show_help = True
        elif arg in ("--config", "--resume", "--preset") or arg.startswith(
            ("--config=", "--resume=", "--preset=")
        ):
            name, _, value = arg.partition("=")
            if not value:
                if not args:
                    raise OverrideError(f"{name}: expects a value")
                value = args.pop(0)
            if name == "--config":
                config_file = value
            elif name == "--preset":
                preset = value
            else:
                resume = value
        elif arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if not args or args[0].startswith("--"):
                    raise OverrideError(f"--{key}: expects a value (--{key}=VALUE)")
                value = args.pop(0)
            command_line[key] = value
        elif recipe is None:
            recipe = arg
        else:
            raise OverrideError(
                f"unexpected argument {arg!r} (the recipe is already {recipe!r}); "
                f"overrides look like --train.learning_rate=1e-6"
            )
    from_file = read_config_file(config_file) if config_file else ConfigFile()
    overrides = {**from_file.keys, **_translated(command_line, lambda key: f"--{key}")}
    origins = {k: v for k, v in from_file.origins.items() if k not in command_line}
    return CommandLine(
        recipe=recipe,
        overrides=overrides,
        resume=resume,
        show_help=show_help,
        preset=preset,
        origins=origins,
    )


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ConfigFile:
    """A config file's keys (TRL's names translated) and ``FILE:LINE`` of each
    key it wrote as is."""

    keys: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)


def read_config_file(path: str | Path) -> ConfigFile:
    """:func:`load_config_file` with TRL's names translated
    (:mod:`mipo.training.trl_config`) and the line of every key."""
    keys = load_config_file(path)
    lines = _key_lines(Path(path))

    def origin(key: str) -> str:
        line = lines.get(key)
        return f"{path}:{line}" if line else str(path)

    translated = _translated(keys, lambda key: f"{origin(key)}: --{key}")
    origins = {key: origin(key) for key in translated if key in keys}
    return ConfigFile(keys=translated, origins=origins)


def _translated(keys: dict[str, Any], where: Callable[[str], str]) -> dict[str, Any]:
    """``keys`` with TRL's settings as mipo keys; a warning per dropped key, and
    errors, that start with ``where(key)`` (``FILE:LINE: --key`` or ``--key``)."""
    from mipo.training.command import print_warning

    try:
        return translate(keys, lambda key, text: print_warning(f"{where(key)} {text}"))
    except TRLKeyError as error:
        raise OverrideError(f"{where(error.key)}: {error.problem}") from None


def check_file_keys(recipe: Recipe, command: CommandLine) -> None:
    """Check each key the config file set on its own, so an error names the
    file and line (``FILE:LINE: --key: ...``)."""
    for key, origin in command.origins.items():
        try:
            split_overrides(recipe, {key: command.overrides[key]})
        except ConfigError as error:
            raise OverrideError(f"{origin}: {error}") from None


def with_preset(
    recipe: Recipe, preset: str | None, overrides: dict[str, Any]
) -> dict[str, Any]:
    """``overrides`` on top of the recipe's preset ``preset`` (none: unchanged).

    Raises:
        OverrideError: when the recipe has no such preset (the message lists them).
    """
    if preset is None:
        return dict(overrides)
    if preset not in recipe.presets:
        known = ", ".join(sorted(recipe.presets)) or "none"
        raise OverrideError(
            f"--preset {preset}: recipe {recipe.name!r} has no such preset (presets: "
            f"{known})"
        )
    return {**recipe.presets[preset], **overrides}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read dotted keys from a YAML (or JSON) file: either flat
    (``train.learning_rate: 1e-6``) or nested (``train: {learning_rate: 1e-6}``).

    Raises:
        OverrideError: a missing file or folder, a file that does not parse
            (``FILE:LINE: ...``), or one that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise OverrideError(f"--config: {path} {what}; give a YAML or JSON file")
    data = _parse_config(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise OverrideError(
            f"{path}: expected a mapping of dotted keys (train.learning_rate: 1e-6), "
            f"got a {type(data).__name__}"
        )
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in GROUPS and isinstance(value, dict):
            for inner, inner_value in value.items():
                flat[f"{key}.{inner}"] = inner_value
        else:
            flat[str(key)] = value
    return flat


def _key_lines(path: Path) -> dict[str, int]:
    """The 1-based line of each key of a YAML config file (nested group keys as
    ``group.key``); empty for JSON or a file that is not a mapping."""
    if path.suffix == ".json":
        return {}
    import yaml

    root = yaml.compose(path.read_text(encoding="utf-8-sig"))
    if not isinstance(root, yaml.MappingNode):
        return {}
    lines: dict[str, int] = {}
    for key, value in root.value:
        lines[str(key.value)] = key.start_mark.line + 1
        if key.value in GROUPS and isinstance(value, yaml.MappingNode):
            for inner, _ in value.value:
                lines[f"{key.value}.{inner.value}"] = inner.start_mark.line + 1
    return lines


def _parse_config(path: Path) -> Any:
    """The parsed YAML or JSON of ``path``; errors name ``FILE:LINE``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise OverrideError(
            f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8"
        ) from None
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            raise OverrideError(
                f"{path}:{error.lineno}: not valid JSON ({error.msg}); fix the file"
            ) from None
    import yaml  # PyYAML comes with transformers

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise OverrideError(
            f"{where}: not valid YAML ({problem}); fix the file"
        ) from None


def train_fields() -> dict[str, tuple[Any, Any]]:
    """TrainConfig field -> (annotation, default)."""
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: (hints[f.name], f.default) for f in dataclasses.fields(TrainConfig)}


def objective_fields(recipe: Recipe) -> dict[str, tuple[Any, Any]]:
    """make_objective keyword -> (annotation, default)."""
    signature = inspect.signature(recipe.make_objective)
    hints = typing.get_type_hints(recipe.make_objective)
    return {
        name: (hints.get(name, Any), p.default)
        for name, p in signature.parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def convert(value: Any, annotation: Any, key: str) -> Any:
    """``value`` (a string or an already typed value) as ``annotation``; raise
    :class:`OverrideError` naming ``key`` and the expected type otherwise."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if type(None) in options and _is_none(value):
            return None
        for option in options:
            if option is type(None):
                continue
            with contextlib.suppress(OverrideError):
                return convert(value, option, key)
        raise OverrideError(
            f"--{key}={value!r}: expected {describe(annotation)}"
        ) from None
    if origin is Literal:
        choices = typing.get_args(annotation)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise OverrideError(
            f"--{key}={value!r}: expected one of {', '.join(map(repr, choices))}"
        )
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no"):
            return False
        raise OverrideError(f"--{key}={value!r}: expected a bool (true/false)")
    if annotation is int:
        if isinstance(value, bool):
            raise OverrideError(f"--{key}={value!r}: expected an int")
        if isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise OverrideError(f"--{key}={value!r}: expected an int") from None
    if annotation is float:
        if isinstance(value, bool):
            raise OverrideError(f"--{key}={value!r}: expected a float")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise OverrideError(f"--{key}={value!r}: expected a float") from None
    if annotation is str:
        if isinstance(value, str):
            return value
        raise OverrideError(f"--{key}={value!r}: expected a string")
    if isinstance(value, str) and _primitive_annotation(annotation):
        try:
            parsed = parse_primitive(value)
        except PrimitiveSyntaxError as error:
            raise OverrideError(f"--{key}: {error}") from None
        if _fits(parsed, annotation):
            return parsed
        raise OverrideError(
            f"--{key}={value!r}: expected {describe(annotation)}, got "
            f"{type(parsed).__name__ if not isinstance(parsed, type) else parsed.__name__}"
        )
    raise OverrideError(
        f"--{key}: has type {describe(annotation)}, which cannot be set from the "
        f"command line (int, float, bool, str, Literal, None and mipo primitives "
        f"such as UniformPrior() can); edit the recipe or call make_objective in "
        f"Python"
    )


def _primitive_annotation(annotation: Any) -> bool:
    """A primitive interface (``AbstractPrior``) or ``type[AbstractLink]``."""
    if typing.get_origin(annotation) is type:
        (annotation,) = typing.get_args(annotation)
    return isinstance(annotation, type) and annotation.__module__.startswith("mipo.")


def _fits(parsed: Any, annotation: Any) -> bool:
    if typing.get_origin(annotation) is type:
        (base,) = typing.get_args(annotation)
        return isinstance(parsed, type) and issubclass(parsed, base)
    return isinstance(parsed, annotation)


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.lower() in ("none", ""))


def describe(annotation: Any) -> str:
    """A short human-readable name of a type annotation."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(repr(c) for c in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def qualify(key: str, known: dict[str, dict[str, Any]]) -> str:
    """A flat TRL-style key (``learning_rate``, ``beta``) as its dotted key when
    exactly one group has it; a dotted key as is."""
    if "." in key:
        return key
    name = TRL_NAMES.get(key, key)
    groups = [group for group in GROUPS if name in known[group]]
    if len(groups) > 1:
        raise OverrideError(
            f"{key}: ambiguous, both train.{name} and objective.{name} exist; "
            f"write the dotted key"
        )
    return f"{groups[0]}.{name}" if groups else key


def unknown_key(key: str, recipe: Recipe, known: dict[str, dict[str, Any]]) -> str:
    """The one-line error for an unknown key: the closest valid keys, else all."""
    valid = [f"{group}.{name}" for group in GROUPS for name in known[group]]
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
    close = close or difflib.get_close_matches(
        key.rpartition(".")[2], [v.partition(".")[2] for v in valid], n=3, cutoff=0.7
    )
    suggestions = [v for v in valid if v in close or v.partition(".")[2] in close]
    hint = ""
    if suggestions:
        hint = "did you mean " + " or ".join(f"--{v}" for v in suggestions[:3]) + "? "
    listing = "valid keys: " + ", ".join(f"--{v}" for v in valid)
    return f"--{key}: unknown key for recipe {recipe.name!r}; {hint}{listing}"


def split_overrides(
    recipe: Recipe, overrides: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Typed ``(train_changes, objective_kwargs)`` from dotted (or flat TRL-style)
    keys; an unknown key fails with the closest valid keys."""
    known = {"train": train_fields(), "objective": objective_fields(recipe)}
    train_changes: dict[str, Any] = {}
    objective_kwargs: dict[str, Any] = {}
    for raw_key, value in overrides.items():
        if raw_key == "loss_type":  # TRL's: the recipe is the loss
            _check_loss_type(value, recipe)
            continue
        key = qualify(raw_key, known)
        group, _, name = key.partition(".")
        if group not in known or name not in known[group]:
            raise OverrideError(unknown_key(raw_key, recipe, known))
        annotation, _ = known[group][name]
        typed = convert(value, annotation, key)
        (train_changes if group == "train" else objective_kwargs)[name] = typed
    return train_changes, objective_kwargs


def _check_loss_type(value: Any, recipe: Recipe) -> None:
    try:
        check_loss_type(value, recipe.name)
    except TRLKeyError as error:
        raise OverrideError(f"--{error.key}: {error.problem}") from None


def resolve(
    recipe: Recipe, overrides: dict[str, Any]
) -> tuple[TrainConfig, dict[str, Any], Objective]:
    """The recipe's TrainConfig and objective with the overrides applied."""
    train_changes, objective_kwargs = split_overrides(recipe, overrides)
    try:
        config = dataclasses.replace(recipe.train, **train_changes)
    except ValueError as error:
        raise OverrideError(str(error)) from None
    objective = (
        recipe.make_objective(**objective_kwargs)
        if objective_kwargs
        else recipe.objective
    )
    return config, objective_kwargs, objective


def help_text(recipe: Recipe | None) -> str:
    """Usage plus every overridable key with its type and default."""
    lines = [
        "usage: python -m mipo.train RECIPE.py [--train.FIELD=VALUE ...] "
        "[--objective.NAME=VALUE ...] [--preset NAME] [--config FILE.yaml] "
        "[--resume RUN_DIR] [--debug]",
        "",
        "--debug shows the traceback of an error (also MIPO_DEBUG=1); without it",
        "an error is one line, exit status 2 for a usage, data or config error,",
        "1 for a failure at run time, 130 after Ctrl-C or SIGTERM.",
        "",
        "train options (TrainConfig"
        + (f", defaults of {recipe.name}" if recipe else "")
        + "):",
    ]
    defaults = recipe.train if recipe else TrainConfig()
    for name, (annotation, _) in train_fields().items():
        lines.append(
            f"  --train.{name}={getattr(defaults, name)!r}  ({describe(annotation)})"
        )
    if recipe is None:
        lines += ["", "objective options: give a recipe to list them"]
    else:
        lines += ["", f"objective options (make_objective of {recipe.name}):"]
        for name, (annotation, default) in objective_fields(recipe).items():
            lines.append(f"  --objective.{name}={default!r}  ({describe(annotation)})")
        for name, values in sorted(recipe.presets.items()):
            settings = " ".join(f"--{k}={v}" for k, v in values.items())
            lines += ["", f"--preset {name}: {settings}"]
    return "\n".join(lines)


def jsonable(value: Any) -> Any:
    """A JSON-writable form of an override value (reprs for objects)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)


__all__ = [
    "CommandLine",
    "OverrideError",
    "convert",
    "help_text",
    "check_file_keys",
    "load_config_file",
    "read_config_file",
    "parse_command_line",
    "resolve",
    "split_overrides",
]
