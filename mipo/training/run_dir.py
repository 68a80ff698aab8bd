"""A run directory: resolved config, metrics, TensorBoard events, plots,
checkpoints.

Layout::

    {output_dir}/{recipe}-{YYYYmmdd-HHMMSS}/
        config.json          recipe, overrides, resolved TrainConfig, objective
        metrics.jsonl        one JSON object per logging step
        tensorboard/         SummaryWriter events
        plots/*.png          loss, rewards, accuracies, margins
        checkpoint-{step}/   save_pretrained model (or LoRA adapter) + tokenizer
                             + trainer_state.pt (optimiser, scheduler, RNG, position)
                             + trainer_state.json and README.md (model card):
                             :mod:`mipo.training.hub_files`
        eval.json            held-out evaluation
        .lock                held (flock) by the process writing the run

Checkpoints are written to a temporary directory and renamed into place, so a
``checkpoint-N`` directory is either complete or absent; pruning
(``save_total_limit``) renames an old one away before deleting it. One process
at a time writes a run directory: it holds an exclusive ``flock`` on ``.lock``
(:class:`RunLock`), which the system releases when the process ends, even on
``kill -9``.
"""

import fcntl
import json
import math
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mipo.errors import ConfigError, RunLockedError

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

LOCK_FILE = ".lock"
"""The file whose ``flock`` the process writing a run directory holds."""


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``RUN_DIR/.lock``, held while a
    process writes the run directory; the file records the holder's pid.

    Raises:
        RunLockedError: another process holds it (one line naming that pid).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.handle: Any = self.path.open("a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise RunLockedError(
                f"{run_dir}: another mipo process (pid {holder}) is writing this run "
                "directory; wait for it to finish (or stop it), then resume"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        handle = getattr(self, "handle", None)  # absent if opening failed
        if handle is not None and not handle.closed:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def __del__(self) -> None:
        # a run set up but never trained (a tool, a test) lets go of it too
        self.release()


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The ``config.json`` of a run directory; one clear error when ``run_dir``
    is not one."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        what = "does not exist" if not Path(run_dir).exists() else "has no config.json"
        raise ConfigError(
            f"{run_dir}: not a run directory ({what}); give a directory that "
            "python -m mipo.train wrote"
        )
    return json.loads(path.read_text())


def new_run_dir(output_dir: str | Path, recipe_name: str) -> Path:
    """A fresh ``{output_dir}/{recipe}-{timestamp}``, made atomically (``mkdir``
    without ``exist_ok``; on a clash, the next ``-N`` suffix), so two runs
    started in the same second never share a directory."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(output_dir) / f"{recipe_name}-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    path, suffix = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path = base.with_name(f"{base.name}-{suffix}")
            suffix += 1


def truncate_metrics(run_dir: Path, step: int) -> int:
    """Drop the ``metrics.jsonl`` lines after optimiser step ``step`` (a resumed
    run rewrites them, so no step appears twice); returns how many were dropped."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().splitlines() if line]
    kept = [line for line in lines if int(json.loads(line)["step"]) <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)
    return len(lines) - len(kept)


def finite_json(data: Any) -> Any:
    """``data`` with every NaN or infinite float replaced by ``None``, so the
    files of a run are always valid JSON (a non-finite metric reads ``null``)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {key: finite_json(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite_json(value) for value in data]
    return data


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON atomically (temp file, then rename);
    non-finite floats are written as ``null``."""
    tmp = path.with_name(f".{path.name}.tmp")
    text = json.dumps(finite_json(data), indent=2, sort_keys=False, allow_nan=False)
    tmp.write_text(text + "\n")
    os.replace(tmp, path)


class MetricsLog:
    """metrics.jsonl plus the trackers of ``report_to`` (TensorBoard by default,
    TRL's tags: :mod:`mipo.training.reporting`); only the main process makes one.
    ``resume_step``: the checkpoint step a resumed run continues from (the
    TensorBoard events after it are purged, as ``metrics.jsonl`` is truncated)."""

    def __init__(
        self,
        run_dir: Path,
        report_to: str = "tensorboard",
        *,
        resume_step: int | None = None,
    ) -> None:
        from mipo.training.reporting import make_reporters

        self.path = run_dir / "metrics.jsonl"
        self.reporters = make_reporters(run_dir, report_to, resume_step=resume_step)

    def log(self, record: Mapping[str, float | int]) -> None:
        from mipo.training.reporting import scalars

        with self.path.open("a") as handle:
            handle.write(json.dumps(dict(record)) + "\n")
        values = scalars(record)
        for reporter in self.reporters:
            reporter.log(values, int(record["step"]))

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()


SCORES_FILE = "eval_scores.json"
"""Per-prompt gold rewards and per-pair reward correctness at each evaluation."""


class EvalScores:
    """``eval_scores.json``: ``{"gold": {step: [score per held-out prompt]},
    "correct": {step: [1.0 or 0.0 per held-out pair]}}``, rewritten atomically
    after every evaluation; a resumed run keeps what its first part wrote."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / SCORES_FILE
        self.data: dict[str, dict[str, list[float]]] = (
            json.loads(self.path.read_text()) if self.path.is_file() else {}
        )

    def add(self, kind: str, step: int, values: list[float]) -> None:
        self.data.setdefault(kind, {})[str(step)] = list(values)
        write_json(self.path, self.data)

    def get(self, kind: str, step: int) -> list[float] | None:
        return self.data.get(kind, {}).get(str(step))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every line of ``metrics.jsonl`` (empty when absent)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def write_plots(run_dir: Path, title: str = "") -> list[Path]:
    """The run's plots (:func:`mipo.training.reporting.write_plots`)."""
    from mipo.training.reporting import write_plots as write

    return write(run_dir, title)


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's ``checkpoint-N`` directories, by increasing step."""
    found = [
        (int(m.group(1)), p)
        for p in run_dir.iterdir()
        if p.is_dir() and (m := CHECKPOINT.match(p.name))
    ]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path:
    """The highest-step checkpoint; a clear error when there is none."""
    found = checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(
            f"{run_dir}: no checkpoint-N directory to resume from (the run stopped "
            "before its first checkpoint); start the run again"
        )
    return found[-1]


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (``keep`` 0: none deleted);
    returns the deleted paths. Each is renamed away first, so a process killed
    while deleting never leaves a partial ``checkpoint-N`` behind."""
    found = checkpoints(run_dir)
    old = found[:-keep] if keep > 0 else []
    for path in old:
        trash = path.with_name(f".deleting-{path.name}")
        if trash.exists():  # left by a process killed while deleting
            shutil.rmtree(trash)
        os.replace(path, trash)
        shutil.rmtree(trash)
    return old


def save_checkpoint(
    run_dir: Path,
    step: int,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    state: dict[str, Any],
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``checkpoint-{step}`` atomically: model (or adapter) as safetensors,
    the tokenizer and ``trainer_state.pt``. ``weights``: the full state dict
    gathered from a sharded model (default: ``model.state_dict()``)."""
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".tmp-checkpoint-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(str(tmp), state_dict=weights)
    tokenizer.save_pretrained(str(tmp))
    torch.save(state, tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


__all__ = [
    "MetricsLog",
    "checkpoints",
    "finite_json",
    "latest_checkpoint",
    "LOCK_FILE",
    "RunLock",
    "new_run_dir",
    "prune_checkpoints",
    "read_metrics",
    "read_run_config",
    "truncate_metrics",
    "save_checkpoint",
    "write_json",
    "write_plots",
]
