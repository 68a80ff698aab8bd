"""The frozen reference of a ``bf16`` run: float32 copy against bf16 matrices.

Side by side in one process, on the same batch, under bfloat16 autocast (CPU
autocast here; a GPU's is the same context):

* parameter memory of the reference, float32 copy vs decoder matrices in bf16;
* the reference forward's time, both ways (the float32 copy re-casts every
  matrix on every forward: autocast caches casts only for weights that need
  gradients);
* whether the two forwards agree (they must be bit-identical).

    python benchmarks/reference_precision.py [--model smollm2] [--batch 4] [--length 128]
"""

import argparse
import copy
import os
import time

import torch

from mipo.training.config import TrainConfig
from mipo.training.models import (
    FrozenCopyReference,
    frozen_reference,
    load_causal_lm,
    resolve_model_path,
)


def _megabytes(model: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


def _seconds(reference: FrozenCopyReference, ids: torch.Tensor, repeats: int) -> float:
    mask = torch.ones_like(ids)
    reference.hidden_states(ids, mask)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        reference.hidden_states(ids, mask)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    base = load_causal_lm(resolve_model_path(args.model))
    bf16 = TrainConfig(precision="bf16")
    copied = frozen_reference(copy.deepcopy(base), TrainConfig())
    copied.precision = "bf16"  # the float32 copy under the run's autocast (before)
    held = frozen_reference(copy.deepcopy(base), bf16)
    vocab = base.get_output_embeddings().weight.shape[0]
    ids = torch.randint(0, vocab, (args.batch, args.length))
    mask = torch.ones_like(ids)
    equal = torch.equal(copied.hidden_states(ids, mask), held.hidden_states(ids, mask))
    before, after = _megabytes(copied.model), _megabytes(held.model)
    t_before = _seconds(copied, ids, args.repeats)
    t_after = _seconds(held, ids, args.repeats)
    print(f"model {args.model}, batch {args.batch} x {args.length}, 1 thread")
    print(
        f"reference parameters: float32 copy {before:.1f} MiB, bf16 matrices "
        f"{after:.1f} MiB (ratio {after / before:.3f})"
    )
    print(
        f"reference forward under bf16 autocast: float32 copy {t_before:.3f} s, "
        f"bf16 matrices {t_after:.3f} s (ratio {t_after / t_before:.3f})"
    )
    print(f"bit-identical hidden states: {equal}")


if __name__ == "__main__":
    main()
