"""Padding-free packed pairs through the trainer's batch builder: equal to the
padded path (values and gradients), and end to end."""

import copy
import json
from pathlib import Path

import torch
from tiny import build_tiny_model_dir, tiny_llama
from torch.testing import assert_close

from mipo.data.collate import collate
from mipo.data.load import load_records
from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
from mipo.data.tokenize import encode_record
from mipo.needs import Need
from mipo.training.batching import BatchBuilder
from mipo.training.models import FrozenCopyReference
from mipo.training.recipes import load_recipe
from mipo.training.services import Models
from mipo.training.trainer import train

NEEDS = frozenset({Need.REFERENCE_LOGPS, Need.KL_FORWARD, Need.HIDDEN_STATES})


def _tensors():
    tokenizer = tiny_chat_tokenizer()
    records = load_records("builtin:arithmetic?n=6&seed=3")
    pairs = [
        encode_record(r, tokenizer, max_length=96, max_prompt_length=64)
        for r in records
    ]
    return collate(pairs, pad_token_id=tokenizer.pad_token_id)


def test_packed_batch_equals_padded_batch_and_gradients() -> None:
    """Every field of the PairBatch, and the gradient of TDPO2's loss w.r.t. the
    policy parameters, agree between the padded and the packed forward (fp32)."""
    policy = tiny_llama(seed=1)
    reference = FrozenCopyReference(copy.deepcopy(policy))
    tensors = _tensors()
    objective = load_recipe("tdpo").objective
    results = []
    for padding_free in (False, True):
        policy.zero_grad()
        builder = BatchBuilder(
            needs=NEEDS | objective.needs, chunk_size=16, padding_free=padding_free
        )
        models = Models(policy=policy, reference=reference, pad_token_id=2)
        batch = builder(models, tensors)
        objective(batch).loss.backward()
        grads = [p.grad.clone() for p in policy.parameters()]
        results.append((batch, grads))
    (padded, padded_grads), (packed, packed_grads) = results
    for role in ("chosen", "rejected"):
        a, b = getattr(padded, role), getattr(packed, role)
        assert torch.equal(a.response_mask, b.response_mask)
        for field in ("policy_logps", "reference_logps", "kl_forward"):
            assert_close(getattr(b, field), getattr(a, field), rtol=1e-4, atol=1e-5)
        mask = a.response_mask.unsqueeze(-1)
        assert_close(
            b.hidden_states * mask, a.hidden_states * mask, rtol=1e-4, atol=1e-5
        )
    for got, want in zip(packed_grads, padded_grads, strict=True):
        assert_close(got, want, rtol=1e-3, atol=1e-5)


def test_padding_free_training_matches_padded(tmp_path: Path) -> None:
    """Three DPO steps with and without packing log the same losses and rewards."""
    model = build_tiny_model_dir(tmp_path / "model")
    logs = []
    for padding_free in (False, True):
        result = train(
            "recipes/dpo.py",
            {
                "train.model": str(model),
                "train.output_dir": str(tmp_path / "runs"),
                "train.max_steps": 3,
                "train.max_examples": 24,
                "train.batch_size": 4,
                "train.eval_fraction": 0.0,
                "train.warmup_steps": 0,
                "train.warmup_ratio": 0.0,
                "train.learning_rate": 1e-3,
                "train.padding_free": padding_free,
            },
            progress=False,
        )
        lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        logs.append([r for r in records if "loss" in r])  # training records
    for padded, packed in zip(*logs, strict=True):
        for key in ("loss", "rewards/chosen", "rewards/rejected", "logps/chosen"):
            assert abs(padded[key] - packed[key]) <= 1e-4 * max(
                1.0, abs(padded[key])
            ), key
