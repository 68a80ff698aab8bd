"""Loss-head memory: eager vs chunked per-token log-probs (and KL) on CPU.

What is measured: the peak of bytes allocated by the CPU allocator *during* one
forward + backward of the loss head (``mipo.training.logps.token_stats`` followed by
``backward`` of the summed outputs), on top of everything allocated before
(hidden states, head weights). It is read from ``torch.profiler`` with
``profile_memory=True``: every allocation and free is a ``[memory]`` event whose
``Total Allocated`` field is the running total since the profiler started; the
peak is the maximum of that field. The transformer body is not run: the hidden
states are random ``[2 * pairs, T, 576]`` tensors and the head a random
``Linear(576, 49152)`` (SmolLM2-135M's hidden size and vocabulary), one for the
policy and one for the reference.

Usage::

    python benchmarks/logps_memory.py --lengths 256 512 1024 2048 --eager-max-length 1024
"""

import argparse
import gc
import json
import os
import tempfile
import time

import torch
from torch import nn

from mipo.training.logps import token_stats

HIDDEN, VOCAB = 576, 49152


def peak_bytes(fn) -> tuple[int, float]:
    """(peak bytes allocated during ``fn()``, seconds)."""
    gc.collect()
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [
        e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"
    ]
    return max([0, *totals]), seconds


def run(
    length: int, pairs: int, chunk_size: int | None, kl: bool, prompt_fraction: float
):
    gen = torch.Generator().manual_seed(0)
    rows = 2 * pairs
    policy_hidden = torch.randn(rows, length, HIDDEN, generator=gen).requires_grad_(
        True
    )
    reference_hidden = torch.randn(rows, length, HIDDEN, generator=gen)
    policy_head = nn.Linear(HIDDEN, VOCAB, bias=False)
    reference_head = nn.Linear(HIDDEN, VOCAB, bias=False).requires_grad_(False)
    labels = torch.randint(0, VOCAB, (rows, length), generator=gen)
    labels[:, : int(prompt_fraction * length)] = -100

    def step() -> None:
        stats = token_stats(
            policy_hidden,
            policy_head,
            labels,
            reference_hidden=reference_hidden,
            reference_head=reference_head,
            kl_forward=kl,
            chunk_size=chunk_size,
        )
        total = stats.policy_logps.sum()
        if stats.kl_forward is not None:
            total = total + stats.kl_forward.sum()
        total.backward()

    return peak_bytes(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048]
    )
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--prompt-fraction", type=float, default=0.25)
    parser.add_argument(
        "--eager-max-length",
        type=int,
        default=1024,
        help="skip the eager path above this T (it needs several GB of RAM)",
    )
    parser.add_argument("--kl", action="store_true", help="also the forward KL (TDPO)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, pairs "
        f"{args.pairs}, hidden {HIDDEN}, vocab {VOCAB}, chunk {args.chunk_size}, "
        f"prompt fraction {args.prompt_fraction}, kl_forward {args.kl}"
    )
    print(
        "| T | eager peak (MiB) | eager s | chunked peak (MiB) | chunked s | reduction |"
    )
    print("|---|---|---|---|---|---|")
    for length in args.lengths:
        chunked, chunked_s = run(
            length, args.pairs, args.chunk_size, args.kl, args.prompt_fraction
        )
        if length <= args.eager_max_length:
            eager, eager_s = run(
                length, args.pairs, None, args.kl, args.prompt_fraction
            )
            eager_text = f"{eager / 2**20:,.0f} | {eager_s:.2f}"
            reduction = f"{eager / chunked:.1f}x"
        else:
            eager_text, reduction = "not run | -", "-"
        print(
            f"| {length} | {eager_text} | {chunked / 2**20:,.0f} | {chunked_s:.2f} | "
            f"{reduction} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
