r"""Held-out evaluation of a policy.

* implicit-reward accuracy, mean margin and link loss on held-out pairs, from the
  objective's own rewards $\beta\,r(y)$ (extra terms left out) (``rewards/accuracies`` counts pairs with
  $\beta r(y_w) > \beta r(y_l)$; ties count as wrong);
* the mean per-token $\mathrm{KL}(\pi_\theta\|\pi_{\mathrm{ref}})$ over the
  held-out chosen completions, when a reference model is loaded;
* TRL's ``logits/chosen``, ``logits/rejected``, ``entropy`` and
  ``mean_token_accuracy`` (:mod:`mipo.training.token_metrics`), each the mean
  over the evaluation batches of the batch's value, as TRL averages its
  evaluation metrics;
* for data sets with a gold reward (the built-in tasks, or ``--train.gold``), the
  gold reward of greedy answers generated with the chat template
  (:mod:`mipo.training.gold`), with its bootstrap interval and its gain over
  step 0.

``python -m mipo.eval RUN_DIR`` re-runs it on the latest checkpoint of a saved
run and writes ``eval.json`` there.
"""

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mipo.needs import Need
from mipo.objective import Objective
from mipo.training.batching import BatchBuilder
from mipo.training.precision import autocast
from mipo.training.services.base import Models, Service, evaluating
from mipo.training.stats import bootstrap_mean, interval_fields, wilson_interval
from mipo.training.token_metrics import pooled_means


def evaluation_services(
    objective: Objective, services: Sequence[Service]
) -> tuple[Service, ...]:
    """The services evaluation runs: those of the objective without its extra
    terms (an anchor sampled for a triplet term is not), and the run's own."""
    kept = dataclasses.replace(objective, terms=()).services
    return tuple(
        s for s in services if s.spec in kept or s.spec not in objective.services
    )


def evaluate_pairs(
    objective: Objective,
    models: Models,
    loader: Any,
    *,
    device: torch.device,
    services: Sequence[Service] = (),
    chunk_size: int | None = None,
    correct: list[float] | None = None,
    precision: str = "fp32",
    accelerator: Any = None,
) -> dict[str, float | int]:
    """Implicit-reward accuracy (with its Wilson 95 % interval), margin, loss
    and chosen KL(pi||ref) per token.

    Extra terms are left out: they never enter the rewards, and some are costly to
    evaluate (TI-DPO's triplet samples an anchor per pair). ``eval/loss`` is the
    link loss only. ``correct``, when given, receives 1.0 or 0.0 per pair.
    Batches come from the same :class:`BatchBuilder` as training, with the
    services of the objective without its terms, in eval mode, built in the
    run's ``precision`` (the objective then runs outside autocast, as in
    training). No autograd graph is kept: a service that takes gradients
    (TI-DPO's attribution) enables them around its own computation only.

    With several processes (``accelerator``), each scores one contiguous block
    of the batches, padded with the last batch (scored and dropped) so every
    process runs the same number of forwards, as a sharded model needs; the
    per-batch results are gathered in order, so the numbers equal one process's.
    """
    from mipo.training.distributed import gather_lists, rank_share

    batches = list(loader)
    indices, share = rank_share(len(batches), accelerator)
    mine = [batches[i] for i in indices]
    padded = mine + batches[-1:] * (share - len(mine))
    records = _batch_records(
        objective,
        models,
        padded,
        device=device,
        services=services,
        chunk_size=chunk_size,
        precision=precision,
    )
    records = gather_lists(accelerator, records[: len(mine)])
    return _pooled_records(records, correct, kl=models.reference is not None)


