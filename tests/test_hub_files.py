"""``trainer_state.json`` and the model card in every checkpoint: transformers
reads the state back, its history holds the logged steps and evaluations up to
the checkpoint (the last one's, the final evaluation too), and the card states
the method, settings and held-out results."""

import json
import os
from pathlib import Path

import pytest
from tiny import build_tiny_model_dir
from transformers.trainer_callback import TrainerState

from mipo.training.trainer import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hub-files")
    model = build_tiny_model_dir(root / "model")
    rows = [
        {"prompt": f"{i} + 1 =", "chosen": f" {i + 1}", "rejected": f" {2 * i + 3}0"}
        for i in range(16)
    ]
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = train(
        "dpo",
        {
            "train.model": str(model),
            "train.dataset": str(data),
            "train.output_dir": str(root / "runs"),
            "train.max_steps": 3,
            "train.batch_size": 2,
            "train.eval_steps": 2,
            "train.save_steps": 2,
            "train.eval_fraction": 0.25,
            "train.report_to": "none",
        },
        progress=False,
    )
    return result.run_dir


def _metrics(run_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]


def test_transformers_reads_the_trainer_state(run_dir: Path) -> None:
    state = TrainerState.load_from_json(
        str(run_dir / "checkpoint-2" / "trainer_state.json")
    )
    assert state.global_step == 2 and state.max_steps == 3
    assert (
        state.eval_steps == 2 and state.save_steps == 2 and state.train_batch_size == 2
    )
    train_steps = [r["step"] for r in state.log_history if "loss" in r]
    assert train_steps == [1, 2]
    (evaluation,) = [r for r in state.log_history if "eval_loss" in r]
    logged = next(r for r in _metrics(run_dir) if r["step"] == 2 and "eval/loss" in r)
    assert evaluation["eval_loss"] == logged["eval/loss"]
    assert evaluation["eval_rewards/accuracies"] == logged["eval/rewards/accuracies"]
    assert not any(key.startswith("eval/") for key in evaluation)
    first = next(r for r in _metrics(run_dir) if r["step"] == 1 and "loss" in r)
    assert state.log_history[0] == first  # training records as logged (TRL's names)
    assert state.num_input_tokens_seen == state.log_history[1]["num_tokens"] > 0


def test_the_last_checkpoint_holds_the_final_evaluation(run_dir: Path) -> None:
    state = json.loads((run_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    final = json.loads((run_dir / "eval.json").read_text())
    last = state["log_history"][-1]
    assert last["step"] == 3 and last["eval_loss"] == final["eval/loss"]
    assert [r["step"] for r in state["log_history"] if "loss" in r] == [1, 2, 3]
    assert not list(run_dir.glob("checkpoint-*/.*.tmp"))


def test_the_model_card_states_method_settings_and_results(run_dir: Path) -> None:
    card = (run_dir / "checkpoint-3" / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: transformers" in front and "- dpo" in front
    assert "base_model" not in front  # a local model directory is not a Hub id
    assert "3 of 3 optimiser steps" in body
    assert "Objective(prior=ReferencePrior()" in body
    assert "## Held-out results at step 3" in body
    final = json.loads((run_dir / "eval.json").read_text())
    accuracy = final["eval/rewards/accuracies"]
    low = final["eval/rewards/accuracies_low"]
    assert f"| `eval_rewards/accuracies` | {accuracy:.4f} (95 % CI {low:.3f}" in body
    assert f'path = "{run_dir / "checkpoint-3"}"' in body
    assert "model = AutoModelForCausalLM.from_pretrained(path)" in body
    earlier = (run_dir / "checkpoint-2" / "README.md").read_text()
    assert "## Held-out results at step 2" in earlier


def test_a_lora_card_loads_the_adapter(run_dir: Path, tmp_path: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())["train"]
    result = train(
        "dpo",
        {
            "train.model": config["model"],
            "train.dataset": config["dataset"],
            "train.output_dir": str(tmp_path),
            "train.max_steps": 1,
            "train.batch_size": 2,
            "train.lora_rank": 2,
            "train.eval_fraction": 0.25,
            "train.report_to": "none",
        },
        progress=False,
    )
    card = (result.run_dir / "checkpoint-1" / "README.md").read_text()
    assert "model = AutoPeftModelForCausalLM.from_pretrained(path)" in card
    assert "| LoRA | rank 2 |" in card
