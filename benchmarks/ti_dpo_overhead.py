"""TI-DPO's training step against DPO's (and OTPO's), side by side in one run.

Every variant runs what ``mipo.train`` runs per micro-batch: the batch builder
(services and forwards) for the objective's needs, the objective, and the
backward, on the same micro-batch of the TI-DPO recipe's own data and lengths
(``recipes/ti_dpo.py``: ``train`` and ``make_objective()`` defaults), with
SmolLM2-135M-Instruct. The variants are **interleaved**: each round runs every
variant once, in the same order, so a change of machine load hits all of them
alike; the report gives the median over rounds of each variant's seconds and
of its per-round ratio to the DPO step of the same round.

Variants and parts:

* ``dpo``, ``otpo``, ``tdpo2`` (TI-DPO's base, ``recipes/tdpo.py``): whole steps;
* ``ti_dpo_no_triplet``: TI-DPO with ``gamma=0`` (base + attribution weights);
* ``ti_dpo``: the recipe defaults;
* ``generation``: :func:`mipo.training.services.anchor.generate_anchor` alone;
* ``attribution``: :func:`mipo.training.services.attribution.attribution_scores`
  on the chosen and rejected rows alone (what the trainer runs);
* derived: ``anchor_forwards_and_triplet`` = ti_dpo - ti_dpo_no_triplet -
  generation; ``attribution_weighting`` = ti_dpo_no_triplet - tdpo2.

The random generator is reseeded before every call, so every TI-DPO call
samples the same anchor.

After the rounds, ``phases`` times the parts *inside* the TI-DPO step
(``--phase-calls`` calls, medians of process-CPU seconds): anchor sampling, the
reference forwards (pairs, then anchor), the policy forwards with the head
(pairs, then anchor), the attribution's backward through the policy graph, the
objective and the loss backward. ``--rounds 0`` runs only this.

Usage (CPU)::

    python benchmarks/ti_dpo_overhead.py              # recipe defaults, 7 rounds
    python benchmarks/ti_dpo_overhead.py --rounds 3 --threads 2

Prints one JSON object: medians (wall and process-CPU seconds), per-round
ratios to DPO, the batch's shape and the machine (load average included).
"""

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from mipo.objective import Objective
from mipo.training.batching import BatchBuilder
from mipo.training.config import TrainConfig
from mipo.training.loaders import load_run_data, make_loader
from mipo.training.models import load_models
from mipo.training.recipes import load_recipe
from mipo.training.services import Models, ServiceSetup, build_services
from mipo.training.services.anchor import generate_anchor
from mipo.training.services.attribution import attribution_scores


def recipe_config(model: str, batch_size: int | None) -> TrainConfig:
    """The TI-DPO recipe's ``train`` with the benchmark's model (and batch size)."""
    train = load_recipe("ti_dpo").train
    changes: dict[str, Any] = {"model": model}
    if batch_size is not None:
        changes["batch_size"] = batch_size
    return dataclasses.replace(train, **changes)


def objectives() -> dict[str, Objective]:
    """The variants' objectives, each from its recipe's defaults."""
    ti_dpo = load_recipe("ti_dpo")
    return {
        "dpo": load_recipe("dpo").objective,
        "otpo": load_recipe("otpo").objective,
        "tdpo2": load_recipe("tdpo").objective,
        "ti_dpo_no_triplet": ti_dpo.make_objective(gamma=0.0),
        "ti_dpo": ti_dpo.objective,
    }


def timed(run: Callable[[], Any], seed: int) -> tuple[float, float]:
    """Wall and process-CPU seconds of one call, the RNG seeded first."""
    torch.manual_seed(seed)
    start, start_cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - start, time.process_time() - start_cpu


def machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "load_average": os.getloadavg(),
    }


