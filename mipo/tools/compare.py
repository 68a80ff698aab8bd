"""``python -m mipo.compare``: train several recipes on one budget and rank them.

Every recipe runs on the same data, model, seeds and training settings (the
shared ``--train.*`` overrides), and is evaluated at ``--evals`` evenly spaced
points of its run plus before training: held-out reward accuracy, mean
KL(pi||ref) per token, and, where the data has a gold reward (a built-in task,
or ``--gold module:function``), the gold reward of greedy answers with its 95 %
bootstrap interval. The results go to ``compare.json`` and ``compare.md``, with
a reward-KL frontier (gold reward against KL, one curve per method, as in
Figure 2 of the DPO paper, arXiv 2305.18290) and the learning curves.

A killed compare continues where it stopped: a finished run is read back, an
unfinished one resumes from its latest checkpoint (``python -m mipo.train
--resume``), and a run killed before its first checkpoint starts again.

Python API::

    from mipo.tools.compare import compare
    result = compare(["dpo", "simpo"], overrides={"train.max_steps": 20})
"""

import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mipo.training.recipes import Recipe, load_recipe, recipe_from
from mipo.training.stats import bootstrap_mean, wilson_interval

COMPARE_FILE = "compare.json"
REPORT_FILE = "compare.md"


def _as_recipe(entry: Any) -> Recipe:
    """A recipe from a path, a shipped name, a Recipe or an Objective."""
    from mipo.objective import Objective

    if isinstance(entry, Recipe):
        return entry
    if isinstance(entry, Objective):
        return recipe_from(entry, name=f"objective{id(entry) % 10_000}")
    return load_recipe(entry)


def _run_dir(root: Path) -> Path | None:
    """The one run directory under ``root`` (``None`` if there is none)."""
    found = sorted(p for p in root.glob("*/config.json")) if root.is_dir() else []
    return found[-1].parent if found else None


def _finished(run_dir: Path) -> bool:
    return (run_dir / "eval.json").is_file()


def _train_one(
    recipe: Recipe, overrides: dict[str, Any], root: Path, progress: bool
) -> Path:
    """Train (or resume, or read back) one run under ``root``; its directory."""
    from mipo.training.run_dir import checkpoints
    from mipo.training.trainer import train

    run_dir = _run_dir(root)
    if run_dir is not None and _finished(run_dir):
        return run_dir
    if run_dir is not None and checkpoints(run_dir):
        return train(recipe, overrides, resume=run_dir, progress=progress).run_dir
    if run_dir is not None:
        shutil.rmtree(run_dir)
    return train(recipe, overrides, progress=progress).run_dir


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_summary(run_dir: Path) -> dict[str, Any]:
    """What one run contributes: eval points, per-prompt gold scores, speed."""
    from mipo.training.run_dir import EvalScores, read_metrics

    records = read_metrics(run_dir)
    train_records = [r for r in records if "loss" in r]
    evals = [
        r for r in records if "eval/rewards/accuracies" in r or "eval/gold_reward" in r
    ]
    scores = EvalScores(run_dir).data
    seconds = [r["step_seconds"] for r in train_records if "step_seconds" in r]
    speed = [r["tokens_per_second"] for r in train_records if "tokens_per_second" in r]
    return {
        "run_dir": str(run_dir),
        "train": [{k: r[k] for k in ("step", "loss") if k in r} for r in train_records],
        "evals": evals,
        "gold_scores": scores.get("gold", {}),
        "correct": scores.get("correct", {}),
        "step_seconds": sum(seconds) / len(seconds) if seconds else None,
        "train_seconds": sum(seconds),
        "tokens_per_second": sum(speed) / len(speed) if speed else None,
        "final": json.loads((run_dir / "eval.json").read_text()),
    }


def _pooled(values: list[list[float]]) -> dict[str, float] | None:
    """Mean and 95 % bootstrap interval of values pooled over seeds."""
    flat = [v for seed in values for v in seed]
    if not flat:
        return None
    interval = bootstrap_mean(flat)
    return {
        "mean": interval.mean,
        "low": interval.low,
        "high": interval.high,
        "n": interval.n,
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    """Mean over seeds and the standard deviation between seeds (0 for one)."""
    if not values:
        return None
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1)
    return {"mean": mean, "std": var**0.5, "seeds": len(values)}


