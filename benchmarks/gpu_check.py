"""The Python parts of ``benchmarks/gpu_check.sh``: model, recipes, main job, summary.

Subcommands (each writes one JSON file that ``summary`` gathers):

* ``model``: the SmolLM2 the check runs on, in this order: a converted
  SmolLM2-135M-Instruct under ``$MIPO_CACHE`` (or ``~/.cache/mipo``); else the
  GGUF there (or its parts ``SmolLM2-135M-Instruct.Q4_1.gguf.part-*``, joined),
  converted by :mod:`mipo.training.assets`; else a randomly initialised model with the
  SmolLM2-135M config and tokenizer from ``benchmarks/wheels/smollm2-skeleton``
  (same shapes, so time and memory are those of SmolLM2; losses are not);
  ``--dry-run``: the tiny random Llama of ``tests/tiny.py``.
* ``recipes``: every shipped recipe, ``--steps`` optimiser steps at
  ``--precision``; passes when every loss is finite and the last differs from
  the first.
* ``main-job``: ``python -m mipo.train recipes/ti_dpo.py`` at the recipe's
  defaults (``--dry-run``: 2 steps on the tiny model), timed, with its metrics.
* ``summary``: ``gpu_check.json`` and ``gpu_check.md`` from the parts' JSON and
  logs.
"""

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SKELETON = ROOT / "benchmarks" / "wheels" / "smollm2-skeleton"
PARTS = ("model", "memory", "otpo", "dpo_vs_trl", "recipes", "main_job")


