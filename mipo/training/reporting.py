"""Where a run's scalars go besides ``metrics.jsonl``, and its plots.

``metrics.jsonl`` keeps mipo's own keys (``loss``, ``rewards/chosen``,
``eval/loss``). The trackers see the keys as TRL logs them: a training record's
keys get the ``train/`` prefix (``train/rewards/chosen``), an evaluation
record's keys already carry ``eval/``. ``TrainConfig.report_to`` names the
trackers, comma-separated: ``tensorboard`` (the default, always installed),
``wandb``, ``mlflow``, ``trackio``, or ``none``. Each tracker reads its own
environment (``WANDB_MODE=offline``, ``MLFLOW_TRACKING_URI``, ...), so its
offline mode works as it does under TRL.
"""

import abc
import importlib.util
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPORTERS = ("tensorboard", "wandb", "mlflow", "trackio")
"""The trackers ``report_to`` may name (besides ``none``)."""

PROJECT = "mipo"
"""The project name given to wandb and trackio."""


def tag(key: str) -> str:
    """The tracker tag of a record key: ``eval/...`` as is, else ``train/...``."""
    return key if key.startswith("eval/") else f"train/{key}"


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's numeric values (``step`` left out) under their tags."""
    return {
        tag(key): float(value)
        for key, value in record.items()
        if key != "step"
        and isinstance(value, int | float)
        and not isinstance(value, bool)
    }


def parse_report_to(text: str) -> tuple[str, ...]:
    """The tracker names of ``report_to`` (``"none"`` or empty: none).

    Raises:
        ValueError: for a name that is not a tracker (one line, listing them).
        ImportError: for a tracker that is not installed (one line).
    """
    names = [part.strip() for part in text.split(",") if part.strip()]
    if names in ([], ["none"]):
        return ()
    for name in names:
        if name not in REPORTERS:
            raise ValueError(
                f"TrainConfig.report_to: unknown tracker {name!r} (choose from "
                f"{', '.join(REPORTERS)}, none)"
            )
        module = "torch.utils.tensorboard" if name == "tensorboard" else name
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise ImportError(
                f"TrainConfig.report_to: {name!r} is not installed "
                f"(pip install {name}, or leave it out of report_to)"
            )
    return tuple(dict.fromkeys(names))


class AbstractReporter(abc.ABC):
    """One tracker: receives the tagged scalars of every logged record."""

    @abc.abstractmethod
    def log(self, values: Mapping[str, float], step: int) -> None:
        """Record ``values`` at optimiser step ``step``."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and finish."""


class TensorBoardReporter(AbstractReporter):
    """``tensorboard/`` event files of the run directory. A resumed run purges
    the events after its checkpoint step (``SummaryWriter``'s ``purge_step``),
    so no step is shown twice."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(
            log_dir=str(run_dir / "tensorboard"), purge_step=purge
        )

    def log(self, values: Mapping[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbReporter(AbstractReporter):
    """A wandb run named after the run directory (``WANDB_MODE`` honoured)."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:  # noqa: ARG002
        import wandb

        self.run = wandb.init(project=PROJECT, name=run_dir.name, dir=str(run_dir))

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowReporter(AbstractReporter):
    """An MLflow run named after the run directory (``MLFLOW_*`` honoured)."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:  # noqa: ARG002
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run(run_name=run_dir.name)

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.mlflow.log_metrics(dict(values), step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class TrackioReporter(AbstractReporter):
    """A trackio run (local by default, as trackio is)."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:  # noqa: ARG002
        import trackio

        self.trackio = trackio
        trackio.init(project=PROJECT, name=run_dir.name)

    def log(self, values: Mapping[str, float], step: int) -> None:
        self.trackio.log(dict(values), step=step)

    def close(self) -> None:
        self.trackio.finish()


KINDS: dict[str, type[AbstractReporter]] = {
    "tensorboard": TensorBoardReporter,
    "wandb": WandbReporter,
    "mlflow": MlflowReporter,
    "trackio": TrackioReporter,
}


def make_reporters(
    run_dir: Path, report_to: str, *, resume_step: int | None = None
) -> list[AbstractReporter]:
    """The trackers ``report_to`` names, started for ``run_dir``; ``resume_step``:
    the checkpoint step a resumed run continues from (TensorBoard drops its
    later events; the other trackers start a new run of their own)."""
    return [KINDS[name](run_dir, resume_step) for name in parse_report_to(report_to)]


PLOTS = {
    "loss": ("loss",),
    "rewards": ("rewards/chosen", "rewards/rejected"),
    "accuracies": ("rewards/accuracies",),
    "margins": ("rewards/margins",),
}
"""One PNG per entry: its training keys, with the ``eval/`` keys overlaid."""

PLOT_INCHES = (10.0, 6.0)
PLOT_DPI = 100
"""1000 x 600 pixels: readable on a screen."""


def _points(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [
        (r["step"], r[key])
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]


def write_plots(run_dir: Path, title: str = "") -> list[Path]:
    """One PNG per group of :data:`PLOTS` from metrics.jsonl (matplotlib Agg):
    training curves as lines, evaluation points as large markers, titled
    ``title`` (default: the run directory's name)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    records = [json.loads(line) for line in lines if line]
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for name, keys in PLOTS.items():
        figure, axes = plt.subplots(figsize=PLOT_INCHES)
        for key in keys:
            if points := _points(records, key):
                axes.plot(*zip(*points, strict=True), marker="o", ms=3, label=key)
            if points := _points(records, f"eval/{key}"):
                axes.plot(
                    *zip(*points, strict=True),
                    linestyle="--",
                    marker="D",
                    ms=8,
                    label=f"eval/{key}",
                )
        axes.set_xlabel("optimiser step")
        axes.set_ylabel(name)
        axes.set_title(f"{title or run_dir.name}: {name}")
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
        figure.tight_layout()
        target = out_dir / f"{name}.png"
        figure.savefig(target, dpi=PLOT_DPI)
        plt.close(figure)
        written.append(target)
    return written


__all__ = [
    "PLOTS",
    "REPORTERS",
    "AbstractReporter",
    "make_reporters",
    "parse_report_to",
    "scalars",
    "tag",
    "write_plots",
]
