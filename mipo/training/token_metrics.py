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
left out. A logging record then averages them over the micro-batches of its
window, as TRL does; across several processes mipo averages each process's
value, where TRL pools the token sums of a micro-batch first (the two agree in
one process, and when the processes hold equally many tokens).
"""

from collections.abc import Sequence

import torch
from torch import Tensor

from mipo.training.logps import TokenStats

NAMES = ("logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy")
"""The metric keys, as TRL names them."""


def token_metrics(stats: TokenStats, rows: Sequence[int]) -> dict[str, Tensor]:
    """The metrics of :data:`NAMES` for stacked ``stats`` whose first
    ``rows[0]`` rows are the chosen sides and next ``rows[1]`` the rejected
    ones; empty when the statistics were not computed."""
    if stats.logit_means is None or stats.entropy is None or stats.top1 is None:
        return {}
    chosen = slice(0, rows[0])
    rejected = slice(rows[0], rows[0] + rows[1])
    pair = slice(0, rows[0] + rows[1])

    def mean(values: Tensor, part: slice) -> Tensor:
        mask = stats.response_mask[part]
        total = torch.where(mask, values[part], torch.zeros_like(values[part])).sum()
        return (total / mask.sum().clamp(min=1)).detach()

    return {
        "logits/chosen": mean(stats.logit_means, chosen),
        "logits/rejected": mean(stats.logit_means, rejected),
        "entropy": mean(stats.entropy, pair),
        "mean_token_accuracy": mean(stats.top1, chosen),
    }


__all__ = ["NAMES", "token_metrics"]
