"""Two CPU processes (torchrun, gloo) against one, on the tiny random Llama.

One ``torchrun --nproc_per_node 2`` launch of this file (the ``__main__``
block, :func:`worker`) trains every scenario of :data:`SCENARIOS` and writes,
per process, what the tests compare: the run directory, a checksum of every
service's state, the skipped steps, the local and global shapes of the
reference's parameters and the bytes of parameters and optimiser state the
process holds. A second launch runs the documented command (``torchrun ... -m
mipo.train``, DDP). The tests then train the same scenarios in one process with
the doubled batch, here, and compare.

What is checked:

* DDP and FSDP2 3-step trajectories (loss, grad norm, rewards, log-probs)
  equal one process with the doubled batch to 1e-5, for DPO and for FSDP2 with
  LoRA + adapter-off reference + padding-free packing, with the eager head +
  gradient checkpointing + a precomputed reference, with MaPO's activation
  masks and with SparsePO's learned masks;
* a sharded run stopped after 2 steps and resumed equals the uninterrupted one
  (metrics and consolidated weights);
* the reference is sharded: each process holds half of every layer parameter;
* per-process parameter + optimiser memory under FSDP2 is about half of one
  process (measured and printed);
* the learned masks and the learned prior are identical on both processes
  after 3 steps (DDP and FSDP2), TI-DPO (anchor sampling, attribution) trains;
* a non-finite loss on one process skips the step on both (DDP and FSDP2);
* bf16 under FSDP2 (mixed-precision policy) stays within bf16 tolerance of one
  process.
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from mipo.training.token_metrics import NAMES as TOKEN_METRICS

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

BASE = {
    "train.max_steps": 3,
    "train.max_examples": 40,
    "train.eval_max_examples": 4,
    "train.eval_max_new_tokens": 3,
    "train.learning_rate": 1e-3,
    "train.warmup_ratio": 0.0,
    "train.report_to": "none",
}
LEARNED = "LearnedMasks(independent_masks=True, dropout=0.0, mixer_init=1.0)"
FSDP = {"train.sharding": "fsdp2"}

SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "fsdp2": ("dpo", FSDP),
    "fsdp2-lora-packed": (
        "dpo",
        {
            **FSDP,
            "train.lora_rank": 4,
            "train.reference": "adapter_off",
            "train.padding_free": True,
        },
    ),
    "fsdp2-lora-copy-accumulation": (
        "dpo",
        {
            **FSDP,
            "train.lora_rank": 4,
            "train.batch_size": 1,
            "train.gradient_accumulation_steps": 2,
        },
    ),
    "fsdp2-eager-checkpointing-precomputed": (
        "dpo",
        {
            **FSDP,
            "train.logps_chunk_size": 0,
            "train.gradient_checkpointing": True,
            "train.reference": "precomputed",
        },
    ),
    "fsdp2-mapo": ("sparsepo", {**FSDP, "objective.masks": "ActivationMasks()"}),
    "fsdp2-sparsepo": ("sparsepo", {**FSDP, "objective.masks": LEARNED}),
    "ddp-sparsepo": ("sparsepo", {"objective.masks": LEARNED}),
    "fsdp2-bf16": ("dpo", {**FSDP, "train.precision": "bf16"}),
}
"""Runs compared with one process at the doubled batch."""

PRIOR = {
    "objective.prior_update_every": 2,
    "objective.fit_steps": 5,
    "objective.sample_max_new_tokens": 4,
}
RANDOM_SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "fsdp2-prior": ("mi_dpo_learned_prior", {**FSDP, **PRIOR}),
    "ddp-prior": ("mi_dpo_learned_prior", PRIOR),
    "fsdp2-ti_dpo": ("ti_dpo", {**FSDP, "objective.anchor_tokens": 4}),
    "ddp-skip": ("dpo", {}),
    "fsdp2-skip": ("dpo", FSDP),
}
"""Runs whose sampling differs per process: compared across processes only."""

SKIP_CALL = 2
"""Rank 1's objective call that returns a non-finite loss (skip scenarios)."""


