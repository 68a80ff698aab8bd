"""Three-step runs of every recipe on a tiny random Llama, for the numerical
identity check of ``tests/test_identity.py``.

Each run trains 3 optimiser steps (fp32, CPU, one thread, fixed seeds) and
records every logged metric except the timing ones, the final evaluation, and
the L1 norm and sum of every tensor file in the last checkpoint. The baseline in
``tests/data/identity_baseline.json`` was written before the trainer was split
into services, a fit loop and a batch builder; the test reruns the same runs and
compares.

Regenerate the baseline only when a change is *meant* to change the numbers
(a primitive's maths, a recipe's defaults)::

    python tests/identity_runs.py --write
"""

import argparse
import json
import math
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BASELINE = HERE / "data" / "identity_baseline.json"
SKIPPED_KEYS = {"tokens_per_second", "peak_memory_mb", "step_seconds"}
"""Metrics that depend on the machine, not on the maths."""

KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile")
"""CPU features that change which float32 kernels torch runs, and so the last bits
of a sum."""


def machine_fingerprint() -> str:
    """The CPU model, the kernel-relevant features and torch's dispatch level: two
    machines with the same fingerprint ran bit-identical runs here; two with
    different ones differ by float32 rounding (about 1e-6 relative)."""
    import platform

    info = Path("/proc/cpuinfo")
    text = info.read_text() if info.is_file() else ""
    model = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    words = set(text.split())
    flags = ",".join(flag for flag in KERNEL_FLAGS if flag in words)
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{platform.machine()} | {model} | {capability} | {flags}"


def weights_rows(count: int = 16) -> list[dict[str, Any]]:
    """Plain-text pairs with per-token weights, KL weights and example weights
    (the tiny tokenizer is byte level: one token per byte, plus the EOS)."""
    rows = []
    for i in range(count):
        chosen, rejected = f" {i + 1}", f" {i + 2}0"
        n_chosen, n_rejected = len(chosen.encode()) + 1, len(rejected.encode()) + 1
        rows.append(
            {
                "prompt": f"{i} + 1 =",
                "chosen": chosen,
                "rejected": rejected,
                "chosen_weight": [0.5 + 0.1 * ((i + t) % 5) for t in range(n_chosen)],
                "rejected_weight": [
                    1.2 - 0.1 * ((i * t) % 4) for t in range(n_rejected)
                ],
                "chosen_kl_weight": [0.3 + 0.05 * t for t in range(n_chosen)],
                "rejected_kl_weight": [0.9 - 0.05 * t for t in range(n_rejected)],
                "weight": 0.5 + 0.25 * (i % 3),
            }
        )
    return rows


def _base(model: Path, data: Path, out: Path) -> dict[str, Any]:
    return {
        "train.model": str(model),
        "train.dataset": str(data),
        "train.output_dir": str(out),
        "train.max_steps": 3,
        "train.max_examples": 0,
        "train.batch_size": 2,
        "train.learning_rate": 1e-3,
        "train.warmup_steps": 0,
        "train.warmup_ratio": 0.0,
        "train.eval_fraction": 0.25,
        "train.eval_max_examples": 4,
        "train.eval_max_new_tokens": 2,
        "train.max_length": 64,
        "train.max_prompt_length": 32,
        "train.seed": 3,
    }


def run_specs() -> dict[str, tuple[str, dict[str, Any], str]]:
    """name -> (recipe, extra overrides, mode); mode ``plain`` trains straight
    through, ``resume`` stops after 2 steps and resumes, ``builtin`` trains on
    ``builtin:arithmetic`` (gold-reward evaluation)."""
    from mipo.recipes import discover  # the stable public paths, before and after

    specs: dict[str, tuple[str, dict[str, Any], str]] = {
        recipe.name: (recipe.name, {}, "plain") for recipe in discover()
    }
    specs |= {
        "dpo-builtin": ("dpo", {"train.max_examples": 24}, "builtin"),
        "dpo-accumulation": (
            "dpo",
            {"train.gradient_accumulation_steps": 4, "train.eval_steps": 2},
            "plain",
        ),
        "dpo-precomputed": ("dpo", {"train.reference": "precomputed"}, "plain"),
        "dpo-padding-free": ("dpo", {"train.padding_free": True}, "plain"),
        "dpo-lora": (
            "dpo",
            {"train.lora_rank": 4, "train.reference": "adapter_off"},
            "plain",
        ),
        "dpo-rmsprop-constant": (
            "dpo",
            {
                "train.optimizer": "rmsprop",
                "train.lr_schedule": "constant",
                "train.warmup_steps": 2,
                "train.max_grad_norm": 0.0,
                "train.logging_steps": 2,
            },
            "plain",
        ),
        "dpo-resume": ("dpo", {"train.save_steps": 1}, "resume"),
        "sparsepo-learned-indp": (
            "sparsepo",
            {
                "objective.masks": "LearnedMasks(independent_masks=True)",
                "objective.l1_reward": 0.001,
                "objective.l1_kl": 0.001,
            },
            "plain",
        ),
        "sparsepo-learned-resume": (
            "sparsepo",
            {"objective.masks": "LearnedMasks()", "train.save_steps": 1},
            "resume",
        ),
        "sparsepo-activation": (
            "sparsepo",
            {"objective.masks": "ActivationMasks()"},
            "plain",
        ),
        "mi_dpo_learned_prior-fit": (
            "mi_dpo_learned_prior",
            {
                "objective.prior_update_every": 2,
                "objective.fit_steps": 5,
                "objective.sample_max_new_tokens": 4,
                "train.save_steps": 1,
            },
            "resume",
        ),
        "ti_dpo-sequence": (
            "ti_dpo",
            {"objective.span": "sequence", "objective.alpha_triplet": 5.0},
            "plain",
        ),
    }
    return specs