def _batch_records(
    objective: Objective,
    models: Models,
    batches: Sequence[Any],
    *,
    device: torch.device,
    services: Sequence[Service],
    chunk_size: int | None,
    precision: str,
) -> list[dict[str, Any]]:
    """Per evaluation batch (host values): the pairs' correct flags, the margin
    and link-loss sums, the chosen KL sum and token count, and TRL's head
    metrics as the batch's means."""
    active = evaluation_services(objective, services)
    objective = dataclasses.replace(objective, terms=())
    wants_kl = models.reference is not None
    needs = objective.needs | ({Need.KL_REVERSE} if wants_kl else set())
    builder = BatchBuilder(
        needs=frozenset(needs), services=active, chunk_size=chunk_size
    )
    models = dataclasses.replace(models, body=None)
    policy = models.policy
    was_training = policy.training
    policy.eval()
    records: list[dict[str, Any]] = []
    try:
        with torch.no_grad(), evaluating(active):
            for batch in batches:
                with autocast(precision, device):
                    pair_batch, sums = builder.build(models, batch.to(device))
                out = objective(pair_batch)
                chosen, rejected = out.chosen_rewards, out.rejected_rewards
                record = {
                    "flags": (chosen > rejected).double().tolist(),
                    "margin": float((chosen - rejected).sum()),
                    "loss": float(out.per_pair.detach().sum()),
                    "means": {k: float(v) for k, v in pooled_means(sums).items()},
                }
                if wants_kl:
                    side = pair_batch.chosen
                    kl = side.masked_sum(side.kl_reverse.detach()).sum()
                    record["kl"] = (float(kl), float(side.lengths.sum()))
                records.append(record)
    finally:
        policy.train(was_training)
    return records


def _pooled_records(
    records: list[dict[str, Any]], correct: list[float] | None, *, kl: bool
) -> dict[str, float | int]:
    """The evaluation metrics from :func:`_batch_records`' per-batch values, in
    batch order."""
    flags = [flag for record in records for flag in record["flags"]]
    pairs = max(len(flags), 1)
    if correct is not None:
        correct += flags
    per_batch: dict[str, list[float]] = {}
    for record in records:
        for key, value in record["means"].items():
            per_batch.setdefault(key, []).append(value)
    result = {
        "eval/pairs": len(flags),
        **interval_fields(
            "eval/rewards/accuracies", wilson_interval(sum(flags), pairs)
        ),
        "eval/rewards/margins": _ordered_sum(r["margin"] for r in records) / pairs,
        "eval/loss": _ordered_sum(r["loss"] for r in records) / pairs,
        **{f"eval/{k}": sum(v) / len(v) for k, v in sorted(per_batch.items())},
    }
    if kl:
        kl_sum = _ordered_sum(r["kl"][0] for r in records)
        kl_tokens = _ordered_sum(r["kl"][1] for r in records)
        result["eval/kl_reverse_per_token"] = kl_sum / max(kl_tokens, 1.0)
    return result


def _ordered_sum(values: Any) -> float:
    """``0.0 + v1 + v2 + ...`` left to right: the running sum the one-process
    loop formed, so gathered records give the same float."""
    total = 0.0
    for value in values:
        total += value
    return total


def evaluate_step(run: Any, at_step: int) -> dict[str, Any]:
    """The evaluation of a training run at ``at_step``: the gold reward of greedy
    answers to the held-out prompts (the prompts split over the processes; the
    gain over step 0 on the main process) and, after step 0, the held-out pairs
    (the batches split over the processes). Every process must call it; scores
    go to ``eval_scores.json``."""
    result: dict[str, Any] = {"step": at_step}
    data, scores = run.data, run.scores
    if run.gold_reward is not None and data.eval_records:
        result |= _gold_fields(run, at_step)
    if not data.eval or at_step == 0:
        return result
    correct: list[float] = []
    result |= evaluate_pairs(
        run.objective,
        run.models,
        run.eval_loader,
        device=run.device,
        services=run.services,
        chunk_size=run.config.logps_chunk_size or None,
        correct=correct,
        precision=run.config.precision,
        accelerator=run.accelerator,
    )
    if scores is not None:
        scores.add("correct", at_step, correct)
    return result


def _gold_fields(run: Any, at_step: int) -> dict[str, Any]:
    """The gold reward of greedy answers to the held-out prompts (mean and
    interval), the answers' mean length in characters, and after step 0 the
    paired gain over step 0; per-prompt values go to ``eval_scores.json``."""
    lengths: list[int] = []
    gold = _gold(run, lengths)
    result: dict[str, Any] = {"eval/gold_prompts": len(gold)}
    result.update(interval_fields("eval/gold_reward", bootstrap_mean(gold)))
    result["eval/gold_answer_chars"] = sum(lengths) / len(lengths)
    scores = run.scores
    if scores is None:
        return result
    scores.add("gold", at_step, gold)
    scores.add("answer_chars", at_step, [float(n) for n in lengths])
    before = scores.get("gold", 0)
    if before is not None and at_step > 0:
        gains = [a - b for a, b in zip(gold, before, strict=True)]
        result["eval/gold_reward_before"] = sum(before) / len(before)
        result.update(interval_fields("eval/gold_gain", bootstrap_mean(gains)))
        chars_before = scores.get("answer_chars", 0)
        if chars_before:
            result["eval/gold_answer_chars_before"] = sum(chars_before) / len(
                chars_before
            )
    return result


