"""``builtin:arithmetic``: a generated preference task with a programmatic gold reward.

Why this task: the offline machines have no API judge and no reward model, so a
win rate needs a reward that code can compute. Arithmetic correctness is such a
reward, unambiguous and cheap; answers are a few tokens long, so a DPO step on CPU
costs little; and there is room to improve.
Measured on 60 prompts (seed 123) with greedy decoding: SmolLM2-135M-Instruct
restates the question ("44 + 21 = 65") instead of giving the number alone, so it
scores 0/60 under :func:`gold_reward`; the number after its "=" is right in 12/60;
its summed log-probs already prefer the chosen answer in 40/60 pairs. The rejected
answer is a *plausible* mistake (off by one or ten, a dropped carry or borrow,
swapped digits, a neighbouring times-table entry), never a different format, so
the preference carries information about correctness and not about style.

Each pair is conversational: the prompt is one user message
``"What is A OP B? Answer with the number only."`` with ``OP`` one of ``+``, ``-``,
``*`` (A + B and A - B with 10 <= B <= A <= 99; A * B with 2 <= A <= 19 and
2 <= B <= 12), the chosen response is the correct number, the rejected response a
wrong one; ``gold`` holds the correct number. Generation is deterministic in
``seed`` (Python's ``random.Random``), spec ``builtin:arithmetic?n=600&seed=0``.

:func:`gold_reward` scores any answer: 1.0 when the last integer in it equals the
true result, else 0.0 (the usual "final number" rule of math benchmarks, so that
"47 + 38 = 85" counts as right and echoing the operands does not).
"""

import random
import re
from collections.abc import Callable
from urllib.parse import parse_qsl

from mipo.data.errors import DataError
from mipo.data.records import PreferenceRecord
from mipo.data.sentiment import sentiment_records, sentiment_reward

BUILTIN_PREFIX = "builtin:"
DEFAULT_SIZE = 600
"""Pairs in ``builtin:arithmetic`` when no ``n`` is given."""

_QUESTION = "What is {a} {op} {b}? Answer with the number only."
_PARSE = re.compile(r"What is (\d+) ([+\-*×]) (\d+)\?")
_INTEGER = re.compile(r"-?\d+")
_APPLY: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "×": lambda a, b: a * b,
}


def gold_reward(prompt: str, answer: str) -> float:
    """1.0 if the last integer in ``answer`` equals the result asked in ``prompt``.

    ``prompt`` is the user message (or any text containing
    ``"What is A OP B?"``); ``answer`` is the model's reply.

    >>> gold_reward("What is 47 + 38? Answer with the number only.", "85")
    1.0
    >>> gold_reward("What is 47 + 38? Answer with the number only.", "47 + 38 = 85")
    1.0
    >>> gold_reward("What is 47 + 38? Answer with the number only.", "It is 75.")
    0.0

    Raises:
        ValueError: if ``prompt`` asks no arithmetic question.
    """
    match = _PARSE.search(prompt)
    if match is None:
        raise ValueError(f"gold_reward: no 'What is A OP B?' question in {prompt!r}")
    a, op, b = int(match[1]), match[2], int(match[3])
    found = _INTEGER.findall(answer)
    return 1.0 if found and int(found[-1]) == _APPLY[op](a, b) else 0.0


def _digit_sum_without_carry(a: int, b: int) -> int:
    """a + b computed digit by digit with every carry dropped."""
    return sum(((a // 10**k % 10 + b // 10**k % 10) % 10) * 10**k for k in range(3))


def _digit_difference_without_borrow(a: int, b: int) -> int:
    """a - b computed digit by digit as |a_k - b_k| (the classic borrow error)."""
    return sum(abs(a // 10**k % 10 - b // 10**k % 10) * 10**k for k in range(3))


def _wrong_answers(a: int, op: str, b: int, result: int) -> list[int]:
    """Plausible mistakes for ``a op b``, every one different from ``result``."""
    candidates = [result + 1, result - 1, result + 10, result - 10]
    digits = str(result)
    # swap the last two digits, unless that would lead with a zero ("70" -> "07")
    if len(digits) >= 2 and digits[-1] not in ("0", digits[-2]):
        candidates.append(int(digits[:-2] + digits[-1] + digits[-2]))
    if op == "+":
        candidates.append(_digit_sum_without_carry(a, b))
    elif op == "-":
        candidates.append(_digit_difference_without_borrow(a, b))
    else:
        candidates += [a * (b + 1), a * (b - 1)]
    return sorted({c for c in candidates if c >= 0 and c != result})


def arithmetic_records(
    *, n: int = DEFAULT_SIZE, seed: int = 0
) -> list[PreferenceRecord]:
    """Generate ``n`` arithmetic preference pairs, deterministically in ``seed``."""
    if n <= 0:
        raise DataError(
            f"n must be > 0, got {n}", file="builtin:arithmetic", fix="use n >= 1"
        )
    rng = random.Random(seed)
    records = []
    for index in range(n):
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 19), rng.randint(2, 12)
        else:
            a, b = sorted((rng.randint(10, 99), rng.randint(10, 99)), reverse=True)
        result = _APPLY[op](a, b)
        wrong = rng.choice(_wrong_answers(a, op, b, result))
        records.append(
            PreferenceRecord(
                prompt=[{"role": "user", "content": _QUESTION.format(a=a, op=op, b=b)}],
                chosen=[{"role": "assistant", "content": str(result)}],
                rejected=[{"role": "assistant", "content": str(wrong)}],
                gold=str(result),
                source=f"builtin:arithmetic[{index}]",
            )
        )
    return records


_TASKS: dict[str, Callable[..., list[PreferenceRecord]]] = {
    "arithmetic": arithmetic_records,
    "sentiment": sentiment_records,
}

GOLD_REWARDS: dict[str, Callable[[str, str], float]] = {
    "arithmetic": gold_reward,
    "sentiment": sentiment_reward,
}
"""Each built-in task's gold reward ``(prompt, answer) -> float``."""


def builtin_gold_reward(spec: str) -> Callable[[str, str], float] | None:
    """The gold reward of the built-in task ``spec`` names (``None`` for any other
    data set)."""
    if not spec.startswith(BUILTIN_PREFIX):
        return None
    name = spec.removeprefix(BUILTIN_PREFIX).partition("?")[0]
    return GOLD_REWARDS.get(name)


def load_builtin(spec: str) -> list[PreferenceRecord]:
    """Records for ``builtin:NAME[?n=INT&seed=INT]``."""
    name, _, query = spec.removeprefix(BUILTIN_PREFIX).partition("?")
    if name not in _TASKS:
        raise DataError(
            f"unknown built-in task '{name}'",
            file=spec,
            fix=f"use one of {', '.join(sorted(_TASKS))}",
        )
    options: dict[str, int] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in ("n", "seed"):
            raise DataError(f"unknown option '{key}'", file=spec, fix="use n and seed")
        try:
            options[key] = int(value)
        except ValueError:
            raise DataError(
                f"option '{key}' must be an integer, got {value!r}",
                file=spec,
                fix=f"write {key}=INTEGER",
            ) from None
    return _TASKS[name](**options)


__all__ = [
    "BUILTIN_PREFIX",
    "DEFAULT_SIZE",
    "GOLD_REWARDS",
    "arithmetic_records",
    "builtin_gold_reward",
    "gold_reward",
    "load_builtin",
]
