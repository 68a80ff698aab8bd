"""The non-finite policy on the tiny model: a NaN or infinite loss or gradient
norm skips the optimiser step (weights and optimiser moments unchanged), is
logged with its step, micro-batch and pairs, and ``max_bad_steps`` consecutive
bad steps stop the run; a checkpoint never holds non-finite weights."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_smoke import run
from tiny import build_tiny_model_dir

from mipo.errors import NonFiniteLossError, TrainingStopped
from mipo.objective import Objective
from mipo.training.checkpoint import check_finite_weights
from mipo.training.run_dir import finite_json

ORIGINAL = Objective.__call__


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor  # type: ignore[attr-defined]
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None  # type: ignore[attr-defined]


def _bad_on(calls: set[int], make_bad: object) -> object:
    count = {"n": 0}

    def patched(self: Objective, batch: object) -> object:
        count["n"] += 1
        out = ORIGINAL(self, batch)
        if count["n"] in calls:
            return make_bad(out)  # type: ignore[operator]
        return out

    return patched


def _raise(_out: object) -> object:
    raise NonFiniteLossError("non-finite loss from link (pairs [0])")


def _grad(factor: float) -> object:
    def bad(out: object) -> object:
        loss = _ScaleGrad.apply(out.loss, factor)  # type: ignore[attr-defined]
        return dataclasses.replace(out, loss=loss)  # type: ignore[type-var]

    return bad


def _lines(run_dir: Path) -> list[dict]:
    return [
        json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().split("\n") if x
    ]


SETTINGS = {
    "train.save_steps": 1,
    "train.eval_fraction": 0.0,
    "train.learning_rate": 1e-3,
    "train.warmup_steps": 1,
}


@pytest.mark.parametrize(
    "bad",
    [_raise, _grad(float("nan")), _grad(float("inf"))],
    ids=["loss", "grad-norm", "inf-norm-clipped"],
)
def test_bad_first_step_is_skipped(
    bad: object, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Objective, "__call__", _bad_on({1}, bad))
    result = run("recipes/dpo.py", tiny_model, tmp_path, **SETTINGS)
    assert result.step == 2
    lines = _lines(result.run_dir)
    skipped = [r for r in lines if "skipped" in r]
    assert [r["step"] for r in skipped] == [1]
    assert "non-finite" in skipped[0]["skipped"]
    if bad is _raise:
        assert skipped[0]["micro_batch"] == 1 and len(skipped[0]["pairs"]) == 2
    assert [r["step"] for r in lines if "loss" in r] == [2]
    # step 1 changed nothing: its checkpoint holds the initial weights, and the
    # optimiser has no moments yet
    initial = load_file(tiny_model / "model.safetensors")
    after = load_file(result.run_dir / "checkpoint-1" / "model.safetensors")
    for key, value in after.items():
        torch.testing.assert_close(value, initial[key], rtol=0, atol=0)
    state = torch.load(
        result.run_dir / "checkpoint-1" / "trainer_state.pt", weights_only=False
    )
    assert state["optimizer"]["state"] == {}
    moved = load_file(result.run_dir / "checkpoint-2" / "model.safetensors")
    assert any(not torch.equal(moved[k], initial[k]) for k in moved)


def test_consecutive_bad_steps_stop_the_run(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Objective, "__call__", _bad_on(set(range(1, 99)), _raise))
    with pytest.raises(TrainingStopped, match="stopped at step 2: 2 consecutive"):
        run(
            "recipes/dpo.py",
            tiny_model,
            tmp_path,
            steps=5,
            **{"train.max_bad_steps": 2, "train.eval_fraction": 0.0},
        )
    (run_dir,) = tmp_path.iterdir()
    assert [r["step"] for r in _lines(run_dir)] == [1, 2]


def test_checkpoint_refuses_non_finite_weights(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from accelerate import Accelerator

    gather = Accelerator.get_state_dict

    def poisoned(self: Accelerator, model: object, *args: object) -> dict:
        weights = dict(gather(self, model, *args))
        first = next(iter(weights))
        weights[first] = torch.full_like(weights[first], float("nan"))
        return weights

    monkeypatch.setattr(Accelerator, "get_state_dict", poisoned)
    with pytest.raises(TrainingStopped, match="checkpoint-1 not written: parameter"):
        run("recipes/dpo.py", tiny_model, tmp_path, steps=1, **SETTINGS)
    (run_dir,) = tmp_path.iterdir()
    assert not list(run_dir.glob("*checkpoint-1"))
    with pytest.raises(TrainingStopped, match="'w'"):
        check_finite_weights({"w": torch.tensor([1.0, math.inf])}, 3)
    check_finite_weights({"w": torch.ones(2), "i": torch.ones(2, dtype=torch.long)}, 3)


def test_non_finite_metrics_are_written_as_null() -> None:
    data = {"a": math.nan, "b": [1.0, -math.inf], "c": {"d": 2.5}, "e": "x"}
    assert finite_json(data) == {"a": None, "b": [1.0, None], "c": {"d": 2.5}, "e": "x"}
    json.dumps(finite_json(data), allow_nan=False)


def test_run_dirs_are_made_atomically_and_metrics_truncate(tmp_path: Path) -> None:
    from mipo.training.run_dir import new_run_dir, truncate_metrics

    made = {new_run_dir(tmp_path, "dpo") for _ in range(3)}
    assert len(made) == 3 and all(p.is_dir() for p in made)
    run_dir = next(iter(made))
    lines = [{"step": s, "loss": 1.0} for s in (1, 2, 3, 4)] + [{"step": 2}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert truncate_metrics(run_dir, 2) == 2
    kept = _lines(run_dir)
    assert [r["step"] for r in kept] == [1, 2, 2]
