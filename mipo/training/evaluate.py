r"""Held-out evaluation of a policy.

* implicit-reward accuracy, mean margin and link loss on held-out pairs, from the
  objective's own rewards $\beta\,r(y)$ (extra terms left out) (``rewards/accuracies`` counts pairs with
  $\beta r(y_w) > \beta r(y_l)$; ties count as wrong);
* the mean per-token $\mathrm{KL}(\pi_\theta\|\pi_{\mathrm{ref}})$ over the
  held-out chosen completions, when a reference model is loaded;
* for data sets with a gold answer (``builtin:arithmetic``), the gold-reward
  accuracy of greedy answers generated with the chat template
  (:func:`mipo.data.builtin.gold_reward`).

``python -m mipo.eval RUN_DIR`` re-runs it on the latest checkpoint of a saved
run and writes ``eval.json`` there.
"""

import contextlib
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
from mipo.training.services.base import Models, Service, evaluating


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
) -> dict[str, float | int]:
    """Implicit-reward accuracy, margin, loss and chosen KL(pi||ref) per token.

    Extra terms are left out: they never enter the rewards, and some are costly to
    evaluate (TI-DPO's triplet samples an anchor per pair). ``eval/loss`` is the
    link loss only. Batches come from the same :class:`BatchBuilder` as training,
    with the services of the objective without its terms, in eval mode.
    """
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
    totals = {"correct": 0.0, "margin": 0.0, "loss": 0.0, "pairs": 0}
    kl_sum, kl_tokens = 0.0, 0.0
    # services that take gradients (attribution) keep autograd on
    grad = contextlib.nullcontext() if _needs_grad(active) else torch.no_grad()
    try:
        with grad, evaluating(active):
            for batch in loader:
                pair_batch = builder(models, batch.to(device))
                out = objective(pair_batch)
                chosen, rejected = out.chosen_rewards, out.rejected_rewards
                totals["correct"] += float((chosen > rejected).sum())
                totals["margin"] += float((chosen - rejected).sum())
                totals["loss"] += float(out.per_pair.detach().sum())
                totals["pairs"] += chosen.shape[0]
                if wants_kl:
                    side = pair_batch.chosen
                    kl_sum += float(side.masked_sum(side.kl_reverse.detach()).sum())
                    kl_tokens += float(side.lengths.sum())
    finally:
        policy.train(was_training)
    pairs = max(totals["pairs"], 1)
    result = {
        "eval/pairs": totals["pairs"],
        "eval/rewards/accuracies": totals["correct"] / pairs,
        "eval/rewards/margins": totals["margin"] / pairs,
        "eval/loss": totals["loss"] / pairs,
    }
    if wants_kl:
        result["eval/kl_reverse_per_token"] = kl_sum / max(kl_tokens, 1.0)
    return result


def _needs_grad(services: Sequence[Service]) -> bool:
    return any(service.needs_grad for service in services)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(message["content"] for message in prompt)


def gold_accuracy(
    policy: nn.Module,
    tokenizer: Any,
    records: list[Any],
    *,
    device: torch.device,
    max_new_tokens: int,
    batch_size: int = 16,
) -> float | None:
    """Share of greedy answers with gold reward 1 over ``records`` that carry a
    gold answer (``None`` when none does)."""
    from mipo.data.builtin import gold_reward

    gold = [r for r in records if r.gold is not None]
    if not gold:
        return None
    was_training = policy.training
    policy.eval()
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    score = 0.0
    try:
        for start in range(0, len(gold), batch_size):
            chunk = gold[start : start + batch_size]
            texts = [
                tokenizer.apply_chat_template(
                    r.prompt, tokenize=False, add_generation_prompt=True
                )
                if isinstance(r.prompt, list)
                else r.prompt
                for r in chunk
            ]
            encoded = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            with torch.no_grad():
                generated = policy.generate(
                    **encoded,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            answers = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for record, answer in zip(chunk, answers, strict=True):
                score += gold_reward(_prompt_text(record.prompt), answer)
    finally:
        tokenizer.padding_side = side
        policy.train(was_training)
    return score / len(gold)


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """Re-run the evaluation of a saved run on its latest checkpoint (objectives
    composed in Python included); writes ``eval.json`` there."""
    from mipo.training.run_dir import write_json
    from mipo.training.setup import load_saved_run

    saved = load_saved_run(Path(run_dir))
    result: dict[str, Any] = {}
    if saved.data.eval:
        result = evaluate_pairs(
            saved.objective,
            saved.models,
            saved.eval_loader,
            device=saved.device,
            services=saved.services,
            chunk_size=saved.config.logps_chunk_size or None,
        )
    gold = gold_accuracy(
        saved.models.policy,
        saved.tokenizer,
        saved.data.eval_records,
        device=saved.device,
        max_new_tokens=saved.config.eval_max_new_tokens,
    )
    if gold is not None:
        result["eval/gold_accuracy_after"] = gold
    result["checkpoint"] = saved.checkpoint.name
    write_json(Path(run_dir) / "eval.json", result)
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m mipo.eval RUN_DIR``: evaluate the latest checkpoint of a run."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m mipo.eval RUN_DIR")
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    result = evaluate_run(args[0])
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()


__all__ = [
    "evaluate_pairs",
    "evaluate_run",
    "evaluation_services",
    "gold_accuracy",
    "main",
]
