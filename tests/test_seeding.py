"""The run's seed is set after everything that may draw random numbers before
training (the first conversion of SmolLM2 builds a model, which draws them), so
a run from a fresh model cache samples what a run from a cached model samples
(TI-DPO's anchors, the split of the data)."""

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import build_tiny_model_dir

from mipo.training import setup as run_setup


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def _state_when_models_load(
    monkeypatch: pytest.MonkeyPatch, model: Path, out: Path, *, draw: bool
) -> torch.Tensor:
    """torch's RNG state at the moment the run loads its models; with ``draw``,
    resolving the model path first draws random numbers (as a conversion does)."""
    seen: dict[str, Any] = {}
    resolve = run_setup.resolve_model_path

    def resolving(name: str) -> str:
        if draw:
            torch.rand(1000)
        return resolve(name)

    def loading(*_: Any, **__: Any) -> Any:
        seen["state"] = torch.get_rng_state()
        raise RuntimeError("stop here")

    with monkeypatch.context() as patch:
        patch.setattr(run_setup, "resolve_model_path", resolving)
        patch.setattr(run_setup, "load_models", loading)
        with pytest.raises(RuntimeError, match="stop here"):
            run_setup.setup_run(
                "dpo",
                {
                    "train.model": str(model),
                    "train.dataset": "builtin:arithmetic",
                    "train.output_dir": str(out),
                },
            )
    return seen["state"]


def test_the_seed_is_set_after_the_model_is_resolved(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _state_when_models_load(monkeypatch, tiny_model, tmp_path, draw=False)
    drawn = _state_when_models_load(monkeypatch, tiny_model, tmp_path, draw=True)
    assert torch.equal(plain, drawn)
    torch.rand(1)  # the state is really torch's: drawing moves it
    assert not torch.equal(torch.get_rng_state(), plain)
