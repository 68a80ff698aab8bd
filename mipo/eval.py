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
) -> dict[str, float | int]:
    """Implicit-reward accuracy, margin, loss and chosen KL(pi||ref) per token.

    Extra terms are left out: they never enter the rewards, and some are costly to
    evaluate (TI-DPO's triplet samples an anchor per pair). ``eval/loss`` is the
    link loss only.
    """
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
    totals = {"correct": 0.0, "margin": 0.0, "loss": 0.0, "pairs": 0}
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
        if mask_model is not None:
            mask_model.train(masks_training)
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


def main(argv: list[str] | None = None) -> None:
    """``python -m mipo.eval RUN_DIR``: evaluate the latest checkpoint of a run."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print("usage: python -m mipo.eval RUN_DIR")
        raise SystemExit(0 if args and args[0] in ("-h", "--help") else 2)
    from mipo.train import evaluate_run

    result = evaluate_run(args[0])
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()


__all__ = ["evaluate_pairs", "gold_accuracy", "main"]
