"""Ctrl-C and SIGTERM during training: finish the step, checkpoint, say how to
resume.

While the fit loop runs, SIGINT and SIGTERM only set a flag (:class:`StopRequest`).
The loop finishes the optimiser step it is in (and that step's logging,
evaluation and checkpoint), then stops; the trainer writes a checkpoint of that
step and raises :class:`~mipo.errors.TrainingInterrupted`, whose message holds
the exact resume command; the command line exits with status 130. A second
SIGINT while the first is being handled interrupts at once (Python's own
``KeyboardInterrupt``). Signal handlers can only be installed in the main
thread; elsewhere the loop runs without them.
"""

import shlex
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import torch

SIGNALS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop training cleanly."""


class StopRequest:
    """A context in which SIGINT and SIGTERM set :attr:`signal` instead of
    stopping the process; the previous handlers come back on exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, _frame: FrameType | None) -> None:
        self.signal = number
        # a second Ctrl-C stops at once
        signal.signal(signal.SIGINT, signal.default_int_handler)

    @property
    def name(self) -> str:
        """``SIGINT`` or ``SIGTERM`` (empty when no signal came)."""
        return "" if self.signal is None else signal.Signals(self.signal).name


def stop_requested(request: StopRequest | None, accelerator: Any) -> bool:
    """True when a signal asked this process (or, in a multi-process run, any
    process) to stop; every process then stops after the same step."""
    asked = request is not None and request.signal is not None
    if accelerator.num_processes == 1:
        return asked
    flag = torch.tensor([1.0 if asked else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def resume_command(run_dir: Path) -> str:
    """The command that continues ``run_dir``."""
    return f"python -m mipo.train --resume {shlex.quote(str(run_dir))}"


def interrupted_message(name: str, step: int, total: int, run_dir: Path) -> str:
    """The one line reported after a clean stop at ``step``."""
    return (
        f"{name or 'signal'} at step {step} of {total}; checkpoint-{step} written in "
        f"{run_dir}; resume with: {resume_command(run_dir)}"
    )


__all__ = [
    "SIGNALS",
    "StopRequest",
    "interrupted_message",
    "resume_command",
    "stop_requested",
]