def _write(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def resolve_model(out: Path, dry_run: bool) -> dict[str, str]:
    """Where the SmolLM2 (or its stand-in) is, and what its weights are."""
    if dry_run:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import build_tiny_model_dir

        path = build_tiny_model_dir(out / "tiny-llama")
        return {"path": str(path), "weights": "tiny random Llama (dry run)"}
    from mipo.training.assets import DIR_NAME, MARKER, cache_root

    cache = cache_root()
    converted = cache / DIR_NAME
    if (converted / MARKER).is_file():
        return {"path": str(converted), "weights": f"converted SmolLM2 at {converted}"}
    gguf = cache / "SmolLM2-135M-Instruct.Q4_1.gguf"
    parts = sorted(cache.glob(gguf.name + ".part-*"))
    if not gguf.is_file() and parts:
        with gguf.open("wb") as joined:
            for part in parts:
                joined.write(part.read_bytes())
    if gguf.is_file():
        from mipo.training.assets import smollm2_dir

        path = smollm2_dir()
        return {"path": str(path), "weights": f"SmolLM2 converted here from {gguf}"}
    if (SKELETON / "config.json").is_file():
        return _random_smollm2(out / "smollm2-random")
    raise SystemExit(
        f"no SmolLM2: neither {converted} (converted), {gguf} (GGUF) nor "
        f"{SKELETON} (config + tokenizer, from benchmarks/gpu_wheels.sh)"
    )


def _random_smollm2(path: Path) -> dict[str, str]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(SKELETON)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(SKELETON).save_pretrained(path)
    for name in ("generation_config.json", "chat_template.jinja"):
        if (SKELETON / name).is_file():
            shutil.copy(SKELETON / name, path / name)
    return {
        "path": str(path),
        "weights": "RANDOM init with SmolLM2-135M's config and tokenizer (the "
        "converted model was not carried): time and memory are SmolLM2's, "
        "losses are not",
    }


def _pairs_file(model: str, path: Path, count: int) -> Path:
    """Arithmetic pairs with every per-token weight column, one weight per
    completion token of this model's tokenizer (EOS included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)

    def length(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1

    rows = []
    for i in range(count):
        chosen, rejected = f" {i + 1}", f" {2 * i + 3}0"
        n_chosen, n_rejected = length(chosen), length(rejected)
        rows.append(
            {
                "prompt": f"{i} + 1 =",
                "chosen": chosen,
                "rejected": rejected,
                "chosen_weight": [1.0 - 0.1 * t for t in range(n_chosen)],
                "rejected_weight": [0.5 + 0.1 * t for t in range(n_rejected)],
                "chosen_kl_weight": [0.3 + 0.1 * t for t in range(n_chosen)],
                "rejected_kl_weight": [0.9 - 0.1 * t for t in range(n_rejected)],
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _part_cap(margin: float) -> float | None:
    """The part's time cap from gpu_check.sh (``PART_CAP``), less ``margin``."""
    cap = os.environ.get("PART_CAP")
    return None if cap is None else max(1.0, float(cap) - margin)


def run_recipes(args: argparse.Namespace) -> None:
    """Every recipe ``--steps`` steps; one JSON row per recipe, written as it goes."""
    from accelerate.state import AcceleratorState, GradientState

    from mipo.training import trainer
    from mipo.training.recipes import discover

    trainer.write_plots = lambda _run_dir: None  # PNGs are not what is checked
    work = Path(args.work)
    data = _pairs_file(args.model, work / "pairs.jsonl", 4 * args.batch_size)
    cap = _part_cap(25.0)
    budget = args.budget_s if cap is None else min(args.budget_s, cap)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    names = args.only or [r.name for r in discover()]
    for name in names:
        if time.perf_counter() - started > budget:
            rows.append({"recipe": name, "status": "skipped (time budget)"})
            continue
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        out = work / "runs" / name
        overrides = {
            "train.model": args.model,
            "train.dataset": str(data),
            "train.output_dir": str(out),
            "train.precision": args.precision,
            "train.max_steps": args.steps,
            "train.max_examples": 0,
            "train.batch_size": args.batch_size,
            "train.gradient_accumulation_steps": 1,
            "train.eval_fraction": 0.0,
            "train.learning_rate": args.learning_rate,
            "train.warmup_steps": 0,
            "train.warmup_ratio": 0.0,
            "train.max_length": 128,
            "train.max_prompt_length": 64,
        }
        start = time.perf_counter()
        try:
            result = trainer.train(name, overrides, progress=False)
            lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
            records = [r for r in map(json.loads, lines) if "loss" in r]
            losses = [float(r["loss"]) for r in records]
            finite = all(math.isfinite(x) for x in losses)
            moved = len(losses) > 1 and losses[-1] != losses[0]
            status = (
                "pass" if finite and moved and len(losses) == args.steps else "FAIL"
            )
            rows.append(
                {
                    "recipe": name,
                    "status": status,
                    "losses": losses,
                    "finite": finite,
                    "moved": moved,
                    "seconds": time.perf_counter() - start,
                    "peak_memory_mb": max(
                        (r.get("peak_memory_mb", 0.0) for r in records), default=None
                    ),
                }
            )
        except Exception as error:  # noqa: BLE001 - a row per failing recipe
            rows.append(
                {
                    "recipe": name,
                    "status": "ERROR",
                    "error": f"{type(error).__name__}: {error}"[:500],
                    "seconds": time.perf_counter() - start,
                }
            )
        shutil.rmtree(out, ignore_errors=True)  # checkpoints: 0.5 GB each
        print(json.dumps(rows[-1]), flush=True)
        _write(args.json, {"precision": args.precision, "rows": rows})
    _write(args.json, {"precision": args.precision, "rows": rows})


def run_main_job(args: argparse.Namespace) -> None:
    """``python -m mipo.train recipes/ti_dpo.py`` at its defaults, timed."""
    out = Path(args.work) / "main_job"
    command = [sys.executable, "-m", "mipo.train", "recipes/ti_dpo.py"]
    command += [f"--train.output_dir={out}"]
    if args.model != "smollm2":
        command += [f"--train.model={args.model}"]
    if args.dry_run:
        command += [
            "--train.max_steps=2",
            "--train.batch_size=2",
            "--train.dataset=builtin:arithmetic",
            "--train.max_examples=16",
            "--train.eval_max_examples=2",
            "--train.eval_max_new_tokens=2",
        ]
    timeout = _part_cap(15.0)
    log_path = Path(args.work, "main_job_train.log")
    start = time.perf_counter()
    with log_path.open("w") as log:
        child = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            returncode: int | str = child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            returncode = f"killed after {timeout:.0f} s (time cap)"
    seconds = time.perf_counter() - start
    text = log_path.read_text(errors="replace")
    result: dict[str, Any] = {
        "command": " ".join(command),
        "returncode": returncode,
        "seconds": seconds,
        "log_tail": text[-1500:],
    }
    runs = sorted(out.glob("*/metrics.jsonl"))
    if runs:
        lines = runs[-1].read_text().splitlines()
        records = [r for r in map(json.loads, lines) if "loss" in r]
        result["steps"] = len(records)
        result["losses"] = [r["loss"] for r in records]
        result["peak_memory_mb"] = max(
            (r.get("peak_memory_mb", 0.0) for r in records), default=None
        )
        result["tokens_per_second"] = [r.get("tokens_per_second") for r in records]
        evaluation = runs[-1].parent / "eval.json"
        if evaluation.is_file():
            result["eval"] = json.loads(evaluation.read_text())
    _write(args.json, result)
    print(json.dumps({k: result[k] for k in ("returncode", "seconds")}), flush=True)


def summary(args: argparse.Namespace) -> None:
    """``gpu_check.json`` and ``gpu_check.md`` in ``--out``."""
    import torch

    work, out = Path(args.work), Path(args.out)
    status = {}
    if Path(work, "status.txt").is_file():
        for line in Path(work, "status.txt").read_text().splitlines():
            part, _, code = line.partition(" ")
            status[part] = code
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    gathered: dict[str, Any] = {
        "machine": f"{gpu}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "dry_run": args.dry_run,
        "status": status,
    }
    markdown = [
        "# GPU check" + (" (CPU DRY RUN at toy size)" if args.dry_run else ""),
        "",
        f"Machine: {gathered['machine']}",
        "",
    ]
    for part in PARTS:
        path = work / f"{part}.json"
        gathered[part] = json.loads(path.read_text()) if path.is_file() else None
        markdown += [f"## {part} (exit {status.get(part, 'not run')})", ""]
        markdown += _part_markdown(part, gathered[part], work / f"{part}.log")
        markdown.append("")
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "gpu_check.json", gathered)
    (out / "gpu_check.md").write_text("\n".join(markdown) + "\n")
    print("\n".join(markdown))


