"""Axis vocabulary and tensor aliases shared by every mipo module.

Axes:

| axis     | meaning                                                        |
|----------|----------------------------------------------------------------|
| `batch`  | preference pairs in the micro-batch                            |
| `seq`    | token positions after the causal shift (position t holds the   |
|          | label y_t, predicted from the state s_t = (x, y_<t))           |
| `vocab`  | vocabulary (only where full logits are needed)                 |
| `hidden` | hidden size (OTPO costs, TI-DPO attribution)                   |
| `n`, `m` | optimal-transport supports (solver adapters only)              |

Shapes are checked at run time only under pytest
(``--jaxtyping-packages=mipo,beartype.beartype``); library code carries the
annotations and no decorators, so it stays compatible with ``torch.compile``.
"""

from jaxtyping import Bool, Float, Int
from torch import Tensor

TokenLogps = Float[Tensor, "batch seq"]
"""Per-token log-probabilities of the label at each shifted position."""
TokenMask = Bool[Tensor, "batch seq"]
"""True on the positions the mask selects (e.g. response tokens, EOS included)."""
TokenWeights = Float[Tensor, "batch seq"]
"""Per-token weights w_t."""
TokenValues = Float[Tensor, "batch seq"]
"""Any other per-token scalar (KL terms, attribution scores, ...)."""
TokenIds = Int[Tensor, "batch seq"]
Logits = Float[Tensor, "batch seq vocab"]
Hidden = Float[Tensor, "batch seq hidden"]
PerPair = Float[Tensor, " batch"]
PerPairBool = Bool[Tensor, " batch"]
Scalar = Float[Tensor, ""]

__all__ = [
    "Hidden",
    "Logits",
    "PerPair",
    "PerPairBool",
    "Scalar",
    "TokenIds",
    "TokenLogps",
    "TokenMask",
    "TokenValues",
    "TokenWeights",
]
