"""Loss-head memory: eager vs chunked per-token log-probs (and KL) against T.

What is measured: the peak of bytes allocated by the CPU allocator *during* one
forward + backward of the loss head (``mipo.training.logps.token_stats`` followed by
``backward`` of the summed outputs), on top of everything allocated before
(hidden states, head weights). It is read from ``torch.profiler`` with
``profile_memory=True``: every allocation and free is a ``[memory]`` event with
its signed size; the peak is the maximum of their running sum. (The events'
``Total Allocated`` field, which an earlier version of this script read, drifts
upwards across measurements in one process: bytes allocated under one profiler
session and freed outside any stay counted.) The transformer body is not run: the hidden
states are random ``[2 * pairs, T, 576]`` tensors and the head a random
``Linear(576, 49152)`` (SmolLM2-135M's hidden size and vocabulary), one for the
policy and one for the reference.

The table also prints the size of the gradient of the policy hidden states
(``[2 * pairs, T, 576]`` float32), what the loss head hands the trunk and any
loss needs; it is part of the peak only when the peak falls in the backward
pass (for the chunked path the peak is in the forward pass: a few
``[chunk, vocab]`` float32 buffers).
``--against REV`` also measures the chunked path of ``mipo/training/logps.py``
(``mipo/logps.py`` before the trainer's move) at git revision ``REV`` (loaded from ``git show``), side by side in the same process.
``--policy-stats`` adds the policy statistics (WPO's log collision, TRL's head
metrics) to this checkout's paths; ``--against`` runs the revision without them.
On a CUDA device (``--device cuda``) the peak is ``torch.cuda.max_memory_allocated``.

Usage::

    python benchmarks/logps_memory.py --lengths 256 512 1024 2048 4096 --eager-max-length 1024
    python benchmarks/logps_memory.py --against 68030a5 --json out.json
"""

import argparse
import gc
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mipo.training.logps import token_stats

HIDDEN, VOCAB = 576, 49152
MIB = 2**20


def peak_bytes(fn: Callable[[], None], device: str) -> tuple[int, float]:
    """(peak bytes allocated during ``fn()`` beyond what existed before, seconds)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        return torch.cuda.max_memory_allocated() - before, seconds
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
    # The running sum of this session's allocations (+) and frees (-). The
    # events' own "Total Allocated" field is not used: it keeps counting bytes
    # allocated under an earlier profiler session and freed outside one, so it
    # drifts upwards from one measurement to the next in the same process.
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]"), key=lambda e: e["ts"]
    )
    running = peak = 0
    for event in memory:
        running += event["args"]["Bytes"]
        peak = max(peak, running)
    return peak, seconds


def logps_at(revision: str) -> Callable[..., Any]:
    """``token_stats`` of the log-prob module at a git revision."""
    root = Path(__file__).resolve().parent.parent
    for candidate in ("mipo/training/logps.py", "mipo/logps.py"):
        shown = subprocess.run(
            ["git", "show", f"{revision}:{candidate}"],
            cwd=root,
            capture_output=True,
            text=True,
        )
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"--against {revision}: no mipo/training/logps.py there")
    source = shown.stdout
    path = Path(tempfile.mkdtemp()) / f"logps_{revision}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"logps_{revision}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.token_stats


def run(
    stats_fn: Callable[..., Any],
    length: int,
    *,
    pairs: int,
    chunk_size: int | None,
    kl: bool,
    prompt_fraction: float,
    device: str,
    hidden: int = HIDDEN,
    vocab: int = VOCAB,
    policy_stats: bool = False,
) -> tuple[int, float]:
    gen = torch.Generator().manual_seed(0)
    rows = 2 * pairs
    policy_hidden = torch.randn(rows, length, hidden, generator=gen).to(device)
    policy_hidden.requires_grad_(True)
    reference_hidden = torch.randn(rows, length, hidden, generator=gen).to(device)
    policy_head = nn.Linear(hidden, vocab, bias=False).to(device)
    reference_head = nn.Linear(hidden, vocab, bias=False).requires_grad_(False)
    reference_head.to(device)
    labels = torch.randint(0, vocab, (rows, length), generator=gen).to(device)
    labels[:, : int(prompt_fraction * length)] = -100

    # only passed when asked: revisions before it (--against) lack the argument
    extra = {"policy_stats": True} if policy_stats else {}

    def step() -> None:
        stats = stats_fn(
            policy_hidden,
            policy_head,
            labels,
            reference_hidden=reference_hidden,
            reference_head=reference_head,
            kl_forward=kl,
            chunk_size=chunk_size,
            **extra,
        )
        total = stats.policy_logps.sum()
        if stats.kl_forward is not None:
            total = total + stats.kl_forward.sum()
        total.backward()

    return peak_bytes(step, device)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (
        f"{cpu}, {os.cpu_count()} cores, load average {load[0]:.1f}, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096]
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
    parser.add_argument(
        "--policy-stats",
        action="store_true",
        help="also the policy statistics (WPO's log collision, TRL's head metrics)",
    )
    parser.add_argument("--against", help="also the chunked path at this git revision")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--vocab", type=int, default=VOCAB)
    parser.add_argument("--json", help="write the rows to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)
    header = (
        f"{machine()}; pairs {args.pairs}, hidden {args.hidden}, vocab "
        f"{args.vocab}, chunk {args.chunk_size}, prompt fraction "
        f"{args.prompt_fraction}, kl_forward {args.kl}, policy_stats "
        f"{args.policy_stats}, device {args.device}"
    )
    print(header)
    against = logps_at(args.against) if args.against else None
    columns = ["T", "hidden grad (MiB)", "chunked peak (MiB)", "chunked s"]
    if against is not None:
        columns += [f"{args.against} peak (MiB)", f"{args.against} s"]
    columns += ["eager peak (MiB)", "eager s", "eager / chunked"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    results = []
    common = {
        "pairs": args.pairs,
        "kl": args.kl,
        "prompt_fraction": args.prompt_fraction,
        "device": args.device,
        "hidden": args.hidden,
        "vocab": args.vocab,
        "policy_stats": args.policy_stats,
    }
    for length in args.lengths:
        grad = 2 * args.pairs * length * args.hidden * 4
        chunked, chunked_s = run(
            token_stats, length, chunk_size=args.chunk_size, **common
        )
        row: dict[str, Any] = {
            "T": length,
            "hidden_grad_bytes": grad,
            "chunked_peak_bytes": chunked,
            "chunked_s": chunked_s,
        }
        cells = [
            f"{length}",
            f"{grad / MIB:,.0f}",
            f"{chunked / MIB:,.0f}",
            f"{chunked_s:.2f}",
        ]
        if against is not None:
            # the revision's head as it was: without the policy statistics
            plain = {**common, "policy_stats": False}
            old, old_s = run(against, length, chunk_size=args.chunk_size, **plain)
            row.update({"against_peak_bytes": old, "against_s": old_s})
            cells += [f"{old / MIB:,.0f}", f"{old_s:.2f}"]
        if length <= args.eager_max_length:
            eager, eager_s = run(token_stats, length, chunk_size=None, **common)
            row.update({"eager_peak_bytes": eager, "eager_s": eager_s})
            cells += [
                f"{eager / MIB:,.0f}",
                f"{eager_s:.2f}",
                f"{eager / chunked:.1f}x",
            ]
        else:
            cells += ["not run", "-", "-"]
        results.append(row)
        print("| " + " | ".join(cells) + " |", flush=True)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"setup": header, "rows": results}, indent=2) + "\n"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
