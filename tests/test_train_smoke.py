"""End-to-end training runs of a few steps on a tiny random Llama (CPU).

The model (hidden 64, 2 layers, 4 heads, 2 kv heads, tied embeddings) and the
byte-level ChatML tokenizer of :mod:`mipo.data.tiny_tokenizer` are built in the
test and saved to a temporary directory; nothing is downloaded.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from tiny import build_tiny_model_dir

from mipo.training.models import AdapterOffReference, FrozenCopyReference
from mipo.training.trainer import TrainResult, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TRL_KEYS = {
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
}
LOOP_KEYS = {
    "step",
    "epoch",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "peak_memory_mb",
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def run(
    recipe: str, model: Path, out: Path, *, steps: int = 2, **overrides: object
) -> TrainResult:
    """Train ``recipe`` for ``steps`` on 40 built-in arithmetic pairs."""
    base = {
        "train.model": str(model),
        "train.output_dir": str(out),
        "train.max_steps": steps,
        "train.max_examples": 40,
        "train.batch_size": 2,
        "train.eval_max_examples": 4,
        "train.eval_max_new_tokens": 3,
    }
    return train(recipe, {**base, **overrides}, progress=False)


def read_metrics(run_dir: Path) -> list[dict]:
    """The training records of metrics.jsonl (evaluation records left out)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def read_evals(run_dir: Path) -> list[dict]:
    """The evaluation records of metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" not in r]


def test_dpo_writes_every_output(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run("recipes/dpo.py", tiny_model, tmp_path)
    assert result.step == 2
    assert result.run_dir.parent == tmp_path
    assert result.run_dir.name.startswith("dpo-")
    records = read_metrics(result.run_dir)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert TRL_KEYS | LOOP_KEYS <= set(record)
        assert all(torch.isfinite(torch.tensor(float(v))) for v in record.values()), (
            record
        )
    # the first step is at the reference: every implicit reward is exactly zero
    assert records[0]["rewards/chosen"] == 0.0
    assert records[0]["loss"] == pytest.approx(0.6931471805599453, abs=1e-6)
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["train"]["max_steps"] == 2
    assert config["recipe_name"] == "dpo"
    for name in ("loss", "rewards", "accuracies", "margins"):
        assert (result.run_dir / "plots" / f"{name}.png").stat().st_size > 0
    assert list((result.run_dir / "tensorboard").glob("events.out.tfevents.*"))
    checkpoint = result.run_dir / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file()
    assert (checkpoint / "trainer_state.pt").is_file()
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    assert tokenizer.eos_token_id == 2
    assert model.config.hidden_size == 64
    evaluation = json.loads((result.run_dir / "eval.json").read_text())
    assert evaluation["eval/pairs"] == 4
    assert 0.0 <= evaluation["eval/rewards/accuracies"] <= 1.0
    assert 0.0 <= evaluation["eval/gold_reward"] <= 1.0
    low, high = evaluation["eval/gold_gain_low"], evaluation["eval/gold_gain_high"]
    assert low <= evaluation["eval/gold_gain"] <= high
    assert "eval/gold_reward_before" in evaluation
    assert "eval/kl_reverse_per_token" in evaluation
    low, high = (
        evaluation["eval/rewards/accuracies_low"],
        evaluation["eval/rewards/accuracies_high"],
    )
    assert low <= evaluation["eval/rewards/accuracies"] <= high
    # the evaluation before training (gold only) and the final one are logged too
    assert [r["step"] for r in read_evals(result.run_dir)] == [0, 2]
    assert read_evals(result.run_dir)[-1] == evaluation
    scores = json.loads((result.run_dir / "eval_scores.json").read_text())
    assert set(scores["gold"]) == {"0", "2"} and len(scores["gold"]["2"]) == 4
    assert sum(scores["correct"]["2"]) / 4 == evaluation["eval/rewards/accuracies"]
    assert result.reference_forwards > 0


def test_simpo_never_runs_a_reference(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a reference model was used by a reference-free run")

    monkeypatch.setattr(FrozenCopyReference, "__init__", forbidden)
    monkeypatch.setattr(AdapterOffReference, "__init__", forbidden)
    result = run("recipes/simpo.py", tiny_model, tmp_path)
    assert result.reference_forwards == 0
    record = read_metrics(result.run_dir)[-1]
    assert TRL_KEYS | {"terms/sft"} <= set(record) or TRL_KEYS <= set(record)
    assert "eval/kl_reverse_per_token" not in result.eval


def test_tdpo_runs_with_forward_kl(tiny_model: Path, tmp_path: Path) -> None:
    result = run(
        "recipes/tdpo.py",
        tiny_model,
        tmp_path,
        **{
            "train.learning_rate": 1e-3,
            "train.warmup_steps": 0,
            "train.warmup_ratio": 0.0,
        },
    )
    records = read_metrics(result.run_dir)
    assert len(records) == 2
    # after one real update the policy has moved off the reference
    assert records[1]["rewards/chosen"] != 0.0


def test_tis_dpo_reads_token_weights_from_a_file(
    tiny_model: Path, tmp_path: Path
) -> None:
    rows = []
    for i in range(12):
        chosen, rejected = f" {i + 1}", f" {i + 2}0"
        # byte-level tokenizer: one token per byte, plus the EOS
        rows.append(
            {
                "prompt": f"{i} + 1 =",
                "chosen": chosen,
                "rejected": rejected,
                "chosen_weight": [1.0] * (len(chosen.encode()) + 1),
                "rejected_weight": [0.5] * (len(rejected.encode()) + 1),
            }
        )
    data = tmp_path / "weights.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = run(
        "recipes/tis_dpo.py",
        tiny_model,
        tmp_path / "runs",
        **{"train.dataset": str(data), "train.max_examples": 0},
    )
    assert result.step == 2
    assert "eval/gold_reward" not in result.eval
    assert TRL_KEYS <= set(read_metrics(result.run_dir)[-1])


def test_resume_continues_identically(tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    overrides = {
        "train.learning_rate": 1e-3,
        "train.optimizer": "adamw",
        "train.lr_schedule": "cosine",
        "train.warmup_steps": 1,
        "train.seed": 7,
        "train.eval_fraction": 0.0,  # no evaluation: this test is about the loop
    }
    straight = run("recipes/dpo.py", tiny_model, tmp_path / "a", steps=4, **overrides)
    base = {
        "train.model": str(tiny_model),
        "train.output_dir": str(tmp_path / "b"),
        "train.max_steps": 4,
        "train.max_examples": 40,
        "train.batch_size": 2,
        "train.eval_max_examples": 4,
        "train.eval_max_new_tokens": 3,
        **overrides,
    }
    first = train("recipes/dpo.py", base, stop_after=2, progress=False)
    assert first.step == 2
    assert (first.run_dir / "checkpoint-2").is_dir()
    resumed = train(resume=first.run_dir, progress=False)
    assert resumed.step == 4
    assert resumed.run_dir == first.run_dir
    expected = load_file(straight.run_dir / "checkpoint-4" / "model.safetensors")
    actual = load_file(resumed.run_dir / "checkpoint-4" / "model.safetensors")
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-6)
    steps = [r["step"] for r in read_metrics(resumed.run_dir) if "loss" in r]
    assert steps == [1, 2, 3, 4]
    straight_losses = [r["loss"] for r in read_metrics(straight.run_dir)]
    resumed_losses = [r["loss"] for r in read_metrics(resumed.run_dir)]
    torch.testing.assert_close(
        torch.tensor(resumed_losses), torch.tensor(straight_losses), rtol=0, atol=1e-6
    )


def test_precomputed_reference_matches_copy(tiny_model: Path, tmp_path: Path) -> None:
    overrides = {
        "train.learning_rate": 1e-3,
        "train.warmup_steps": 0,
        "train.warmup_ratio": 0.0,
        "train.eval_fraction": 0.0,
    }
    copy = run("recipes/dpo.py", tiny_model, tmp_path / "copy", **overrides)
    cached = run(
        "recipes/dpo.py",
        tiny_model,
        tmp_path / "cached",
        **overrides,
        **{"train.reference": "precomputed"},
    )
    assert cached.reference_forwards == 0
    assert list((tmp_path / "cached" / ".reference_cache").glob("*.pt"))
    for want, got in zip(
        read_metrics(copy.run_dir), read_metrics(cached.run_dir), strict=True
    ):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-5), key
    # step 2 is after a real update: rewards are nonzero and still agree
    assert read_metrics(copy.run_dir)[1]["rewards/chosen"] != 0.0


def test_precomputed_reference_refused_for_kl_objectives(
    tiny_model: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="precomputed.*kl_forward"):
        run(
            "recipes/tdpo.py",
            tiny_model,
            tmp_path,
            **{"train.reference": "precomputed"},
        )


def test_lora_adapter_off_reference(tiny_model: Path, tmp_path: Path) -> None:
    result = run(
        "recipes/dpo.py",
        tiny_model,
        tmp_path,
        **{
            "train.lora_rank": 4,
            "train.reference": "adapter_off",
            "train.learning_rate": 1e-3,
            "train.warmup_steps": 0,
        },
    )
    checkpoint = result.run_dir / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert not (checkpoint / "model.safetensors").exists()
    assert result.reference_forwards > 0
    records = read_metrics(result.run_dir)
    assert records[0]["rewards/chosen"] == 0.0


@pytest.mark.slow
def test_ti_dpo_runs_with_attribution_and_anchor(
    tiny_model: Path, tmp_path: Path
) -> None:
    result = run("recipes/ti_dpo.py", tiny_model, tmp_path)
    record = read_metrics(result.run_dir)[-1]
    assert TRL_KEYS | {"terms/triplet"} <= set(record)
    assert result.reference_forwards > 0