def _gold(run: Any, lengths: list[int]) -> list[float]:
    from mipo.training.gold import shared_gold_scores

    with autocast(run.config.precision, run.device):
        return shared_gold_scores(
            run.models.policy,
            run.tokenizer,
            run.data.eval_records,
            run.gold_reward,
            device=run.device,
            max_new_tokens=run.config.eval_max_new_tokens,
            accelerator=run.accelerator,
            lengths=lengths,
        )


def gold_accuracy(
    policy: nn.Module,
    tokenizer: Any,
    records: list[Any],
    *,
    device: torch.device,
    max_new_tokens: int,
) -> float | None:
    """Share of greedy answers with arithmetic gold reward 1 over ``records`` that
    carry a gold answer (``None`` when none does)."""
    from mipo.data.builtin import gold_reward
    from mipo.training.gold import gold_scores

    gold = [r for r in records if r.gold is not None]
    if not gold:
        return None
    scores = gold_scores(
        policy,
        tokenizer,
        gold,
        gold_reward,
        device=device,
        max_new_tokens=max_new_tokens,
    )
    return sum(scores) / len(scores)


def evaluate_run(run_dir: str | Path, *, gold: str = "") -> dict[str, Any]:
    """Re-run the evaluation of a saved run on its latest checkpoint (objectives
    composed in Python included); writes ``eval.json`` there.

    Args:
        run_dir: the run directory.
        gold: a ``module:function`` gold reward (default: the run's own).
    """
    from mipo.training.gold import gold_scores, import_gold, resolve_gold
    from mipo.training.run_dir import read_run_config, write_json
    from mipo.training.setup import load_saved_run

    read_run_config(Path(run_dir))  # a run directory, before any import or load
    given = import_gold(gold) if gold else None  # checked before the model loads
    saved = load_saved_run(Path(run_dir))
    gold_reward = given or resolve_gold(saved.config.dataset, saved.config.gold)
    result: dict[str, Any] = {}
    if saved.data.eval:
        result = evaluate_pairs(
            saved.objective,
            saved.models,
            saved.eval_loader,
            device=saved.device,
            services=saved.services,
            chunk_size=saved.config.logps_chunk_size or None,
            precision=saved.config.precision,
        )
    if gold_reward is not None and saved.data.eval_records:
        lengths: list[int] = []
        with autocast(saved.config.precision, saved.device):
            after = gold_scores(
                saved.models.policy,
                saved.tokenizer,
                saved.data.eval_records,
                gold_reward,
                device=saved.device,
                max_new_tokens=saved.config.eval_max_new_tokens,
                lengths=lengths,
            )
        result["eval/gold_prompts"] = len(after)
        result.update(interval_fields("eval/gold_reward", bootstrap_mean(after)))
        result["eval/gold_answer_chars"] = sum(lengths) / len(lengths)
    result["checkpoint"] = saved.checkpoint.name
    write_json(Path(run_dir) / "eval.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m mipo.eval RUN_DIR``: evaluate the latest checkpoint of a run
    (errors in the common style of :mod:`mipo.training.command`)."""
    from mipo.training.command import run_command

    run_command(_main, sys.argv[1:] if argv is None else argv)


EVAL_USAGE = "usage: python -m mipo.eval RUN_DIR [--gold module:function] [--debug]"


def _main(args: list[str]) -> None:
    from mipo.training.command import fail

    if args and args[0] in ("-h", "--help"):
        print(EVAL_USAGE)
        return
    gold = ""
    if len(args) == 3 and args[1] == "--gold":
        args, gold = args[:1], args[2]
    elif len(args) == 2 and args[1].startswith("--gold="):
        args, gold = args[:1], args[1].removeprefix("--gold=")
    if len(args) != 1 or args[0].startswith("-"):
        fail(f"expected one run directory, got {args or 'none'}; {EVAL_USAGE}")
    result = evaluate_run(args[0], gold=gold)
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()


__all__ = [
    "evaluate_pairs",
    "evaluate_run",
    "evaluate_step",
    "evaluation_services",
    "gold_accuracy",
    "main",
]
