"""Held-out evaluation: gold-reward accuracy of greedy answers, and
``python -m mipo.eval RUN_DIR`` on a saved run."""

import json
import os
from pathlib import Path

import pytest
import torch
from tiny import build_tiny_model_dir
from torch import nn

from mipo.data.builtin import arithmetic_records
from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
from mipo.training.evaluate import gold_accuracy
from mipo.training.evaluate import main as eval_main
from mipo.training.trainer import train


class ScriptedPolicy(nn.Module):
    """Answers each prompt with a scripted reply through ``generate``: right for
    the first ``right`` prompts (the gold answer), wrong for the rest."""

    def __init__(self, tokenizer, records, right: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.tokenizer = tokenizer
        self.replies = [
            str(r.gold) if i < right else f"{r.gold}1" for i, r in enumerate(records)
        ]
        self.prompts: list[str] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):  # noqa: ARG002
        assert kwargs["do_sample"] is False
        texts = self.tokenizer.batch_decode(input_ids, skip_special_tokens=False)
        rows = []
        for text, ids in zip(texts, input_ids, strict=True):
            index = len(self.prompts)
            self.prompts.append(text)
            reply = self.tokenizer(self.replies[index], add_special_tokens=False)
            new = reply["input_ids"][:max_new_tokens]
            new += [self.tokenizer.eos_token_id] * (max_new_tokens - len(new))
            rows.append(torch.cat([ids, torch.tensor(new)]))
        return torch.stack(rows)


def test_gold_accuracy_scores_greedy_answers() -> None:
    tokenizer = tiny_chat_tokenizer()
    records = arithmetic_records(n=5, seed=3)
    policy = ScriptedPolicy(tokenizer, records, right=3)
    policy.train()
    accuracy = gold_accuracy(
        policy,
        tokenizer,
        records,
        device=torch.device("cpu"),
        max_new_tokens=6,
    )
    assert accuracy == pytest.approx(3 / 5)
    assert policy.training  # restored
    assert tokenizer.padding_side == "right"  # restored
    # prompts were rendered with the chat template and a generation prompt
    assert all(p.endswith("<|im_start|>assistant\n") for p in policy.prompts)
    assert "What is" in policy.prompts[0]


def test_gold_accuracy_is_none_without_gold() -> None:
    tokenizer = tiny_chat_tokenizer()
    records = [
        r.__class__(prompt=r.prompt, chosen=r.chosen, rejected=r.rejected)
        for r in arithmetic_records(n=2, seed=0)
    ]
    policy = ScriptedPolicy(tokenizer, records, right=0)
    assert (
        gold_accuracy(
            policy, tokenizer, records, device=torch.device("cpu"), max_new_tokens=2
        )
        is None
    )


def test_eval_cli_reruns_a_saved_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = build_tiny_model_dir(tmp_path / "model")
    result = train(
        "recipes/dpo.py",
        {
            "train.model": str(model),
            "train.output_dir": str(tmp_path / "runs"),
            "train.max_steps": 1,
            "train.max_examples": 30,
            "train.batch_size": 2,
            "train.eval_max_examples": 3,
            "train.eval_max_new_tokens": 2,
        },
        progress=False,
    )
    saved = json.loads((result.run_dir / "eval.json").read_text())
    (result.run_dir / "eval.json").unlink()
    capsys.readouterr()
    eval_main([str(result.run_dir)])
    out = capsys.readouterr().out
    again = json.loads((result.run_dir / "eval.json").read_text())
    assert again["checkpoint"] == "checkpoint-1"
    for key in (
        "eval/rewards/accuracies",
        "eval/rewards/margins",
        "eval/loss",
        "eval/kl_reverse_per_token",
        "eval/gold_reward",
    ):
        assert again[key] == pytest.approx(saved[key], rel=1e-5, abs=1e-6), key
        assert key in out


@pytest.mark.slow
def test_a_run_of_an_objective_composed_in_python_is_first_class(
    tmp_path: Path,
) -> None:
    """A run whose objective was built in Python (no recipe file) is evaluated by
    ``python -m mipo.eval RUN_DIR`` in a fresh process and resumed by
    ``python -m mipo.train --resume RUN_DIR``: the objective is stored with the
    run (``objective.pkl``)."""
    import subprocess
    import sys

    from mipo import Objective, TrainConfig
    from mipo.primitives import IPOLink, MeanOverResponse
    from mipo.training.recipes import recipe_from

    model = build_tiny_model_dir(tmp_path / "model")
    objective = Objective(weighter=MeanOverResponse(), link=IPOLink(), beta=0.5)
    config = TrainConfig(
        model=str(model),
        output_dir=str(tmp_path / "runs"),
        max_steps=2,
        max_examples=30,
        batch_size=2,
        eval_max_examples=3,
        eval_max_new_tokens=2,
    )
    result = train(
        recipe_from(objective, config, name="ipo_mean"), progress=False, stop_after=1
    )
    assert (result.run_dir / "objective.pkl").is_file()
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(repo)}
    command = [sys.executable, "-m", "mipo.train", "--resume", str(result.run_dir)]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    trained = json.loads((result.run_dir / "eval.json").read_text())
    assert trained["step"] == 2
    (result.run_dir / "eval.json").unlink()
    command = [sys.executable, "-m", "mipo.eval", str(result.run_dir)]
    done = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    again = json.loads((result.run_dir / "eval.json").read_text())
    assert again["checkpoint"] == "checkpoint-2"
    assert again["eval/loss"] == pytest.approx(trained["eval/loss"], rel=1e-5)
