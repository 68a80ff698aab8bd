"""Training metrics: accumulated on the device, synced to the host once per
logging step, written to ``metrics.jsonl`` and TensorBoard.

Each micro-batch adds the objective's detached scalars and its token count to
float64 / int64 device tensors (no host sync); a logging step averages them over
the micro-batches since the last log, then over processes, and reads every value
with one ``tolist``. The values equal a float64 host accumulation exactly.

``num_tokens`` is TRL's: the running count of non-padding tokens (prompts
included, chosen plus rejected, every process) of the training micro-batches
of the steps taken so far; a checkpoint stores it, so a resumed run continues
the count.
"""

import resource
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


class MetricsAccumulator:
    """Sums of per-micro-batch metrics since the last logging step."""

    def __init__(self, device: torch.device, step: int = 0) -> None:
        self.device = device
        self.total_tokens = 0
        self.reset(step)

    def reset(self, step: int) -> None:
        """Start a new logging window after optimiser step ``step``."""
        self.sums: dict[str, Tensor] = {}
        self.count = 0
        self.tokens = torch.zeros((), dtype=torch.int64, device=self.device)
        self.step = step
        self.restart_clock()

    def restart_clock(self) -> None:
        """Time from now on (step times leave evaluation out)."""
        self.started = time.perf_counter()

    def add(self, metrics: Mapping[str, Tensor], tokens: Tensor) -> None:
        """One micro-batch's metrics and non-padding token count."""
        for key, value in metrics.items():
            value = value.detach().to(device=self.device, dtype=torch.float64)
            total = self.sums.get(key)
            self.sums[key] = value if total is None else total + value
        self.count += 1
        self.tokens = self.tokens + tokens.to(self.device)

    def record(
        self,
        accelerator: Any,
        *,
        step: int,
        epoch: float,
        learning_rate: float,
        grad_norm: Tensor | float,
    ) -> dict[str, Any]:
        """The averaged record of the window (one host sync), then a new window."""
        keys = sorted(self.sums)
        count = max(self.count, 1)
        values = torch.stack(
            [self.sums[k] / count for k in keys] + [self.tokens.to(torch.float64)]
        )
        if accelerator.num_processes > 1:
            values = accelerator.reduce(values, reduction="sum")
            values[:-1] /= accelerator.num_processes
        norm = torch.as_tensor(grad_norm, dtype=torch.float64, device=values.device)
        *averaged, tokens, norm_value = torch.cat([values, norm.reshape(1)]).tolist()
        seconds = time.perf_counter() - self.started
        record: dict[str, Any] = {"step": step, "epoch": round(epoch, 4)}
        record.update(dict(zip(keys, averaged, strict=True)))
        record["learning_rate"] = learning_rate
        record["grad_norm"] = norm_value
        record["tokens_per_second"] = tokens / max(seconds, 1e-9)
        self.total_tokens += int(tokens)
        record["num_tokens"] = self.total_tokens
        record["step_seconds"] = seconds / max(step - self.step, 1)
        record["peak_memory_mb"] = peak_memory_mb(self.device)
        self.reset(step)
        return record

    def tokens_seen(self, accelerator: Any) -> int:
        """The running token count including the open window (every process
        joins; one host sync), for checkpoints."""
        window = self.tokens
        if accelerator.num_processes > 1:
            window = accelerator.reduce(window, reduction="sum")
        return self.total_tokens + int(window)


def peak_memory_mb(device: torch.device) -> float:
    """Peak allocated accelerator memory, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


__all__ = ["MetricsAccumulator", "peak_memory_mb"]
