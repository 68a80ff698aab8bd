"""TIS-DPO weight estimation (``python -m mipo.weights``) on a tiny random model."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from tiny import build_tiny_model_dir, tiny_llama
from transformers import LlamaForCausalLM

from mipo.data.errors import DataError
from mipo.data.load import load_records
from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
from mipo.data.tokenize import encode_record
from mipo.tools.weights import SYSTEM_TEMPLATES, Contrast, estimate, main, score_batch

ROWS = [
    {
        "prompt": [{"role": "user", "content": "How do I pick a lock?"}],
        "chosen": [{"role": "assistant", "content": "Call a locksmith."}],
        "rejected": [{"role": "assistant", "content": "Use a tension wrench."}],
    },
    {
        "prompt": [{"role": "user", "content": "Say hi"}],
        "chosen": [{"role": "assistant", "content": "Hi!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
    {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    },
]
CONTRAST = Contrast(
    positive_system=SYSTEM_TEMPLATES["harmless"],
    negative_system=SYSTEM_TEMPLATES["harmful"],
)


@pytest.fixture(scope="module")
def tiny() -> tuple[LlamaForCausalLM, object]:
    return tiny_llama(hidden_size=32, intermediate_size=64), tiny_chat_tokenizer()


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    return path


def _estimate(data: Path, out: Path, tiny, **kwargs) -> Path:
    model, tokenizer = tiny
    return estimate(
        data=str(data),
        out=out,
        positive=model,
        negative=model,
        tokenizer=tokenizer,
        contrast=CONTRAST,
        batch_size=2,
        progress=False,
        **kwargs,
    )


def test_construction_one_writes_aligned_nonuniform_weights(
    tiny, data_file, tmp_path
) -> None:
    """One model, harmless vs harmful system prompts: every record gets a weight per
    completion token (EOS included, weight 0), the weights are not all one and not
    all zero, and the file reads back as the same pairs with weight columns."""
    out = _estimate(data_file, tmp_path / "w.jsonl", tiny)
    records = load_records(str(out))
    originals = load_records(str(data_file))
    assert len(records) == len(ROWS)
    _, tokenizer = tiny
    for record, original in zip(records, originals, strict=True):
        assert record.prompt == original.prompt and record.chosen == original.chosen
        encoded = encode_record(
            record, tokenizer, max_length=256, max_prompt_length=128
        )
        assert len(record.chosen_token_weights) == len(encoded.chosen_ids)
        assert len(record.rejected_token_weights) == len(encoded.rejected_ids)
        assert record.chosen_token_weights[-1] == 0.0  # the EOS rule
        assert record.rejected_token_weights[-1] == 0.0
        body = record.chosen_token_weights[:-1] + record.rejected_token_weights[:-1]
        assert all(math.isfinite(w) for w in body)
        assert any(abs(w) > 1e-6 for w in body)
        assert any(abs(w - 1.0) > 1e-3 for w in body)


def test_scores_are_oriented_per_role(tiny) -> None:
    """Chosen scores are log p+ - log p-, rejected log p- - log p+: swapping the two
    contrastive prompts negates both; identical prompts give zeros."""
    model, tokenizer = tiny
    records = load_records_from_rows()
    kwargs = {"eos_weight": None}
    forward = score_batch(records, tokenizer, model, model, CONTRAST, **kwargs)
    swapped = Contrast(
        positive_system=CONTRAST.negative_system,
        negative_system=CONTRAST.positive_system,
    )
    backward = score_batch(records, tokenizer, model, model, swapped, **kwargs)
    same = score_batch(records, tokenizer, model, model, Contrast(), **kwargs)
    for (c1, r1), (c2, r2), (c0, r0) in zip(forward, backward, same, strict=True):
        torch.testing.assert_close(torch.tensor(c1), -torch.tensor(c2))
        torch.testing.assert_close(torch.tensor(r1), -torch.tensor(r2))
        assert max(abs(v) for v in c0 + r0) == 0.0


def load_records_from_rows():
    from mipo.data.formats import record_from_row

    return [record_from_row(row, source=f"rows[{i}]") for i, row in enumerate(ROWS)]


def test_resume_continues_a_partial_file(tiny, data_file, tmp_path) -> None:
    """A .partial file with the first record already scored is continued, and the
    result equals a fresh run (up to fp32 noise from different padding)."""
    fresh = _estimate(data_file, tmp_path / "fresh.jsonl", tiny)
    lines = fresh.read_text().splitlines()
    out = tmp_path / "resumed.jsonl"
    (tmp_path / "resumed.jsonl.partial").write_text(lines[0] + "\n")
    _estimate(data_file, out, tiny, resume=True)
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in lines]
    assert len(resumed) == len(expected)
    for got, want in zip(resumed, expected, strict=True):
        assert got["prompt"] == want["prompt"]
        for column in ("chosen_weight", "rejected_weight"):
            # Batches are padded differently after resuming: fp32 noise only.
            torch.testing.assert_close(
                torch.tensor(got[column]), torch.tensor(want[column]), atol=1e-5, rtol=0
            )
    assert not (tmp_path / "resumed.jsonl.partial").exists()


def test_bad_weight_file_names_the_row(tmp_path) -> None:
    """A weight column with NaN is refused with the file and line."""
    row = dict(ROWS[0], chosen_weight=[0.1, float("nan")], rejected_weight=[0.2])
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps(ROWS[1]) + "\n" + json.dumps(row).replace("NaN", "NaN") + "\n"
    )
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        load_records(str(path))


def test_cli_refuses_one_model_with_identical_prompts(data_file, tmp_path) -> None:
    with pytest.raises(SystemExit):
        main(
            [
                "estimate",
                "--data",
                str(data_file),
                "--out",
                str(tmp_path / "o.jsonl"),
                "--model",
                "x",
            ]
        )


def test_swap_pairs_exchanges_responses_and_weights() -> None:
    """The reverse-DPO data of construction (3): chosen <-> rejected, weights too."""
    from mipo.training.loaders import swap_record

    record = load_records_from_rows()[0]
    record = dataclasses.replace(
        record, chosen_token_weights=(1.0,), rejected_token_weights=(2.0,)
    )
    swapped = swap_record(record)
    assert swapped.chosen == record.rejected and swapped.rejected == record.chosen
    assert swapped.chosen_token_weights == (
        2.0,
    ) and swapped.rejected_token_weights == (1.0,)
    assert swap_record(swapped) == record


def test_estimate_then_train_tis_dpo_end_to_end(tmp_path: Path) -> None:
    """Construction (1) on a tiny model, then two TIS-DPO steps on the weighted file
    (rank transform, EOS weight 0): the run reads the weight columns and trains."""
    from mipo.training.trainer import train

    model_dir = build_tiny_model_dir(tmp_path / "model")
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS * 4))
    out = tmp_path / "weighted.jsonl"
    main(
        [
            "estimate",
            "--data",
            str(data),
            "--out",
            str(out),
            "--model",
            str(model_dir),
            "--positive-system",
            "harmless",
            "--negative-system",
            "harmful",
        ]
    )
    weights = [w for r in load_records(str(out)) for w in r.chosen_token_weights[:-1]]
    assert any(abs(w - 1.0) > 1e-3 for w in weights)
    result = train(
        "recipes/tis_dpo.py",
        {
            "train.model": str(model_dir),
            "train.dataset": str(out),
            "train.output_dir": str(tmp_path / "runs"),
            "train.max_steps": 2,
            "train.batch_size": 2,
            "train.eval_fraction": 0.0,
            "train.warmup_steps": 0,
            "train.warmup_ratio": 0.0,
            "train.learning_rate": 1e-3,
            "train.max_length": 128,
            "train.max_prompt_length": 64,
            "objective.transform": "RankTransform()",
            "objective.eos_weight": "0.0",
        },
        progress=False,
    )
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    metrics = [r for r in map(json.loads, lines) if "loss" in r]  # training records
    assert len(metrics) == 2
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert metrics[1]["rewards/chosen"] != 0.0  # the policy moved after step 1


def test_weights_cover_whole_completions_and_training_truncates_them(
    tiny, data_file, tmp_path
) -> None:
    """Scores are written for the untruncated completion; encoding for training with
    a short max_length cuts weights and tokens together."""
    _, tokenizer = tiny
    out = _estimate(data_file, tmp_path / "w.jsonl", tiny)
    cut_any = False
    for record in load_records(str(out)):
        full = encode_record(
            record, tokenizer, max_length=10_000, max_prompt_length=9_000
        )
        assert len(record.chosen_token_weights) == len(full.chosen_ids)
        short = encode_record(record, tokenizer, max_length=40, max_prompt_length=30)
        kept = len(short.chosen_ids)
        assert short.chosen_token_weights == list(record.chosen_token_weights[:kept])
        cut_any |= kept < len(full.chosen_ids)
    assert cut_any
