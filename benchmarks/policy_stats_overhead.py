"""Cost of the policy statistics in the chunked loss head (log collision, mean
logit, entropy, top-1 hit: WPO's need and TRL's ``logits/*``, ``entropy`` and
``mean_token_accuracy`` metrics).

One forward + backward of the chunked loss head
(``mipo.training.logps.token_stats`` then ``backward``), DPO case (policy
log-probs with gradient + reference log-probs), at SmolLM2-135M's head shapes
(hidden 576, vocabulary 49,152) on random hidden states: with
``policy_stats=False`` and ``policy_stats=True`` alternately in one process,
``--repeats`` times each after one warm-up of each. Prints the median seconds
of each and their ratio (with / without), and the peak bytes allocated during
one call of each (``logps_memory.peak_bytes``: the profiler's allocation
events on CPU). The transformer body is not run, so the ratio is the loss
head's alone; a training step adds the trunk's forward and backward on top.

Usage::

    python benchmarks/policy_stats_overhead.py --pairs 4 --length 128 --repeats 15 --threads 1
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from logps_memory import HIDDEN, MIB, VOCAB, machine, run  # noqa: E402

from mipo.training.logps import token_stats  # noqa: E402


def one_call(
    hidden: torch.Tensor,
    head: nn.Linear,
    reference: tuple[torch.Tensor, nn.Linear],
    labels: torch.Tensor,
    *,
    chunk_size: int,
    policy_stats: bool,
) -> float:
    """Seconds of one forward + backward of the loss head."""
    start = time.perf_counter()
    stats = token_stats(
        hidden,
        head,
        labels,
        reference_hidden=reference[0],
        reference_head=reference[1],
        chunk_size=chunk_size,
        policy_stats=policy_stats,
    )
    stats.policy_logps.sum().backward()
    seconds = time.perf_counter() - start
    hidden.grad = None
    head.weight.grad = None
    return seconds


def inputs(
    pairs: int, length: int, prompt_fraction: float
) -> tuple[torch.Tensor, nn.Linear, tuple[torch.Tensor, nn.Linear], torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    rows = 2 * pairs
    hidden = torch.randn(rows, length, HIDDEN, generator=gen).requires_grad_(True)
    reference_hidden = torch.randn(rows, length, HIDDEN, generator=gen)
    head = nn.Linear(HIDDEN, VOCAB, bias=False)
    reference_head = nn.Linear(HIDDEN, VOCAB, bias=False).requires_grad_(False)
    labels = torch.randint(0, VOCAB, (rows, length), generator=gen)
    labels[:, : int(prompt_fraction * length)] = -100
    return hidden, head, (reference_hidden, reference_head), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--prompt-fraction", type=float, default=0.25)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{machine()}, {torch.get_num_threads()} threads; pairs {args.pairs}, T "
        f"{args.length}, hidden {HIDDEN}, vocab {VOCAB}, chunk {args.chunk_size}, "
        f"prompt fraction {args.prompt_fraction}"
    )
    hidden, head, reference, labels = inputs(
        args.pairs, args.length, args.prompt_fraction
    )
    print(f"response rows: {int((labels[:, 1:] != -100).sum())}")
    times: dict[bool, list[float]] = {False: [], True: []}
    for index in range(args.repeats + 1):
        for wanted in (False, True):
            seconds = one_call(
                hidden,
                head,
                reference,
                labels,
                chunk_size=args.chunk_size,
                policy_stats=wanted,
            )
            if index > 0:  # the first round warms up
                times[wanted].append(seconds)
    without, with_stats = (statistics.median(times[w]) for w in (False, True))
    common = {
        "pairs": args.pairs,
        "chunk_size": args.chunk_size,
        "kl": False,
        "prompt_fraction": args.prompt_fraction,
        "device": "cpu",
    }
    peaks = {
        w: run(token_stats, args.length, policy_stats=w, **common)[0]
        for w in (False, True)
    }
    print("| policy_stats | median s | min s | max s | peak (MiB) |")
    print("|---|---|---|---|---|")
    for wanted in (False, True):
        t = times[wanted]
        print(
            f"| {wanted} | {statistics.median(t):.3f} | {min(t):.3f} | "
            f"{max(t):.3f} | {peaks[wanted] / MIB:,.0f} |"
        )
    print(f"ratio with / without (medians): {with_stats / without:.3f}")


if __name__ == "__main__":
    main()