def _part_markdown(part: str, data: Any, log: Path) -> list[str]:
    """A part's result as markdown: its own table, or a short one made here."""
    if part == "model":
        return [f"{data['weights']} ({data['path']})" if data else "no model"]
    if part == "recipes":
        rows = (data or {}).get("rows", [])
        lines = ["| recipe | status | losses | s | peak MB |", "|---|---|---|---|---|"]
        for row in rows:
            losses = " → ".join(f"{x:.4f}" for x in row.get("losses", []))
            peak = row.get("peak_memory_mb")
            lines.append(
                f"| {row['recipe']} | {row['status']} {row.get('error', '')[:150]} | "
                f"{losses} | {row.get('seconds', 0):.1f} | "
                f"{'-' if peak is None else f'{peak:,.0f}'} |"
            )
        passed = sum(row["status"] == "pass" for row in rows)
        return [f"{passed} of {len(rows)} recipes pass.", "", *lines]
    if part == "main_job":
        if not data:
            return ["no result"]
        losses = data.get("losses") or []
        evaluation = data.get("eval") or {}
        keys = (
            "eval/rewards/accuracies",
            "eval/gold_reward_before",
            "eval/gold_reward",
        )
        return [
            f"`{data['command']}`",
            "",
            f"exit {data['returncode']}, {data['seconds']:.0f} s wall, "
            f"{data.get('steps', 0)} steps, loss "
            + (f"{losses[0]:.4f} → {losses[-1]:.4f}" if losses else "-")
            + f", peak {data.get('peak_memory_mb')} MB; "
            + ", ".join(f"{k} {evaluation[k]:.3f}" for k in keys if k in evaluation),
        ]
    table = []
    if log.is_file():
        table = [x for x in log.read_text().splitlines() if x.startswith(("|", "#"))]
    return table or ["no table; see gpu_check.log"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    model = sub.add_parser("model")
    recipes = sub.add_parser("recipes")
    job = sub.add_parser("main-job")
    summ = sub.add_parser("summary")
    for p in (model, recipes, job, summ):
        p.add_argument("--work", required=True)
        p.add_argument("--dry-run", action="store_true")
    for p in (model, recipes, job):
        p.add_argument("--json", required=True)
    for p in (recipes, job):
        p.add_argument("--model", required=True)
    recipes.add_argument("--steps", type=int, default=3)
    recipes.add_argument("--precision", default="bf16")
    recipes.add_argument("--batch-size", type=int, default=4)
    recipes.add_argument("--learning-rate", type=float, default=1e-5)
    recipes.add_argument("--budget-s", type=float, default=150.0)
    recipes.add_argument("--only", nargs="*", help="these recipes only")
    summ.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "model":
        info = resolve_model(Path(args.work), args.dry_run)
        _write(args.json, info)
        print(info["path"])
    elif args.command == "recipes":
        run_recipes(args)
    elif args.command == "main-job":
        run_main_job(args)
    else:
        summary(args)


if __name__ == "__main__":
    main()
