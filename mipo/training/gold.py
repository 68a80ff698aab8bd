"""Gold rewards: a programmatic score of generated answers, before and after.

A gold reward is any callable ``(prompt, answer) -> float``: the built-in tasks
carry their own (:data:`mipo.data.builtin.GOLD_REWARDS`), and a user names one
for their own data as ``module:function`` (``--train.gold``, ``--gold``). The
policy answers each held-out prompt greedily (chat template where the prompt is
conversational), and the gold reward scores the decoded answer; a run reports
the mean before and after training and the bootstrap interval of the paired
difference (:mod:`mipo.stats`).
"""

import importlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

GoldReward = Callable[[str, str], float]
"""Scores one generated ``answer`` to ``prompt`` (the prompt's text)."""


class GoldError(ValueError):
    """A gold reward that cannot be imported or returns a non-number."""


def import_gold(spec: str) -> GoldReward:
    """The callable ``module:function`` names (``module`` importable from the
    current directory too).

    Raises:
        GoldError: naming the spec and what is wrong with it.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise GoldError(
            f"gold {spec!r}: expected 'module:function', e.g. 'my_rewards:score'"
        )
    import sys

    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise GoldError(
            f"gold {spec!r}: cannot import {module_name!r} ({error})"
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise GoldError(f"gold {spec!r}: {module_name} has no callable {attribute!r}")
    return function


def resolve_gold(dataset: str, gold: str = "") -> GoldReward | None:
    """``gold`` imported when given, else the built-in task's own reward, else
    ``None`` (the data set has no gold reward)."""
    if gold:
        return import_gold(gold)
    from mipo.data.builtin import builtin_gold_reward

    return builtin_gold_reward(dataset)


def prompt_text(prompt: Any) -> str:
    """A record's prompt as the text a gold reward reads (messages joined)."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(message["content"] for message in prompt)


def _render(tokenizer: Any, prompt: Any) -> str:
    if isinstance(prompt, list):
        return tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True
        )
    return prompt


@torch.no_grad()
def generate_answers(
    policy: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Any],
    *,
    device: torch.device,
    max_new_tokens: int,
    batch_size: int = 32,
) -> list[str]:
    """Greedy answers to ``prompts`` (strings or message lists), decoded."""
    was_training, side = policy.training, tokenizer.padding_side
    policy.eval()
    tokenizer.padding_side = "left"
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [_render(tokenizer, p) for p in prompts[start : start + batch_size]]
            encoded = tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            generated = policy.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            new_tokens = generated[:, encoded["input_ids"].shape[1] :]
            answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
        policy.train(was_training)
    return answers


def score_answers(
    reward: GoldReward, prompts: Sequence[Any], answers: Sequence[str]
) -> list[float]:
    """``reward(prompt text, answer)`` per prompt, checked finite.

    Raises:
        GoldError: when the reward returns something that is not a finite number.
    """
    scores = []
    for prompt, answer in zip(prompts, answers, strict=True):
        value = reward(prompt_text(prompt), answer)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise GoldError(
                f"gold reward {getattr(reward, '__name__', reward)!r} returned "
                f"{value!r}, not a number"
            ) from None
        if not math.isfinite(value):
            raise GoldError(
                f"gold reward {getattr(reward, '__name__', reward)!r} returned {value}"
            )
        scores.append(value)
    return scores


def shared_gold_scores(
    policy: nn.Module,
    tokenizer: Any,
    records: Sequence[Any],
    reward: GoldReward,
    *,
    device: torch.device,
    max_new_tokens: int,
    accelerator: Any = None,
    lengths: list[int] | None = None,
) -> list[float]:
    """:func:`gold_scores` with the prompts split over the processes of a run:
    each answers one contiguous block, and every process returns the scores of
    all prompts, in order (and, into ``lengths``, every answer's length). Every
    process must call it: a sharded policy generates only when all of them do,
    so each block is padded (with the last prompt, scored and dropped) to the
    same number of generation batches."""
    from mipo.training.distributed import gather_lists, rank_share

    indices, share = rank_share(len(records), accelerator)
    mine = [records[i] for i in indices]
    padded = mine + [records[-1]] * (share - len(mine))
    chars: list[int] = []
    scores = gold_scores(
        policy,
        tokenizer,
        padded,
        reward,
        device=device,
        max_new_tokens=max_new_tokens,
        lengths=chars,
    )
    both = gather_lists(accelerator, list(zip(scores, chars, strict=True))[: len(mine)])
    if lengths is not None:
        lengths += [length for _, length in both]
    return [score for score, _ in both]


def gold_scores(
    policy: nn.Module,
    tokenizer: Any,
    records: Sequence[Any],
    reward: GoldReward,
    *,
    device: torch.device,
    max_new_tokens: int,
    lengths: list[int] | None = None,
) -> list[float]:
    """The gold reward of the policy's greedy answer to each record's prompt;
    ``lengths``, when given, receives each answer's length in characters (to
    read next to the reward: a reward can grow with length alone)."""
    prompts = [record.prompt for record in records]
    answers = generate_answers(
        policy, tokenizer, prompts, device=device, max_new_tokens=max_new_tokens
    )
    if lengths is not None:
        lengths += [len(answer) for answer in answers]
    return score_answers(reward, prompts, answers)


__all__ = [
    "GoldError",
    "GoldReward",
    "generate_answers",
    "gold_scores",
    "import_gold",
    "prompt_text",
    "resolve_gold",
    "score_answers",
    "shared_gold_scores",
]
