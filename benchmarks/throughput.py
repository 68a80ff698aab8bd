"""Training throughput per recipe, as users compare it: tokens/s and MFU.

Every recipe trains a few optimiser steps with ``python -m mipo.train`` (one
process per recipe, the recipe's own objective, optimiser and learning rate) on
SmolLM2-135M-Instruct and the same data and batch shape for all: by default 4
pairs per step of ``builtin:sentiment`` (the TI-DPO main job's data) at the
default lengths (128 tokens, prompt <= 96), no gradient accumulation, no
held-out split, fp32. The first step (warm-up) is dropped; the table gives the
median over the other steps of what the trainer logs in ``metrics.jsonl``:

* ``tokens/s``: non-padding tokens of chosen + rejected per second of the step
  (the trainer's ``tokens_per_second``: loss, backward and optimiser step
  included, services such as anchor sampling too);
* ``MFU``: model-FLOPs utilisation, ``6 * N * tokens/s / peak`` with ``N`` the
  policy's parameter count (tied embedding counted once). ``6 N`` per token is
  the forward and backward of the policy alone (attention FLOPs ignored, as in
  the usual 6N rule): the reference forward (another ``2 N``), sampling and
  any other extra work count as overhead, so methods that do more per token
  show a lower MFU at the same hardware efficiency.

The peak is the best fp32 matrix multiply this process measures with the
same threads (``--peak-size`` cubed, best of 5): the attainable GEMM rate of
these cores, the denominator of the MFU column. For reference the script also
prints the nominal peak from ``lscpu`` (threads x base clock x 64 fp32 FLOPs per
cycle for two AVX-512 FMA units, the base clock being BogoMIPS / 2); when the
measured GEMM beats it, the cores run above their base clock.

Usage (CPU; ~10 minutes for every recipe at 3 steps on a 2-core machine)::

    python benchmarks/throughput.py                       # every recipe
    python benchmarks/throughput.py --recipes dpo ti_dpo --steps 4

Prints a markdown table and writes ``--json`` when given.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


def recipe_names() -> list[str]:
    from mipo.recipes import discover

    return sorted(recipe.name for recipe in discover())


def measured_peak(size: int, threads: int, clock: str) -> float:
    """Best fp32 ``size``-cubed matrix multiply, in FLOP/s (by ``clock``)."""
    torch.set_num_threads(threads)
    now = time.process_time if clock == "cpu" else time.perf_counter
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(5):
        start = now()
        torch.mm(a, b)
        best = min(best, now() - start)
    return 2 * size**3 / best


def theoretical_peak(cores: int) -> tuple[float, str]:
    """``cores`` (the threads used) x base clock x 64 fp32 FLOPs per cycle (2 AVX-512 FMA units x 16
    lanes x 2), the clock read from ``lscpu``'s BogoMIPS (= 2 x base clock)."""
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(
        (k.strip(), v.strip())
        for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)
    )
    clock = float(fields.get("BogoMIPS", "0")) / 2 * 1e6
    flags = fields.get("Flags", "")
    per_cycle = 64 if "avx512f" in flags else 32
    how = (
        f"{cores} cores x {clock / 1e9:.2f} GHz (BogoMIPS/2) x {per_cycle} fp32 "
        f"FLOP/cycle ({'AVX-512' if per_cycle == 64 else 'AVX2'}, 2 FMA units)"
    )
    return cores * clock * per_cycle, how


_WALL_CLOCK = "import sys; from mipo.training.trainer import main; main(sys.argv[1:])"
# The trainer's step clock (mipo.training.metrics) reads this process's CPU time
# instead: with one thread, the seconds a dedicated core would take.
_CPU_CLOCK = (
    "import sys, time, types; import mipo.training.metrics as m; "
    "m.time = types.SimpleNamespace(perf_counter=time.process_time); "
    "from mipo.training.trainer import main; main(sys.argv[1:])"
)


def run_recipe(name: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train ``name`` for ``args.steps`` steps; the trainer's logged records."""
    command = [
        sys.executable,
        "-c",
        _CPU_CLOCK if args.clock == "cpu" else _WALL_CLOCK,
        f"recipes/{name}.py",
        f"--train.model={args.model}",
        f"--train.dataset={args.dataset}",
        f"--train.max_steps={args.steps}",
        f"--train.batch_size={args.batch_size}",
        "--train.gradient_accumulation_steps=1",
        f"--train.max_length={args.max_length}",
        f"--train.max_prompt_length={args.max_prompt_length}",
        "--train.eval_fraction=0.0",
        "--train.max_examples=0",
        "--train.report_to=none",
        f"--train.output_dir={out}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()] or lines or ["?"]
        error = errors[-1]
        error = (
            error[error.find("mipo: error:") :] if "mipo: error:" in error else error
        )
        return {"error": error[:300], "wall_seconds": wall}
    metrics = next(out.glob("*/metrics.jsonl"))
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in records if "tokens_per_second" in r and "loss" in r]
    return {"steps": steps, "wall_seconds": wall}


def summarise(result: dict[str, Any], params: int, peaks: dict[str, float]) -> dict:
    if "error" in result:
        return result
    timed = result["steps"][1:] or result["steps"]
    tps = statistics.median(r["tokens_per_second"] for r in timed)
    return {
        "tokens_per_second": tps,
        "step_seconds": statistics.median(r["step_seconds"] for r in timed),
        "tokens_per_step": statistics.median(r["num_tokens"] for r in timed),
        "peak_rss_mb": max(r["peak_memory_mb"] for r in result["steps"]),
        **{f"mfu_{k}": 6 * params * tps / peak for k, peak in peaks.items()},
        "timed_steps": len(timed),
        "wall_seconds": result["wall_seconds"],
    }


def table(rows: dict[str, dict]) -> str:
    lines = [
        "| recipe | tokens/step | step (s) | tokens/s | MFU | peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error']} | | | | |")
            continue
        lines.append(
            f"| {name} | {row['tokens_per_step']:.0f} | {row['step_seconds']:.2f} | "
            f"{row['tokens_per_second']:.0f} | {100 * row['mfu_measured']:.1f} % | "
            f"{row['peak_rss_mb']:,.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="*", default=None)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dataset", default="builtin:sentiment?n=64")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-prompt-length", type=int, default=96)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="time steps by wall clock (what users see) or by the process's CPU "
        "time (steadier on a shared machine; use with --threads 1)",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from mipo.training.config import TrainConfig
    from mipo.training.models import load_models

    policy = load_models(TrainConfig(model=args.model), frozenset())[0]
    params = sum(p.numel() for p in policy.parameters())
    del policy
    theoretical, how = theoretical_peak(args.threads)
    peaks = {
        "measured": measured_peak(args.peak_size, args.threads, args.clock),
        "theoretical": theoretical,
    }
    load_before = os.getloadavg()
    rows = {}
    for name in args.recipes or recipe_names():
        with tempfile.TemporaryDirectory() as out:
            rows[name] = summarise(run_recipe(name, args, Path(out)), params, peaks)
        print(name, json.dumps(rows[name]), file=sys.stderr, flush=True)
    report = {
        "rows": rows,
        "parameters": params,
        "peak_flops": peaks,
        "theoretical_peak_how": how,
        "settings": vars(args) | {"json": str(args.json)},
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
        },
    }
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    print(
        f"N = {params:,} parameters; peak: measured {peaks['measured'] / 1e9:.0f} GFLOP/s "
        f"(fp32 {args.peak_size}^3 matmul, {args.threads} threads, {args.clock} clock), nominal "
        f"{theoretical / 1e9:.0f} GFLOP/s ({how})\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