def _method_summary(name: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate one method's runs over seeds."""
    finals = [r["final"] for r in runs]
    last_step = (
        str(max(int(s) for s in runs[0]["gold_scores"]))
        if runs[0]["gold_scores"]
        else None
    )
    gold = _pooled([r["gold_scores"][last_step] for r in runs]) if last_step else None
    delta = None
    if last_step and "0" in runs[0]["gold_scores"]:
        delta = _pooled([
            [a - b for a, b in zip(r["gold_scores"][last_step], r["gold_scores"]["0"], strict=True)]
            for r in runs
        ])  # fmt: skip
    last_eval = (
        str(max(int(s) for s in runs[0]["correct"])) if runs[0]["correct"] else None
    )
    accuracy = None
    if last_eval:
        flags = [v for r in runs for v in r["correct"][last_eval]]
        interval = wilson_interval(sum(flags), len(flags))
        accuracy = {"mean": interval.mean, "low": interval.low, "high": interval.high,
                    "n": interval.n}  # fmt: skip

    def mean_of(key: str) -> dict[str, float] | None:
        return _spread([f[key] for f in finals if f.get(key) is not None])

    return {
        "method": name,
        "gold_reward": gold,
        "gold_gain": delta,
        "reward_accuracy": accuracy,
        "kl_per_token": mean_of("eval/kl_reverse_per_token"),
        "answer_chars": mean_of("eval/gold_answer_chars")
        if all("eval/gold_answer_chars" in f for f in finals)
        else None,
        "step_seconds": _spread([r["step_seconds"] for r in runs if r["step_seconds"]]),
        "tokens_per_second": _spread(
            [r["tokens_per_second"] for r in runs if r["tokens_per_second"]]
        ),
        "curve": _curve(runs),
        "loss_curve": _loss_curve(runs),
        "runs": [r["run_dir"] for r in runs],
    }


def _curve(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per eval step: gold, KL and reward accuracy, mean and spread over seeds."""
    steps = sorted({int(e["step"]) for r in runs for e in r["evals"]})
    points = []
    for step in steps:
        rows = [e for r in runs for e in r["evals"] if int(e["step"]) == step]
        point: dict[str, Any] = {"step": step}
        for key, out in (
            ("eval/gold_reward", "gold"),
            ("eval/kl_reverse_per_token", "kl"),
            ("eval/rewards/accuracies", "accuracy"),
        ):
            point[out] = _spread([row[key] for row in rows if row.get(key) is not None])
        points.append(point)
    return points


def _loss_curve(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training loss's moving average per step, mean and spread over seeds."""
    from mipo.training.summary import moving_average

    smoothed = []
    for run in runs:
        steps = [r["step"] for r in run["train"]]
        values = moving_average([r["loss"] for r in run["train"]])
        smoothed.append(dict(zip(steps, values, strict=True)))
    common = sorted(set.intersection(*(set(s) for s in smoothed))) if smoothed else []
    return [{"step": step, **_spread([s[step] for s in smoothed])} for step in common]


def pairs_per_step(recipes: Sequence[Recipe], shared: dict[str, Any]) -> dict[str, int]:
    """Recipe name -> preference pairs per optimiser step and process
    (``batch_size`` x ``gradient_accumulation_steps``) under the shared
    overrides: what each method sees for the same number of steps."""
    from mipo.training.cli import resolve

    sizes = {}
    for recipe in recipes:
        config, _, _ = resolve(recipe, shared)
        sizes[recipe.name] = config.batch_size * config.gradient_accumulation_steps
    return sizes


def budget_warning(sizes: dict[str, int]) -> str | None:
    """One line when the recipes would see different numbers of pairs per step
    (a recipe's own ``gradient_accumulation_steps`` the budget leaves alone)."""
    if len(set(sizes.values())) <= 1:
        return None
    listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
    return (
        f"mipo: warning: compare: the recipes see different numbers of pairs per "
        f"optimiser step ({listed}), so equal steps are not an equal budget; set "
        "--train.batch_size and --train.gradient_accumulation_steps for all"
    )


def compare(
    recipes: Sequence[Any],
    *,
    overrides: dict[str, Any] | None = None,
    seeds: Sequence[int] = (0,),
    evals: int = 3,
    out_dir: str | Path = "compare",
    gold: str = "",
    title: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Train every recipe for every seed on the same budget; write and return the
    comparison.

    Args:
        recipes: paths, shipped names, :class:`~mipo.training.recipes.Recipe` objects or
            :class:`~mipo.objective.Objective` objects (composed in Python).
        overrides: ``train.*`` overrides shared by every run (the budget).
        seeds: one run per recipe and seed.
        evals: evaluation points spread over each run (plus one before training).
        out_dir: where runs, ``compare.json``, ``compare.md`` and plots go.
        gold: ``module:function`` gold reward for data without a built-in one.
        title: the report's title (default: the data set).
        progress: show progress bars.
    """
    from tqdm.auto import tqdm

    from mipo.training.cli import resolve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [_as_recipe(r) for r in recipes]
    names = [r.name for r in chosen]
    if len(set(names)) != len(names):
        raise ValueError(f"compare: recipe names must be distinct, got {names}")
    shared = dict(overrides or {})
    if gold:
        shared["train.gold"] = gold
    sizes = pairs_per_step(chosen, shared)
    if (warning := budget_warning(sizes)) is not None:
        print(warning, file=sys.stderr)
    jobs = [(recipe, seed) for recipe in chosen for seed in seeds]
    bar = tqdm(total=len(jobs), desc="compare", disable=not progress, position=0)
    per_method: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    started = time.perf_counter()
    for index, (recipe, seed) in enumerate(jobs, start=1):
        config, _, _ = resolve(recipe, shared)
        every = max(1, config.max_steps // max(evals, 1)) if config.max_steps else 0
        run_overrides = {
            **shared,
            "train.seed": seed,
            "train.output_dir": str(out / "runs" / recipe.name / f"seed{seed}"),
            "train.eval_steps": every,
            "train.save_steps": every,
        }
        bar.set_postfix_str(f"[{index}/{len(jobs)}] {recipe.name} seed {seed}")
        if progress:
            print(
                f"compare [{index}/{len(jobs)}]: {recipe.name}, seed {seed}",
                file=sys.stderr,
            )
        run_dir = _train_one(
            recipe, run_overrides, out / "runs" / recipe.name / f"seed{seed}", progress
        )
        per_method[recipe.name].append(_run_summary(run_dir))
        bar.update(1)
    bar.close()
    config, _, _ = resolve(chosen[0], shared)
    result = {
        "title": title or f"mipo compare on {config.dataset}",
        "out_dir": str(out),
        "budget": {
            **{
                k: v
                for k, v in dataclasses.asdict(config).items()
                if k not in ("output_dir", "seed")
            },  # fmt: skip
            "seeds": list(seeds),
            "evals": evals,
            "pairs_per_step": sizes,
        },
        "methods": [_method_summary(name, per_method[name]) for name in names],
        "seconds": time.perf_counter() - started,
        "train_seconds": sum(r["train_seconds"] for n in names for r in per_method[n]),
        "runs": sum(len(per_method[n]) for n in names),
        "has_gold": any(per_method[n][0]["gold_scores"] for n in names),
    }
    (out / COMPARE_FILE).write_text(json.dumps(result, indent=1, default=str) + "\n")
    from mipo.tools.compare_report import write_plots, write_report

    write_plots(result, out)
    write_report(result, out)
    return result


PAGE = "docs/which_method.md"
"""The page ``--which-method`` rewrites (between its ``compare:`` markers)."""

WHICH_METHOD_RECIPES = ("dpo", "rpo", "simpo", "tdpo", "otpo", "ti_dpo")
"""The methods of the "Which method works here?" page (``--which-method``)."""

WHICH_METHOD_BUDGET = {
    "train.dataset": "builtin:sentiment?n=1200",
    "train.max_examples": 0,
    "train.eval_max_examples": 0,
    "train.eval_max_new_tokens": 32,
    "train.optimizer": "adamw",
    "train.learning_rate": 5e-6,
    "train.lr_schedule": "constant",
    "train.warmup_steps": 3,
    "train.max_steps": 16,
    "train.batch_size": 8,
    "train.gradient_accumulation_steps": 1,  # OTPO's recipe accumulates 16
    "train.max_length": 128,
    "train.max_prompt_length": 96,
}
"""The shared budget of that page: 16 steps of 8 pairs, about 2 min a run on a
2-core CPU for DPO."""

USAGE = """usage: python -m mipo.compare RECIPE [RECIPE ...] [--seeds 0,1] [--evals 3]
       [--out DIR] [--gold module:function] [--title TEXT] [--train.KEY=VALUE ...]
       [--debug]
       python -m mipo.compare --which-method [--seeds 0,1] [--out DIR]

Trains every RECIPE (a path or a shipped name) for every seed on the same
--train.* budget, evaluates each at --evals points plus before training, and
writes compare.json, compare.md, frontier.png and curves.png to --out
(default: compare). Run it again to continue a killed compare.
--which-method runs the comparison of docs/which_method.md (the recipes
and budget of mipo.tools.compare.WHICH_METHOD_*) and rewrites that page's
results section and figures."""


def parse_arguments(argv: list[str]) -> dict[str, Any]:
    """The keyword arguments of :func:`compare` from a command line.

    Raises:
        OverrideError: on an unknown option or a missing value.
    """
    from mipo.training.cli import OverrideError

    options: dict[str, Any] = {"recipes": [], "overrides": {}}
    values = {"--seeds", "--evals", "--out", "--gold", "--title"}
    items = iter(argv)
    for item in items:
        if item == "--which-method":
            options["which_method"] = True
            continue
        key, sep, value = item.partition("=")
        if key.startswith("--train."):
            if not sep:
                raise OverrideError(f"{key}: expected {key}=VALUE")
            options["overrides"][key.removeprefix("--")] = value
        elif key in values:
            if not sep:
                value = next(items, None)
                if value is None:
                    raise OverrideError(f"{key}: needs a value")
            options[key.removeprefix("--")] = value
        elif item.startswith("-"):
            raise OverrideError(
                f"{item}: unknown option (known: {', '.join(sorted(values))}, --train.KEY=VALUE)"
            )
        else:
            options["recipes"].append(item)
    if "seeds" in options:
        try:
            options["seeds"] = [int(s) for s in options["seeds"].split(",")]
        except ValueError:
            raise OverrideError(
                f"--seeds: expected integers like 0,1, got {options['seeds']!r}"
            ) from None
    if "evals" in options:
        if not options["evals"].isdigit() or int(options["evals"]) < 1:
            raise OverrideError(
                f"--evals: expected an integer >= 1, got {options['evals']!r}"
            )
        options["evals"] = int(options["evals"])
    if "out" in options:
        options["out_dir"] = options.pop("out")
    if options.pop("which_method", False):
        if options["recipes"] or options["overrides"]:
            raise OverrideError("--which-method takes no recipes and no --train.* keys")
        options["recipes"] = list(WHICH_METHOD_RECIPES)
        options["overrides"] = dict(WHICH_METHOD_BUDGET)
        options.setdefault("evals", 2)
        options.setdefault("out_dir", "build/which_method")
        options.setdefault("title", "Which method works here?")
        options["page"] = PAGE
    if not options["recipes"]:
        raise OverrideError(
            "no recipe given; python -m mipo.compare RECIPE [RECIPE ...] "
            "(--help lists the options)"
        )
    return options


def main(argv: list[str] | None = None) -> None:
    """``python -m mipo.compare`` (errors in the common style of
    :mod:`mipo.training.command`)."""
    from mipo.training.command import run_command

    run_command(_main, sys.argv[1:] if argv is None else argv)


def _check_recipes(recipes: list[Any], overrides: dict[str, Any]) -> None:
    """Load every recipe and apply the keys before the first run trains."""
    from mipo.training.cli import resolve
    from mipo.training.recipes import load_recipe

    for recipe in recipes:
        resolve(load_recipe(recipe), overrides)


def _main(args: list[str]) -> None:
    if args and args[0] in ("-h", "--help"):
        print(USAGE)
        return
    options = parse_arguments(args)
    _check_recipes(options["recipes"], options["overrides"])
    page = options.pop("page", None)
    result = compare(**options)
    if page is not None:
        from mipo.tools.compare_report import update_page

        print(f"page: {update_page(result, Path(page))}")
    from mipo.tools.compare_report import table

    print(table(result))
    print(f"outputs: {result['out_dir']}")


if __name__ == "__main__":
    main()


__all__ = [
    "COMPARE_FILE",
    "REPORT_FILE",
    "budget_warning",
    "compare",
    "main",
    "pairs_per_step",
    "parse_arguments",
]
