r"""Small collectives the training code shares across processes.

Every helper is the identity in a single process (no collective, no host
sync), so the one-process numbers never change. Under ``torchrun`` the
processes form one group (gloo on CPU, NCCL on GPU, set up by accelerate) and
every helper must be called by every process at the same point, or the
processes wait for each other forever.

* :func:`any_process`: one flag, true when it is true on some process (skip
  agreement: a micro-batch whose loss is not finite on one process is skipped
  on all of them).
* :func:`average_gradients`: the gradients of replicated parameters that no
  wrapper synchronises (the trained service modules) replaced by their mean
  over processes, $\bar g = \frac1W \sum_r g_r$, the same mean DDP and FSDP2
  take of the policy's gradients; one all-reduce of one flat buffer.
* :func:`sum_reducer`: a function summing a tensor over processes, for
  services that fit state from every process's samples (the learned prior).
* :func:`gather_lists`: every process's list, concatenated in rank order.
* :func:`leave_group_at_exit`: the group is destroyed before the process
  exits (see there why).
"""

import atexit
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor


def world_size(accelerator: Any) -> int:
    """Processes of the run (1 without an accelerator)."""
    return 1 if accelerator is None else int(accelerator.num_processes)


def any_process(accelerator: Any, flag: bool) -> bool:
    """``flag`` OR-ed over every process."""
    if world_size(accelerator) == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def average_gradients(accelerator: Any, parameters: Iterable[Tensor]) -> None:
    """Replace every gradient of ``parameters`` by its mean over processes (a
    missing gradient counts as zeros and stays missing where it is missing
    everywhere)."""
    world = world_size(accelerator)
    if world == 1:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    device = accelerator.device
    present = torch.tensor(
        [0.0 if p.grad is None else 1.0 for p in params], device=device
    )
    flat = torch.cat(
        [
            (torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1).float()
            for p in params
        ]
        + [present]
    ).to(device)
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    counts = flat[-len(params) :].tolist()
    offset = 0
    for p, count in zip(params, counts, strict=True):
        size = p.numel()
        if count > 0:
            mean = flat[offset : offset + size].view_as(p) / world
            p.grad = mean.to(dtype=p.dtype, device=p.device)
        offset += size


def sum_reducer(accelerator: Any) -> Callable[[Tensor], Tensor] | None:
    """A function returning a tensor's sum over processes, or ``None`` in a
    single process (callers then keep their one-process arithmetic)."""
    if world_size(accelerator) == 1:
        return None

    def reduce(value: Tensor) -> Tensor:
        total = value.detach().clone()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM)
        return total

    return reduce


def gather_lists(accelerator: Any, values: list[Any]) -> list[Any]:
    """Every process's ``values`` concatenated in rank order (pickled; for
    host-side results such as scores and cached log-probs)."""
    if world_size(accelerator) == 1:
        return list(values)
    from accelerate.utils import gather_object

    parts = gather_object([list(values)])
    return [item for part in parts for item in part]


def rank_share(count: int, accelerator: Any) -> tuple[range, int]:
    """The indices of ``count`` items this process handles, and how many each
    process handles (contiguous blocks of equal size; the last ones may be
    short, so a caller pads its block to the common size when every process
    must run the same number of collective forwards)."""
    world = world_size(accelerator)
    rank = 0 if world == 1 else int(accelerator.process_index)
    share = -(-count // world)
    start = min(rank * share, count)
    return range(start, min(start + share, count)), share


def leave_group_at_exit() -> None:
    """Destroy the default process group when this process exits, if it joined
    one (idempotent; registered once per process).

    A gloo process that exits with its group alive can abort in its C++
    teardown ("terminate called without an active exception", SIGABRT) when
    the other process is still running: on 2 CPU processes, about one exit in
    three of a process that finished first. torchrun then reports the job
    failed after it had finished its work. Destroying the group first, in an
    :mod:`atexit` hook, ends its threads cleanly; it is local, no collective.
    """
    if not getattr(leave_group_at_exit, "registered", False):
        atexit.register(_destroy_group)
        leave_group_at_exit.registered = True  # type: ignore[attr-defined]


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "any_process",
    "average_gradients",
    "gather_lists",
    "leave_group_at_exit",
    "rank_share",
    "sum_reducer",
    "world_size",
]