def build(args: argparse.Namespace) -> tuple[dict[str, Callable[[], Any]], dict, Any]:
    """The timed calls by name, a description of the batch, and the models."""
    variants = objectives()
    config = recipe_config(args.model, args.batch_size)
    needs = frozenset().union(*(o.needs for o in variants.values()))
    policy, reference, tokenizer, _ = load_models(config, needs)
    data = load_run_data(config, tokenizer)
    loader = make_loader(
        data.train, batch_size=config.batch_size, pad_token_id=tokenizer.pad_token_id
    )
    tensors = next(iter(loader)).tensors
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    models = Models(
        policy=policy, reference=reference, pad_token_id=pad, eos_token_id=eos
    )
    setup = ServiceSetup(config=config, models=models, device=torch.device("cpu"))

    def step(objective: Objective) -> Callable[[], None]:
        builder = BatchBuilder(
            needs=objective.needs,
            services=build_services(objective.services, setup),
            chunk_size=config.logps_chunk_size or None,
        )

        def run() -> None:
            policy.zero_grad(set_to_none=True)
            objective(builder(models, tensors)).loss.backward()

        return run

    sampling = variants["ti_dpo"].terms[0].term.sampling

    def anchor() -> Any:
        return generate_anchor(
            policy,
            tensors.prompt_input_ids,
            tensors.prompt_attention_mask,
            sampling=sampling,
            pad_token_id=pad,
            eos_token_id=eos,
        )

    def attribution() -> Any:
        rows = [tensors.chosen, tensors.rejected]
        width = max(s.input_ids.shape[1] for s in rows)
        ids = torch.cat([_pad(s.input_ids, width, pad) for s in rows])
        mask = torch.cat([_pad(s.attention_mask, width, 0) for s in rows])
        return attribution_scores(policy, ids, mask)

    calls = {name: step(objective) for name, objective in variants.items()}
    calls |= {"generation": anchor, "attribution": attribution}
    torch.manual_seed(args.seed)
    sample = anchor()
    batch = {
        "pairs": config.batch_size,
        "dataset": config.dataset,
        "chosen_rejected_padded_length": [
            int(tensors.chosen.input_ids.shape[1]),
            int(tensors.rejected.input_ids.shape[1]),
        ],
        "anchor_padded_length": int(sample.input_ids.shape[1]),
        "tokens_chosen_rejected_anchor": [
            int(s.attention_mask.sum())
            for s in (tensors.chosen, tensors.rejected, sample)
        ],
        "response_tokens_chosen_rejected_anchor": [
            int((s.labels != -100).sum())
            for s in (tensors.chosen, tensors.rejected, sample)
        ],
        "anchor_max_new_tokens": sampling.max_new_tokens,
    }
    return calls, batch, models


def phases(run: Callable[[], None], reference: Any, calls: int, seed: int) -> dict:
    """Median CPU seconds of the parts of ``run`` (a TI-DPO step) over ``calls``
    calls after a warm-up; a part that runs twice per step (pairs, then anchor)
    lists both. Patches the timed functions for the rest of the process."""
    from mipo.training import batching
    from mipo.training.services import anchor, attribution

    parts: dict[str, list[float]] = {}

    def timing(owner: Any, name: str, label: str) -> None:
        real = getattr(owner, name)

        def timed_part(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            out = real(*args, **kwargs)
            parts.setdefault(label, []).append(time.process_time() - start)
            return out

        setattr(owner, name, timed_part)

    timing(anchor, "generate_anchor", "anchor_sampling")
    timing(attribution, "attribution_from_forward", "attribution_backward")
    timing(attribution, "attribution_scores", "attribution_extra_forward")
    timing(batching.CausalLMBody, "forward", "policy_forward_and_head")
    timing(reference, "hidden_states", "reference_forward")
    timing(batching.BatchBuilder, "__call__", "batch_build")
    per_call = []
    for _ in range(calls + 1):
        parts.clear()
        torch.manual_seed(seed)
        start = time.process_time()
        run()
        whole = time.process_time() - start
        parts["objective_and_backward"] = [whole - sum(parts["batch_build"])]
        parts["whole_step"] = [whole]
        per_call.append({k: list(v) for k, v in parts.items()})
    per_call = per_call[1:]
    return {
        k: [statistics.median(c[k][i] for c in per_call) for i in range(len(v))]
        for k, v in per_call[0].items()
    }


def _pad(tensor: torch.Tensor, width: int, value: int) -> torch.Tensor:
    extra = width - tensor.shape[1]
    return torch.nn.functional.pad(tensor, (0, extra), value=value)


def summary(rounds: list[dict[str, tuple[float, float]]]) -> dict[str, Any]:
    """Medians over rounds of each call's seconds, of each step's ratio to the
    same round's DPO step, and of the derived parts."""
    out: dict[str, Any] = {}
    for clock, index in (("wall", 0), ("cpu", 1)):
        seconds = {k: [r[k][index] for r in rounds] for k in rounds[0]}
        derived = {
            "anchor_forwards_and_triplet": [
                r["ti_dpo"][index]
                - r["ti_dpo_no_triplet"][index]
                - r["generation"][index]
                for r in rounds
            ],
            "attribution_weighting": [
                r["ti_dpo_no_triplet"][index] - r["tdpo2"][index] for r in rounds
            ],
        }
        out[f"seconds_{clock}"] = {
            k: statistics.median(v) for k, v in (seconds | derived).items()
        }
        out[f"ratio_to_dpo_{clock}"] = {
            k: statistics.median(a / d for a, d in zip(v, seconds["dpo"], strict=True))
            for k, v in (seconds | derived).items()
            if k != "dpo"
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phase-calls", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    calls, batch, models = build(args)
    load_before = os.getloadavg()
    report: dict[str, Any] = {}
    if args.rounds:
        for run in calls.values():  # warm-up
            timed(run, args.seed)
        rounds = [
            {name: timed(run, args.seed) for name, run in calls.items()}
            for _ in range(args.rounds)
        ]
        report |= summary(rounds)
    if args.phase_calls:
        report["phases_cpu_seconds"] = phases(
            calls["ti_dpo"], models.reference, args.phase_calls, args.seed
        )
    report |= {
        "batch": batch,
        "rounds": args.rounds,
        "model": args.model,
        "machine": machine() | {"load_average_before": load_before},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
