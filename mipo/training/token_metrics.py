r"""TRL's per-micro-batch metrics of the policy's next-token distribution.

From the detached per-token statistics of
:func:`mipo.training.logps.token_stats` (``policy_stats=True``) over the
response tokens of one micro-batch, with $\bar z_t$ the mean logit over the
vocabulary, $H_t$ the entropy and $\mathbb{1}_t$ the top-1 hit at position $t$:

$$ \texttt{logits/chosen} = \frac{\sum_{t \in y_w} \bar z_t}{|y_w|}, \quad
   \texttt{logits/rejected} = \frac{\sum_{t \in y_l} \bar z_t}{|y_l|}, \quad
   \texttt{entropy} = \frac{\sum_{t \in y_w \cup y_l} H_t}{|y_w| + |y_l|}, \quad
   \texttt{mean\_token\_accuracy} = \frac{\sum_{t \in y_w} \mathbb{1}_t}{|y_w|}, $$

each sum over every response token of the micro-batch's chosen (``y_w``) or
rejected (``y_l``) sides, the counts in tokens: the per-micro-batch values TRL
1.16's ``DPOTrainer`` logs under these names. Generated sides (an anchor) are
left out. Under several processes the sums and counts of a micro-batch are
pooled over the processes before the division, as TRL does, so two processes
log what one process with their joint micro-batch logs. A logging record then
averages the values over the micro-batches of its window, as TRL does.
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from mipo.training.logps import TokenStats

NAMES = ("logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy")
"""The metric keys, as TRL names them."""


def token_metrics(stats: TokenStats, rows: Sequence[int]) -> dict[str, Tensor]:
    """The sums and token counts behind :data:`NAMES` for stacked ``stats``
    whose first ``rows[0]`` rows are the chosen sides and next ``rows[1]`` the
    rejected ones: name -> ``[sum, count]`` (detached; :func:`pooled_means`
    divides); empty when the statistics were not computed."""
    if stats.logit_means is None or stats.entropy is None or stats.top1 is None:
        return {}
    chosen = slice(0, rows[0])
    rejected = slice(rows[0], rows[0] + rows[1])
    pair = slice(0, rows[0] + rows[1])

    def total(values: Tensor, part: slice) -> Tensor:
        mask = stats.response_mask[part]
        kept = torch.where(mask, values[part], torch.zeros_like(values[part]))
        return torch.stack([kept.sum().float(), mask.sum().float()]).detach()

    return {
        "logits/chosen": total(stats.logit_means, chosen),
        "logits/rejected": total(stats.logit_means, rejected),
        "entropy": total(stats.entropy, pair),
        "mean_token_accuracy": total(stats.top1, chosen),
    }


def pooled_means(
    totals: dict[str, Tensor], reduce: Callable[[Tensor], Tensor] | None = None
) -> dict[str, Tensor]:
    """name -> sum / count of :func:`token_metrics`' totals, the sums and counts
    first summed over the processes by ``reduce`` (one collective for all of
    them; :func:`mipo.training.distributed.sum_reducer`), still on the device."""
    if not totals:
        return {}
    names = sorted(totals)
    stacked = torch.stack([totals[name] for name in names])
    if reduce is not None:
        stacked = reduce(stacked)
    means = stacked[:, 0] / stacked[:, 1].clamp(min=1)
    return dict(zip(names, means.unbind(), strict=True))


__all__ = ["NAMES", "pooled_means", "token_metrics"]