def _checkpoint_summary(run_dir: Path) -> dict[str, float]:
    from safetensors.torch import load_file

    summary: dict[str, float] = {}
    steps = [int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*")]
    checkpoint = run_dir / f"checkpoint-{max(steps)}"
    for path in sorted(checkpoint.glob("*.safetensors")):
        tensors = load_file(str(path))
        l1 = sum(float(t.double().abs().sum()) for t in tensors.values())
        total = sum(float(t.double().sum()) for t in tensors.values())
        summary[f"{path.name}/l1"] = l1
        summary[f"{path.name}/sum"] = total
    return summary


def run_one(name: str, model: Path, data: Path, out: Path) -> dict[str, Any]:
    """Train the run ``name`` and return what the baseline records of it."""
    from mipo.train import train

    recipe, extra, mode = run_specs()[name]
    overrides = {**_base(model, data, out / name), **extra}
    if mode == "builtin":
        overrides["train.dataset"] = "builtin:arithmetic"
    if mode == "resume":
        first = train(recipe, overrides, stop_after=2, progress=False)
        result = train(resume=first.run_dir, progress=False)
    else:
        result = train(recipe, overrides, progress=False)
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [
        {k: v for k, v in json.loads(line).items() if k not in SKIPPED_KEYS}
        for line in lines
    ]
    return {
        "metrics": records,
        "eval": result.eval,
        "checkpoint": _checkpoint_summary(result.run_dir),
    }


def build_inputs(root: Path) -> tuple[Path, Path]:
    """The tiny model directory and the weights data file under ``root``."""
    sys.path.insert(0, str(HERE))
    from tiny import build_tiny_model_dir

    model = build_tiny_model_dir(root / "model")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in weights_rows()))
    return model, data


def differences(
    want: Any, got: Any, path: str = "", *, scaled: bool = False
) -> list[tuple[str, float]]:
    """``(path, |want - got|)`` for every number (divided by ``max(1, |want|)``
    when ``scaled``); ``inf`` for a structural mismatch (a missing key, another
    string)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for key in sorted(set(want) | set(got)):
            if key not in want or key not in got:
                out.append((f"{path}/{key}", math.inf))
            else:
                out += differences(want[key], got[key], f"{path}/{key}", scaled=scaled)
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [(path, math.inf)]
        return [
            d
            for i, (a, b) in enumerate(zip(want, got, strict=True))
            for d in differences(a, b, f"{path}[{i}]", scaled=scaled)
        ]
    numbers = (int, float)
    if isinstance(want, numbers) and isinstance(got, numbers):
        if math.isnan(want) and math.isnan(got):
            return [(path, 0.0)]
        scale = max(1.0, abs(float(want))) if scaled else 1.0
        return [(path, abs(float(want) - float(got)) / scale)]
    return [(path, 0.0 if want == got else math.inf)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite the baseline")
    parser.add_argument("--only", nargs="*", default=None, help="run names")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))  # this checkout's mipo, not an installed one
    torch.set_num_threads(1)
    names = args.only or sorted(run_specs())
    results: dict[str, Any] = {}
    report: Callable[[str], None] = print
    with tempfile.TemporaryDirectory() as tmp:
        model, data = build_inputs(Path(tmp))
        for name in names:
            try:
                results[name] = run_one(name, model, data, Path(tmp) / "runs")
            except Exception as error:  # a run that fails must fail the same way
                results[name] = {"error": f"{type(error).__name__}: {error}"}
            report(f"{name}: done")
    if args.write:
        BASELINE.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "torch": torch.__version__,
            "machine": machine_fingerprint(),
            "runs": results,
        }
        BASELINE.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n")
        report(f"wrote {BASELINE}")
        return
    baseline = json.loads(BASELINE.read_text())["runs"]
    for name in names:
        worst = max(
            (d for _, d in differences(baseline[name], results[name])), default=0
        )
        report(f"{name}: max abs difference {worst:.3g}")


if __name__ == "__main__":
    main()
