"""TI-DPO end to end through ``mipo.train`` on a tiny random Llama (CPU).

Two optimiser steps of ``recipes/ti_dpo.py`` on built-in arithmetic pairs: the
trainer computes attribution scores, samples anchors, runs the anchor forwards
and the full-vocabulary KL, and logs the triplet term. Nothing is downloaded.
"""

import json
import math
import os
from pathlib import Path

import pytest
from tiny import build_tiny_model_dir

from mipo.training.trainer import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama-ti-dpo"))


@pytest.mark.parametrize(
    "span", ["response", pytest.param("sequence", marks=pytest.mark.slow)]
)
def test_ti_dpo_trains_two_steps_and_logs_the_triplet(
    tiny_model: Path, tmp_path: Path, span: str
) -> None:
    overrides = {
        "train.model": str(tiny_model),
        "train.output_dir": str(tmp_path),
        "train.max_steps": 2,
        "train.max_examples": 24,
        "train.batch_size": 2,
        "train.learning_rate": 1e-3,
        "train.warmup_steps": 0,
        "train.warmup_ratio": 0.0,
        "train.eval_max_examples": 2,
        "train.eval_max_new_tokens": 2,
        "objective.span": span,
        # a large margin keeps the hinge active, so the term is non-zero
        "objective.alpha_triplet": 5.0,
    }
    result = train("recipes/ti_dpo.py", overrides, progress=False)
    assert result.step == 2
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    # training records only (evaluation records carry no loss)
    records = [r for r in map(json.loads, lines) if "loss" in r]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert record["terms/triplet"] > 0.0
        assert all(math.isfinite(float(v)) for v in record.values()), record
    # one update with lr 1e-3 moves the policy off the reference
    assert records[1]["rewards/chosen"] != 0.0
