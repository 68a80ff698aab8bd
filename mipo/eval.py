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
from typing import Any

import torch
from torch import nn

from mipo.forward import ATTRIBUTION_NEEDS, build_pair_batch
from mipo.model import AbstractReference
from mipo.needs import Need
from mipo.objective import Objective
from mipo.prepare import lookup_reference


def evaluate_pairs(
    objective: Objective,
    policy: nn.Module,
    reference: AbstractReference | None,
    loader: Any,
    *,
    device: torch.device,
    pad_token_id: int,
    eos_token_id: int,
    chunk_size: int | None = None,
    reference_cache: dict | None = None,
    anchor_sampling: Any = None,
    mask_model: nn.Module | None = None,
    prior_model: nn.Module | None = None,
    correct: list[float] | None = None,
) -> dict[str, float | int]:
    """Implicit-reward accuracy (with its 95 % bootstrap interval), margin, loss
    and chosen KL(pi||ref) per token.

    Extra terms are left out: they never enter the rewards, and some are costly to
    evaluate (TI-DPO's triplet samples an anchor per pair). ``eval/loss`` is the
    link loss only. ``correct``, when given, receives 1.0 or 0.0 per pair.
    """
    from mipo.stats import bootstrap_mean, interval_fields

    objective = dataclasses.replace(objective, terms=())
    anchor_sampling = None
    needs = objective.needs
    wants_kl = reference is not None
    batch_needs = needs | {Need.KL_REVERSE} if wants_kl else needs
    was_training = policy.training
    policy.eval()
    masks_training = mask_model is not None and mask_model.training
    if mask_model is not None:
        mask_model.eval()
    totals = {"margin": 0.0, "loss": 0.0, "pairs": 0}
    flags: list[float] = []
    kl_sum, kl_tokens = 0.0, 0.0
    grad = contextlib.nullcontext() if needs & ATTRIBUTION_NEEDS else torch.no_grad()
    try:
        with grad:
            for batch in loader:
                batch = batch.to(device)
                cached = (
                    None
                    if reference_cache is None
                    else lookup_reference(reference_cache, batch)
                )
                pair_batch = build_pair_batch(
                    batch_needs,
                    policy,
                    reference,
                    batch.tensors,
                    chunk_size=chunk_size,
                    precomputed_reference=cached,
                    anchor_sampling=anchor_sampling,
                    pad_token_id=pad_token_id,
                    eos_token_id=eos_token_id,
                    mask_model=mask_model,
                    prior_model=prior_model,
                )
                out = objective(pair_batch)
                chosen, rejected = out.chosen_rewards, out.rejected_rewards
                flags += (chosen > rejected).double().tolist()
                totals["margin"] += float((chosen - rejected).sum())
                totals["loss"] += float(out.per_pair.detach().sum())
                totals["pairs"] += chosen.shape[0]
                if wants_kl:
                    side = pair_batch.chosen
                    kl_sum += float(side.masked_sum(side.kl_reverse.detach()).sum())
                    kl_tokens += float(side.lengths.sum())
    finally:
        policy.train(was_training)
        if mask_model is not None:
            mask_model.train(masks_training)
    pairs = max(totals["pairs"], 1)
    if correct is not None:
        correct += flags
    result = {
        "eval/pairs": totals["pairs"],
        **interval_fields("eval/rewards/accuracies", bootstrap_mean(flags or [0.0])),
        "eval/rewards/margins": totals["margin"] / pairs,
        "eval/loss": totals["loss"] / pairs,
    }
    if wants_kl:
        result["eval/kl_reverse_per_token"] = kl_sum / max(kl_tokens, 1.0)
    return result


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
    from mipo.gold import gold_scores

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


def main(argv: list[str] | None = None) -> None:
    """``python -m mipo.eval RUN_DIR``: evaluate the latest checkpoint of a run."""
    args = sys.argv[1:] if argv is None else argv
    gold = ""
    if len(args) == 3 and args[1] == "--gold":
        args, gold = args[:1], args[2]
    elif len(args) == 2 and args[1].startswith("--gold="):
        args, gold = args[:1], args[1].removeprefix("--gold=")
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m mipo.eval RUN_DIR [--gold module:function]")
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    from mipo.train import evaluate_run

    result = evaluate_run(args[0], gold=gold)
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()


__all__ = ["evaluate_pairs", "gold_accuracy", "main"]
