"""Seeded train/evaluation split."""

import math
import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def train_eval_split(
    records: Sequence[T], eval_fraction: float, seed: int
) -> tuple[list[T], list[T]]:
    """Shuffle ``records`` with ``random.Random(seed)`` and hold out a share.

    The evaluation set is the last ``round(n * eval_fraction)`` records of the
    shuffled order (at least one when ``eval_fraction > 0``); both parts keep the
    shuffled order. ``eval_fraction = 0`` returns every record for training, in the
    original order, and an empty evaluation list.

    >>> train_eval_split(list(range(10)), 0.2, seed=0)[1]
    [9, 6]

    Raises:
        ValueError: if ``eval_fraction`` is outside ``[0, 1)`` or nothing would be
            left for training.
    """
    if not (math.isfinite(eval_fraction) and 0.0 <= eval_fraction < 1.0):
        raise ValueError(
            f"train_eval_split: eval_fraction must be in [0, 1), got {eval_fraction}"
        )
    if eval_fraction == 0.0:
        return list(records), []
    n_eval = max(1, round(len(records) * eval_fraction))
    if n_eval >= len(records):
        raise ValueError(
            f"train_eval_split: {len(records)} records leave none for training with "
            f"eval_fraction={eval_fraction}"
        )
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    shuffled = [records[i] for i in order]
    return shuffled[:-n_eval], shuffled[-n_eval:]


__all__ = ["train_eval_split"]