def overrides(
    model: Path, out: Path, extra: dict[str, Any], *, one_process: bool = False
) -> dict[str, Any]:
    """A scenario's settings: per-process batch 2 (or the scenario's own) for
    two processes, twice that for one process."""
    batch = extra.get("train.batch_size", 2) * (2 if one_process else 1)
    settings = {
        **BASE,
        "train.model": str(model),
        "train.output_dir": str(out),
        **extra,
        "train.batch_size": batch,
    }
    if one_process:
        settings.pop("train.sharding", None)
    return settings


# -- the worker: runs under torchrun -----------------------------------------


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        value = tensors[key]
        value = value.full_tensor() if hasattr(value, "full_tensor") else value
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()


def _capture(store: dict[str, Any]) -> Any:
    """Keep the run that ``train`` finishes, and record skipped steps."""
    from mipo.training import loop, trainer

    finish, settle = trainer._finish, loop.settle_step

    def keep(run: Any) -> Any:
        store["run"] = run
        return finish(run)

    def record(run: Any) -> Any:
        bad = settle(run)
        if bad is not None:
            store.setdefault("skipped", []).append(run.progress.step)
        return bad

    trainer._finish, loop.settle_step = keep, record
    return lambda: (
        setattr(trainer, "_finish", finish) or setattr(loop, "settle_step", settle)
    )


def _summary(run: Any, store: dict[str, Any]) -> dict[str, Any]:
    services = {
        type(s).__name__: _checksum(s.state_dict())
        for s in run.services
        if s.state_dict()
    }
    return {
        "run_dir": str(run.run_dir),
        "services": services,
        "policy": _checksum(dict(run.models.body.named_parameters())),
        "skipped": store.get("skipped", []),
    }


def _bad_objective(rank: int) -> Any:
    from mipo.errors import NonFiniteLossError
    from mipo.objective import Objective

    original, calls = Objective.__call__, {"n": 0}

    def patched(self: Objective, batch: Any) -> Any:
        calls["n"] += 1
        if rank == 1 and calls["n"] == SKIP_CALL:
            raise NonFiniteLossError("non-finite loss from link (test, rank 1)")
        return original(self, batch)

    Objective.__call__ = patched
    return lambda: setattr(Objective, "__call__", original)


