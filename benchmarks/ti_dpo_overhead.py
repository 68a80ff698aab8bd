"""Time one TI-DPO training step against one DPO step on the same model and batch.

Both steps run what ``mipo.train`` runs per micro-batch: the batch builder
(forwards and services) for the objective's needs, the objective, and the
backward. The
TI-DPO step is broken down into its extra parts, each timed on its own:

* ``tdpo2_full_vocab_kl``: the TDPO2 step minus the DPO step (the
  full-vocabulary forward KL of the base loss);
* ``attribution_as_the_trainer_runs_it``: :func:`mipo.training.services.attribution.attribution_scores`
  on the chosen + rejected rows (the trainer skips the anchor rows, whose weights
  are never read; ``attribution_pairs_and_anchor`` times all rows for comparison);
* ``generation``: :func:`mipo.training.services.anchor.generate_anchor` (policy sampling);
* ``anchor_forwards_and_triplet``: TI-DPO minus TI-DPO without the triplet
  (gamma = 0), minus generation: the policy forward with gradient and the
  reference forward on the anchor rows, and the triplet term;
* ``weighting_remainder``: TI-DPO without triplet minus TDPO2 minus attribution.

Usage (CPU; SmolLM2-135M-Instruct from ``mipo.training.assets``, built-in arithmetic data)::

    python benchmarks/ti_dpo_overhead.py --batch-size 4 --repeats 5
    python benchmarks/ti_dpo_overhead.py --model /path/to/hf_dir

Prints one JSON object (median seconds per part, ratios to DPO, machine info).
"""

import argparse
import dataclasses
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from mipo.objective import Objective
from mipo.services import AnchorSampling
from mipo.training.batching import BatchBuilder, stack_sequences
from mipo.training.config import TrainConfig
from mipo.training.loaders import load_run_data, make_loader
from mipo.training.models import load_models
from mipo.training.recipes import load_recipe
from mipo.training.services import Models, ServiceSetup, build_services
from mipo.training.services.anchor import generate_anchor
from mipo.training.services.attribution import attribution_scores


def median_seconds(run: Callable[[], Any], repeats: int, seed: int) -> dict:
    """Median wall and process-CPU seconds of ``run`` over ``repeats`` calls after
    one warm-up call; the RNG is reseeded before each call so sampled anchors
    repeat. On a shared machine the CPU time (with ``--threads 1``) is the
    steadier measure of the work done."""
    wall, cpu = [], []
    for index in range(repeats + 1):
        torch.manual_seed(seed)
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        if index:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu)}


def with_sampling(objective: Objective, sampling: AnchorSampling) -> Objective:
    """``objective`` with every triplet term's anchor sampled by ``sampling``."""
    terms = tuple(
        dataclasses.replace(t, term=dataclasses.replace(t.term, sampling=sampling))
        if hasattr(t.term, "sampling")
        else t
        for t in objective.terms
    )
    return dataclasses.replace(objective, terms=terms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    ti_dpo = load_recipe("ti_dpo")
    full: Objective = ti_dpo.objective
    sampling = AnchorSampling(max_new_tokens=args.max_new_tokens)
    config = TrainConfig(
        model=args.model,
        max_examples=64,
        max_length=ti_dpo.train.max_length,
        max_prompt_length=ti_dpo.train.max_prompt_length,
    )
    policy, reference, tokenizer, _ = load_models(config, full.needs)
    data = load_run_data(config, tokenizer)
    loader = make_loader(
        data.train, batch_size=args.batch_size, pad_token_id=tokenizer.pad_token_id
    )
    tensors = next(iter(loader)).tensors
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    models = Models(
        policy=policy, reference=reference, pad_token_id=pad, eos_token_id=eos
    )

    def step(objective: Objective) -> Callable[[], None]:
        objective = with_sampling(objective, sampling)
        setup = ServiceSetup(config=config, models=models, device=torch.device("cpu"))
        builder = BatchBuilder(
            needs=objective.needs,
            services=build_services(objective.services, setup),
            chunk_size=config.logps_chunk_size or None,
        )

        def run() -> None:
            policy.zero_grad(set_to_none=True)
            objective(builder(models, tensors)).loss.backward()

        return run

    def anchor() -> Any:
        return generate_anchor(
            policy,
            tensors.prompt_input_ids,
            tensors.prompt_attention_mask,
            sampling=sampling,
            pad_token_id=pad,
            eos_token_id=eos,
        )

    torch.manual_seed(args.seed)
    sample = anchor()
    pair_rows = stack_sequences([tensors.chosen, tensors.rejected], pad_token_id=pad)
    all_rows = stack_sequences(
        [tensors.chosen, tensors.rejected, sample], pad_token_id=pad
    )

    def attribution(rows: tuple) -> Callable[[], Any]:
        return lambda: attribution_scores(policy, rows[0], rows[1])

    objectives = {
        "dpo_step": load_recipe("dpo").objective,
        "tdpo2_step": load_recipe("tdpo").objective,  # TI-DPO's base, unweighted
        "ti_dpo_no_triplet_step": ti_dpo.make_objective(gamma=0.0),
        "ti_dpo_step": ti_dpo.objective,
    }
    timings = {
        name: median_seconds(step(objective), args.repeats, args.seed)
        for name, objective in objectives.items()
    }
    timings["attribution_pairs"] = median_seconds(
        attribution(pair_rows), args.repeats, args.seed
    )
    timings["attribution_pairs_and_anchor"] = median_seconds(
        attribution(all_rows), args.repeats, args.seed
    )
    timings["generation"] = median_seconds(anchor, args.repeats, args.seed)

    def breakdown(clock: str) -> dict[str, float]:
        t = {name: value[clock] for name, value in timings.items()}
        return {
            "tdpo2_full_vocab_kl": t["tdpo2_step"] - t["dpo_step"],
            "attribution_as_the_trainer_runs_it": t["attribution_pairs"],
            "generation": t["generation"],
            "anchor_forwards_and_triplet": t["ti_dpo_step"]
            - t["ti_dpo_no_triplet_step"]
            - t["generation"],
            "weighting_remainder": t["ti_dpo_no_triplet_step"]
            - t["tdpo2_step"]
            - t["attribution_pairs"],
            "ratio_ti_dpo_to_dpo": t["ti_dpo_step"] / t["dpo_step"],
            "ratio_ti_dpo_no_triplet_to_dpo": t["ti_dpo_no_triplet_step"]
            / t["dpo_step"],
        }

    response_tokens = [
        int((s.labels != -100).sum())
        for s in (tensors.chosen, tensors.rejected, sample)
    ]
    report = {
        "seconds_median": timings,
        "breakdown_cpu": breakdown("cpu"),
        "breakdown_wall": breakdown("wall"),
        "batch": {
            "pairs": args.batch_size,
            "padded_length": int(tensors.chosen.input_ids.shape[1]),
            "anchor_padded_length": int(sample.input_ids.shape[1]),
            "response_tokens_chosen_rejected_anchor": response_tokens,
            "max_new_tokens": args.max_new_tokens,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
        },
        "model": args.model,
        "repeats": args.repeats,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
