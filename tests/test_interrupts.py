"""Interrupts and resume bookkeeping on the tiny model.

SIGINT and SIGTERM finish the step, write a checkpoint, print the resume command
and exit 130; ``kill -9`` at a random moment loses nothing a resume cannot
redo; a second writer of a run directory is refused while the first holds its
lock; ``save_total_limit`` and ``save_only_model``; TensorBoard and ``eval.json``
of a resumed run. Every resumed run is compared with one trained straight
through: the final weights must be equal, bit for bit.

The interrupted runs are real processes (``python -c`` running
``mipo.train``'s ``main``) whose objective sleeps a little per micro-batch, so
a signal lands in the middle of training.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import build_tiny_model_dir, tiny_llama

from mipo.tools.console import main as console
from mipo.training.run_dir import LOCK_FILE, RunLock, checkpoints
from mipo.training.trainer import TrainResult, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
STEPS = 10
DELAY = 0.15
"""Seconds the subprocess's objective sleeps per micro-batch."""

SLOW_MAIN = (
    "import sys, time, torch\n"
    "torch.set_num_threads(1)\n"
    "import mipo.objective as o\n"
    "call = o.Objective.__call__\n"
    "def slow(self, batch):\n"
    f"    time.sleep({DELAY})\n"
    "    return call(self, batch)\n"
    "o.Objective.__call__ = slow\n"
    "from mipo.training.trainer import main\n"
    "main()\n"
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def settings(model: Path, out: Path, **extra: object) -> dict[str, object]:
    return {
        "train.model": str(model),
        "train.output_dir": str(out),
        "train.max_steps": STEPS,
        "train.max_examples": 40,
        "train.batch_size": 2,
        "train.learning_rate": 1e-3,
        "train.warmup_steps": 1,
        "train.seed": 5,
        "train.eval_fraction": 0.0,
        "train.report_to": "none",
        **extra,
    }


def start(keys: dict[str, object], *args: str) -> subprocess.Popen[str]:
    """``python -m mipo.train`` (slowed) in a new process."""
    argv = [f"--{key}={value}" for key, value in keys.items()]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MIPO_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_MAIN, *args, *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition: object, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def logged_steps(out: Path) -> list[int]:
    """The steps of the ``metrics.jsonl`` lines of the one run under ``out``."""
    found = list(out.glob("*/metrics.jsonl"))
    if not found:
        return []
    lines = found[0].read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if line.endswith("}")]


def final_weights(result: TrainResult | Path) -> dict[str, torch.Tensor]:
    run_dir = result if isinstance(result, Path) else result.run_dir
    return load_file(run_dir / f"checkpoint-{STEPS}" / "model.safetensors")