def _train(
    recipe: str | None,
    settings: dict[str, Any],
    *,
    skip_on: int | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """``train`` as the user calls it; the summary of the run it finished
    (with ``skip_on``, that rank's objective fails once)."""
    from accelerate.state import AcceleratorState, GradientState

    from mipo.training import trainer

    # one process group for every run; the precision may change between runs
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    trainer.write_plots = lambda _run_dir: None  # slow, and tested elsewhere
    store: dict[str, Any] = {}
    undo = _capture(store)
    undo_bad = _bad_objective(skip_on) if skip_on is not None else None
    try:
        trainer.train(recipe, settings, progress=False, **kw)
    finally:
        undo()
        if undo_bad is not None:
            undo_bad()
    return _summary(store["run"], store)


def _shapes_and_memory(model: Path, out: Path) -> dict[str, Any]:
    """One FSDP2 step: the reference's per-process shapes and the bytes of
    parameters and optimiser state this process holds."""
    from tqdm import tqdm

    from mipo.training.loop import fit
    from mipo.training.setup import setup_run

    run = setup_run("dpo", overrides(model, out, FSDP), stop_after=1)
    fit(run, tqdm(disable=True))
    reference = {
        name: [list(p.to_local().shape), list(p.shape)]
        for name, p in run.models.reference.model.named_parameters()
    }
    return {"reference": reference, "bytes": held_bytes(run)}


def held_bytes(run: Any) -> int:
    """Parameters plus optimiser state held by this process."""
    from mipo.training.sharding import local_bytes

    inner = getattr(run.optimizer, "optimizer", run.optimizer)
    states = [t for s in inner.state.values() for t in s.values() if t.dim() > 0]
    return local_bytes(run.models.body.parameters()) + local_bytes(states)


def worker(model: Path, out: Path) -> None:
    """Every two-process scenario; writes ``out/rank{r}.json``."""
    rank = int(os.environ["RANK"])
    results: dict[str, Any] = {}
    for name, (recipe, extra) in {**SCENARIOS, **RANDOM_SCENARIOS}.items():
        skip_on = rank if name.endswith("-skip") else None
        settings = overrides(model, out / name, extra)
        results[name] = _train(recipe, settings, skip_on=skip_on)
    settings = overrides(model, out / "resumed", FSDP)
    stopped = _train("dpo", settings, stop_after=2)
    results["fsdp2-resumed"] = _train(None, {}, resume=stopped["run_dir"])
    results["shapes"] = _shapes_and_memory(model, out / "shapes")
    (out / f"rank{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    worker(Path(sys.argv[1]), Path(sys.argv[2]))


# -- the tests: one process here, two through torchrun ------------------------

TIMING = {"tokens_per_second", "peak_memory_mb", "step_seconds"}


def _torchrun(args: list[str], cwd: Path, timeout: int = 400) -> None:
    """``torchrun --standalone --nproc_per_node 2 ARGS``; fails with its output."""
    binary = Path(sys.executable).with_name("torchrun")
    launcher = (
        [str(binary)]
        if binary.is_file()
        else [sys.executable, "-m", "torch.distributed.run"]
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    command = [*launcher, "--standalone", "--nproc_per_node", "2", *args]
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, _failure(done.stdout + done.stderr)


def _failure(output: str) -> str:
    """The lines that name a cause first (a rank's error, a C++ abort), then
    the end of torchrun's output."""
    causes = re.compile(r"terminate called|what\(\)|Error|error:|Fatal|Aborted")
    named = [line for line in output.splitlines() if causes.search(line)]
    return "\n".join(["causes:", *named[:30], "output:", output[-6000:]])


def _records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines
    ]


def _one_process(model: Path, out: Path) -> dict[str, Any]:
    """The single-process runs at batch 4 and the one-process memory."""
    from accelerate.state import AcceleratorState, GradientState
    from tqdm import tqdm

    from mipo.training import trainer
    from mipo.training.loop import fit
    from mipo.training.setup import setup_run

    def fresh() -> None:  # one Accelerator state per run (precisions differ)
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    found: dict[str, Any] = {}
    plots, trainer.write_plots = trainer.write_plots, lambda _run_dir: None
    try:
        for name, (recipe, extra) in {"dpo": ("dpo", {}), **SCENARIOS}.items():
            fresh()
            settings = overrides(model, out / name, extra, one_process=True)
            found[name] = str(trainer.train(recipe, settings, progress=False).run_dir)
        fresh()
        settings = overrides(model, out / "memory", {}, one_process=True)
        run = setup_run("dpo", settings, stop_after=1)
        fit(run, tqdm(disable=True))
        found["bytes"] = held_bytes(run)
    finally:
        trainer.write_plots = plots
        fresh()
    return found


def _produce(root: Path) -> dict[str, Any]:
    from tiny import build_tiny_model_dir

    model = build_tiny_model_dir(root / "model")
    two = root / "two"
    two.mkdir()
    _torchrun([str(HERE / "test_distributed.py"), str(model), str(two)], cwd=REPO)
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    cli = root / "cli"
    documented = ["-m", "mipo.train", "recipes/dpo.py", "--train.batch_size=2"]
    settings = {k: v for k, v in BASE.items() if k != "train.report_to"}
    flags = [f"--{k}={v}" for k, v in settings.items()]
    flags += [f"--train.model={model}", f"--train.output_dir={cli}"]
    _torchrun([*documented, *flags], cwd=REPO)
    (cli_run,) = cli.iterdir()
    return {
        "ranks": ranks,
        "cli": str(cli_run),
        "one": _one_process(model, root / "one"),
    }


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Every run of this file, made once per test session (pytest-xdist workers
    share it through a file lock)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the session's directory, shared by the workers
    root = base / "mipo-distributed"
    root.mkdir(exist_ok=True)
    done = root / "runs.json"
    with FileLock(str(root / "lock")):
        if not done.is_file():
            attempt = Path(tempfile.mkdtemp(dir=root))
            done.write_text(json.dumps(_produce(attempt)))
    return json.loads(done.read_text())


BATCH_AVERAGED = {f"eval/{name}" for name in TOKEN_METRICS}
"""Evaluation metrics averaged over evaluation batches (TRL's convention): the
one-process run's evaluation batches are twice as large, so these differ by
construction; the training values are pooled over processes and compared."""


def _assert_same_records(two: list[dict], one: list[dict], tol: float) -> None:
    from torch.testing import assert_close

    assert [r["step"] for r in two] == [r["step"] for r in one]
    assert len([r for r in one if "loss" in r]) == 3
    for multi, single in zip(two, one, strict=True):
        assert multi.keys() == single.keys()
        for key, value in single.items():
            if key in BATCH_AVERAGED:
                continue
            if isinstance(value, float):
                assert_close(multi[key], value, rtol=tol, atol=tol, msg=key)
            else:
                assert multi[key] == value, key


def test_ddp_through_the_documented_command_equals_one_process(runs: dict) -> None:
    """#18: `torchrun --nproc_per_node 2 -m mipo.train` runs two processes and
    its 3-step trajectory (loss, grad norm, rewards, log-probs, evaluation)
    equals one process with the doubled batch."""
    cli = Path(runs["cli"])
    assert json.loads((cli / "config.json").read_text())["world_size"] == 2
    _assert_same_records(_records(cli), _records(Path(runs["one"]["dpo"])), 1e-5)


@pytest.mark.parametrize("name", [n for n in SCENARIOS if n != "fsdp2-bf16"])
def test_two_processes_equal_one_process(runs: dict, name: str) -> None:
    """FSDP2 (and DDP with learned masks): the 3-step trajectory equals one
    process with the doubled batch, to 1e-5."""
    two = Path(runs["ranks"][0][name]["run_dir"])
    _assert_same_records(_records(two), _records(Path(runs["one"][name])), 1e-5)


def test_fsdp2_in_bf16_stays_within_bf16_tolerance_of_one_process(runs: dict) -> None:
    two = Path(runs["ranks"][0]["fsdp2-bf16"]["run_dir"])
    _assert_same_records(_records(two), _records(Path(runs["one"]["fsdp2-bf16"])), 2e-2)


def test_sharded_resume_equals_the_uninterrupted_run(runs: dict) -> None:
    """Stopped after 2 steps and resumed from the sharded checkpoint: the same
    metrics and the same consolidated weights as the run trained straight
    through."""
    from safetensors.torch import load_file

    straight = Path(runs["ranks"][0]["fsdp2"]["run_dir"])
    resumed = Path(runs["ranks"][0]["fsdp2-resumed"]["run_dir"])
    assert (resumed / "checkpoint-2" / "distributed" / ".metadata").is_file()
    _assert_same_records(_records(resumed), _records(straight), 0.0)
    a = load_file(str(straight / "checkpoint-3" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoint-3" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_consolidated_export_loads_and_equals_one_process(runs: dict) -> None:
    from transformers import AutoModelForCausalLM

    two = Path(runs["ranks"][0]["fsdp2"]["run_dir"]) / "checkpoint-3"
    one = Path(runs["one"]["fsdp2"]) / "checkpoint-3"
    sharded = AutoModelForCausalLM.from_pretrained(two).state_dict()
    single = AutoModelForCausalLM.from_pretrained(one).state_dict()
    assert sharded.keys() == single.keys()
    for key, value in single.items():
        torch.testing.assert_close(sharded[key], value, rtol=1e-5, atol=1e-6)
    assert (two / "distributed" / ".metadata").is_file()
    lora = Path(runs["ranks"][0]["fsdp2-lora-packed"]["run_dir"]) / "checkpoint-3"
    assert (lora / "adapter_model.safetensors").is_file()


def test_the_reference_is_sharded_across_the_processes(runs: dict) -> None:
    """Each process holds its own half of every reference parameter (dim 0)."""
    first, second = (r["shapes"]["reference"] for r in runs["ranks"])
    assert first.keys() == second.keys() and len(first) > 10
    for name, (local, full) in first.items():
        other, _ = second[name]
        assert local[0] + other[0] == full[0], name
        assert local[1:] == full[1:] == other[1:], name
        assert 0 < local[0] < full[0], name


def test_fsdp2_holds_about_half_the_parameters_and_optimiser_state(
    runs: dict,
) -> None:
    one = runs["one"]["bytes"]
    held = [r["shapes"]["bytes"] for r in runs["ranks"]]
    ratios = [h / one for h in held]
    print(
        f"parameters + AdamW state: one process {one / 2**20:.3f} MiB; FSDP2 over "
        f"2 processes {held[0] / 2**20:.3f} and {held[1] / 2**20:.3f} MiB "
        f"(ratios {ratios[0]:.3f}, {ratios[1]:.3f})"
    )
    assert all(0.45 < ratio < 0.55 for ratio in ratios)
    assert sum(held) == pytest.approx(one, rel=0.01)


@pytest.mark.parametrize(
    "name", ["fsdp2-sparsepo", "ddp-sparsepo", "fsdp2-prior", "ddp-prior"]
)
def test_service_state_is_identical_on_every_process(runs: dict, name: str) -> None:
    """The learned masks and the learned prior after 3 steps: the same on both
    processes, and the checkpointed copy is that state."""
    from safetensors.torch import load_file

    from mipo.training.services.learned_prior import PRIOR_FILE
    from mipo.training.services.masks import MASK_MODEL_FILE

    first, second = (r[name]["services"] for r in runs["ranks"])
    assert len(first) == 1 and first == second
    run_dir = Path(runs["ranks"][0][name]["run_dir"])
    (saved,) = [
        p
        for p in (run_dir / "checkpoint-3").iterdir()
        if p.name in (PRIOR_FILE, MASK_MODEL_FILE)
    ]
    assert _checksum(load_file(str(saved))) == next(iter(first.values()))


@pytest.mark.parametrize("name", ["ddp-skip", "fsdp2-skip"])
def test_a_non_finite_loss_on_one_process_skips_the_step_on_both(
    runs: dict, name: str
) -> None:
    first, second = (r[name] for r in runs["ranks"])
    assert first["skipped"] == second["skipped"] == [2]
    records = _records(Path(first["run_dir"]))
    skipped = [r for r in records if "skipped" in r]
    assert [r["step"] for r in skipped] == [2]
    assert "rank 1" in skipped[0]["skipped"] and skipped[0]["pairs"]
    assert first["policy"] == second["policy"]
    assert max(r["step"] for r in records) == 3


def test_ti_dpo_samples_and_attributes_under_fsdp2(runs: dict) -> None:
    """Anchor generation and attribution bypass the policy's forward: every
    process takes part and the run trains."""
    records = _records(Path(runs["ranks"][0]["fsdp2-ti_dpo"]["run_dir"]))
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and all(map(lambda x: x == x, losses))
    assert any(r.get("terms/triplet") for r in records)


def _copy_run(runs: dict, name: str, into: Path) -> Path:
    """A private copy of a session run (the tests below write into it)."""
    source = Path(runs["ranks"][0][name]["run_dir"])
    return Path(shutil.copytree(source, into / source.name))


def test_mipo_eval_reads_the_consolidated_export(runs: dict, tmp_path: Path) -> None:
    """``python -m mipo.eval`` on a sharded run, in one process: its held-out
    numbers equal those the two processes wrote."""
    from mipo.training.evaluate import evaluate_run

    run_dir = _copy_run(runs, "fsdp2", tmp_path)
    written = json.loads((run_dir / "eval.json").read_text())
    again = evaluate_run(run_dir)
    assert again["checkpoint"] == "checkpoint-3"
    for key in ("eval/rewards/accuracies", "eval/rewards/margins", "eval/loss"):
        assert again[key] == pytest.approx(written[key], rel=1e-5, abs=1e-6), key


def test_a_sharded_run_resumed_without_sharding_is_refused(
    runs: dict, tmp_path: Path
) -> None:
    from accelerate.state import AcceleratorState, GradientState

    from mipo.training.trainer import train

    run_dir = _copy_run(runs, "fsdp2", tmp_path)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    with pytest.raises(ValueError, match=r"resume it with --train.sharding=fsdp2"):
        train(resume=run_dir, overrides={"train.sharding": "none"}, progress=False)


def test_a_sharded_checkpoint_carries_the_trainer_state_and_card(runs: dict) -> None:
    """Written into the temporary directory before it is renamed: the card
    names the checkpoint by its final name."""
    run_dir = Path(runs["ranks"][0]["fsdp2"]["run_dir"])
    state = json.loads((run_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert [r["step"] for r in state["log_history"] if "loss" in r] == [1, 2, 3]
    card = (run_dir / "checkpoint-3" / "README.md").read_text()
    assert f"# {run_dir.name} / checkpoint-3\n" in card
    assert "x 2 processes" in card
