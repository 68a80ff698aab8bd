"""SparsePO with learned masks and MaPO with activation masks, end to end: two
optimiser steps on a tiny random Llama (CPU, nothing downloaded)."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import build_tiny_model_dir
from torch.testing import assert_close

from mipo.training.services.masks import LearnedMaskModel
from mipo.training.trainer import MASK_MODEL_FILE, evaluate_run, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def _overrides(model: Path, out: Path, **more: object) -> dict[str, object]:
    return {
        "train.model": str(model),
        "train.output_dir": str(out),
        "train.max_steps": 2,
        "train.max_examples": 24,
        "train.batch_size": 2,
        "train.learning_rate": 1e-3,
        "train.warmup_ratio": 0.0,
        "train.eval_max_examples": 4,
        "train.eval_max_new_tokens": 2,
        **more,
    }


def test_sparse_indp_trains_mask_parameters_and_saves_them(
    tiny_model: Path, tmp_path: Path
) -> None:
    result = train(
        "recipes/sparsepo.py",
        _overrides(
            tiny_model,
            tmp_path,
            **{
                "objective.masks": "LearnedMasks(independent_masks=True)",
                "objective.l1_reward": 0.001,
                "objective.l1_kl": 0.001,
                "train.save_steps": 1,
            },
        ),
        progress=False,
    )
    assert result.step == 2
    first = load_file(str(result.run_dir / "checkpoint-1" / MASK_MODEL_FILE))
    last = load_file(str(result.run_dir / "checkpoint-2" / MASK_MODEL_FILE))
    layout = LearnedMaskModel(
        hidden_size=64, num_layers=2, independent=True, dropout=0.01
    ).state_dict()
    assert set(first) == set(last) == set(layout)
    # the second step moved both networks (reward mask m_u and KL mask m_d)
    for network in ("reward", "kl"):
        assert not torch.equal(
            first[f"{network}.combine.weight"], last[f"{network}.combine.weight"]
        )
    # the training records (the trainer also logs its evaluations there)
    records = [
        record
        for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        if "loss" in (record := json.loads(line))
    ]
    assert {"terms/l1_reward_mask", "terms/l1_kl_mask"} <= set(records[-1])
    assert 0.0 <= result.eval["eval/rewards/accuracies"] <= 1.0
    config = json.loads((result.run_dir / "config.json").read_text())
    assert "reference_hidden_layers" in config["needs"]
    # re-evaluating the saved run rebuilds the masks from the checkpoint
    again = evaluate_run(result.run_dir)
    assert_close(again["eval/loss"], result.eval["eval/loss"], rtol=1e-5, atol=1e-6)


def test_sparse_common_resumes_with_its_mask_model(
    tiny_model: Path, tmp_path: Path
) -> None:
    overrides = _overrides(
        tiny_model,
        tmp_path,
        **{"objective.masks": "LearnedMasks()", "train.save_steps": 1},
    )
    first = train("recipes/sparsepo.py", overrides, progress=False, stop_after=1)
    saved = load_file(str(first.run_dir / "checkpoint-1" / MASK_MODEL_FILE))
    assert "reward.combine.weight" in saved and not any(
        name.startswith("kl.") for name in saved
    )
    resumed = train(resume=first.run_dir, progress=False)
    assert resumed.step == 2
    final = load_file(str(first.run_dir / "checkpoint-2" / MASK_MODEL_FILE))
    assert not torch.equal(
        final["reward.combine.weight"], saved["reward.combine.weight"]
    )


def test_mapo_runs_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    result = train(
        "recipes/sparsepo.py",
        _overrides(tiny_model, tmp_path, **{"objective.masks": "ActivationMasks()"}),
        progress=False,
    )
    assert result.step == 2
    # MaPO's masks have no parameters: nothing extra in the checkpoint
    assert not (result.run_dir / "checkpoint-2" / MASK_MODEL_FILE).exists()
    # the training records (the trainer also logs its evaluations there)
    records = [
        record
        for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        if "loss" in (record := json.loads(line))
    ]
    # at the reference every implicit reward is zero: the loss is log 2
    assert_close(records[0]["loss"], 0.6931471805599453, rtol=0, atol=1e-6)