def size_of(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def straight(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The uninterrupted run every resumed run must equal."""
    out = tmp_path_factory.mktemp("straight")
    return train("dpo", settings(tiny_model, out), progress=False)


@pytest.mark.slow
def test_sigint_checkpoints_and_prints_the_resume_command(
    tiny_model: Path, tmp_path: Path, straight: TrainResult
) -> None:
    """Ctrl-C after the first step: exit 130, one line with the exact resume
    command, a checkpoint of the last finished step; resuming ends with the
    uninterrupted run's weights and log."""
    sent = signal.SIGINT
    process = start(settings(tiny_model, tmp_path), "dpo")
    wait_for(lambda: logged_steps(tmp_path) or process.poll() is not None)
    process.send_signal(sent)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    (run_dir,) = tmp_path.iterdir()
    (line,) = [x for x in err.splitlines() if x.startswith("mipo: interrupted")]
    assert "mipo: error" not in err
    step = max(logged_steps(tmp_path))
    assert 1 <= step < STEPS
    assert line == (
        f"mipo: interrupted: {sent.name} at step {step} of {STEPS}; checkpoint-{step} "
        f"written in {run_dir}; resume with: python -m mipo.train --resume {run_dir}"
    )
    assert [p.name for p in checkpoints(run_dir)] == [f"checkpoint-{step}"]
    assert not (run_dir / "eval.json").exists()
    resumed = train(resume=run_dir, progress=False)  # what the printed command runs
    assert resumed.step == STEPS
    assert_same_weights(final_weights(resumed), final_weights(straight))
    assert logged_steps(tmp_path) == logged_steps(straight.run_dir.parent)


@pytest.mark.slow
def test_kill_9_at_a_random_moment_then_resume_equals_straight(
    tiny_model: Path, tmp_path: Path, straight: TrainResult
) -> None:
    """Killed (SIGKILL, no cleanup) while saving a checkpoint every step, at a
    random moment after the first one: resuming from whatever is on disk ends
    with the uninterrupted run's weights, and the dead process's lock is gone."""
    process = start(settings(tiny_model, tmp_path, **{"train.save_steps": 1}), "dpo")
    wait_for(
        lambda: list(tmp_path.glob("*/checkpoint-1")) or process.poll() is not None
    )
    time.sleep(random.Random(17).uniform(0.0, 4 * DELAY))
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / LOCK_FILE).is_file()  # left behind, but no longer held
    done = max(int(p.name.split("-")[1]) for p in checkpoints(run_dir))
    assert done < STEPS
    resumed = train(resume=run_dir, progress=False)
    assert_same_weights(final_weights(resumed), final_weights(straight))
    assert logged_steps(tmp_path) == logged_steps(straight.run_dir.parent)


@pytest.mark.slow
def test_a_second_writer_is_refused_and_sigterm_stops_the_first(
    tiny_model: Path,
    tmp_path: Path,
    straight: TrainResult,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """While a resumed run holds the lock, a second ``--resume`` of the same
    directory is refused (exit 2, one line naming the holder's pid) and changes
    nothing; SIGTERM then stops the first cleanly (exit 130, checkpoint), and the
    run resumed once more ends with the uninterrupted run's weights."""
    first = train("dpo", settings(tiny_model, tmp_path), stop_after=2, progress=False)
    process = start({}, "--resume", str(first.run_dir))
    lock = first.run_dir / LOCK_FILE
    wait_for(
        lambda: (
            lock.read_text().strip() == str(process.pid) or process.poll() is not None
        )
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        console(["train", "--resume", str(first.run_dir)])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"mipo: error: {first.run_dir}: another mipo process (pid {process.pid}) is "
        "writing this run directory; wait for it to finish (or stop it), then resume"
    )
    wait_for(lambda: max(logged_steps(tmp_path)) > 2 or process.poll() is not None)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    step = max(logged_steps(tmp_path))
    assert 2 < step < STEPS
    assert f"mipo: interrupted: SIGTERM at step {step} of {STEPS}" in err
    assert f"python -m mipo.train --resume {first.run_dir}" in err
    assert (first.run_dir / f"checkpoint-{step}").is_dir()
    resumed = train(resume=first.run_dir, progress=False)
    assert_same_weights(final_weights(resumed), final_weights(straight))
    assert logged_steps(tmp_path) == logged_steps(straight.run_dir.parent)


def test_the_lock_is_released_and_refuses_a_holder(tmp_path: Path) -> None:
    from mipo.errors import RunLockedError

    held = RunLock(tmp_path)
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path)
    held.release()
    held.release()  # idempotent
    RunLock(tmp_path).release()


def test_save_total_limit_keeps_the_newest(tiny_model: Path, tmp_path: Path) -> None:
    keys = settings(
        tiny_model, tmp_path, **{"train.save_steps": 2, "train.save_total_limit": 2}
    )
    result = train("dpo", keys, progress=False)
    names = [p.name for p in result.run_dir.iterdir() if "checkpoint" in p.name]
    assert sorted(names) == sorted([f"checkpoint-{STEPS - 2}", f"checkpoint-{STEPS}"])


def test_save_only_model_writes_a_model_export(
    tiny_model: Path, tmp_path: Path, straight: TrainResult
) -> None:
    """No optimiser state (a smaller trainer state), the same weights, and the
    checkpoint trains on as a plain model directory, as the refusal advises."""
    keys = settings(tiny_model, tmp_path / "a", **{"train.save_only_model": True})
    result = train("dpo", keys, progress=False)
    checkpoint = result.run_dir / f"checkpoint-{STEPS}"
    state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
    assert set(state) == {"step", "epoch", "consumed", "num_tokens"}
    full = straight.run_dir / f"checkpoint-{STEPS}"
    state_size = (checkpoint / "trainer_state.pt").stat().st_size
    assert state_size < (full / "trainer_state.pt").stat().st_size / 10
    # what was left out is the optimiser's moments (dpo: RMSprop, one per weight)
    saved = size_of(full) - size_of(checkpoint)
    moments = 4 * sum(p.numel() for p in tiny_llama().parameters())
    assert moments < saved < 1.1 * moments
    assert_same_weights(final_weights(result), final_weights(straight))
    again = train(
        "dpo",
        settings(checkpoint, tmp_path / "b", **{"train.max_steps": 1}),
        progress=False,
    )
    assert again.step == 1


def test_resume_purges_later_tensorboard_events(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Killed after step 3 with checkpoint-2 its last: the resumed run rewrites
    step 3; TensorBoard shows each step once, with the new values."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    keys = settings(
        tiny_model,
        tmp_path,
        **{"train.report_to": "tensorboard", "train.save_steps": 2},
    )
    first = train("dpo", keys, stop_after=3, progress=False)
    shutil.rmtree(first.run_dir / "checkpoint-3")  # as if killed before saving it
    resumed = train(resume=first.run_dir, progress=False)
    events = EventAccumulator(str(resumed.run_dir / "tensorboard"))
    events.Reload()
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, STEPS + 1))
    lines = (resumed.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]
    logged = {r["step"]: r["loss"] for r in records}
    assert sorted(logged) == list(range(1, STEPS + 1))
    for event in losses:
        assert event.value == pytest.approx(logged[event.step], rel=1e-6)


def test_resumed_eval_keeps_the_before_training_values(
    tiny_model: Path, tmp_path: Path
) -> None:
    """With a gold reward (the built-in task): the resumed run's eval.json equals
    the straight run's, the gold reward before training included."""
    keys = settings(
        tiny_model,
        tmp_path / "a",
        **{
            "train.max_steps": 3,
            "train.eval_fraction": 0.1,
            "train.eval_max_examples": 3,
            "train.eval_max_new_tokens": 2,
        },
    )
    straight_eval = train("dpo", keys, progress=False).eval
    keys["train.output_dir"] = str(tmp_path / "b")
    first = train("dpo", keys, stop_after=1, progress=False)
    resumed = train(resume=first.run_dir, progress=False)
    assert "eval/gold_reward_before" in resumed.eval
    assert json.loads((resumed.run_dir / "eval.json").read_text()) == straight_eval


def test_a_second_sigint_interrupts_at_once() -> None:
    """The first SIGINT only asks to stop; a second one raises at once; the
    previous handlers come back afterwards."""
    from mipo.training.interrupts import StopRequest

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopRequest() as request:
        os.kill(os.getpid(), signal.SIGTERM)
        assert request.name == "SIGTERM"
    with StopRequest() as request:
        os.kill(os.getpid(), signal.SIGINT)
        assert request.name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs between bytecodes; never reached
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_new_run_stopped_before_its_first_step_leaves_nothing(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mipo.errors import TrainingInterrupted
    from mipo.training.interrupts import StopRequest

    enter = StopRequest.__enter__

    def signalled(self: StopRequest) -> StopRequest:
        enter(self)
        self.signal = signal.SIGINT  # as if Ctrl-C came during setup
        return self

    monkeypatch.setattr(StopRequest, "__enter__", signalled)
    with pytest.raises(TrainingInterrupted, match="SIGINT before the first step"):
        train("dpo", settings(tiny_model, tmp_path), progress=False)
    assert list(tmp_path.iterdir()) == []
