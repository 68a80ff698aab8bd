"""The detached statistics of the policy's next-token distribution (log
collision probability, mean logit, entropy, top-1 hit), the token metrics made
of them, and WPO training on the collision it reads.

The oracles here loop over positions in float64 from full logits, written from
the definitions (``log sum_v softmax(z)_v^2``, ``mean_v z_v``,
``-sum_v p_v log p_v``, the first argmax), independently of mipo's code.
"""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from test_logps import random_inputs
from tiny import build_tiny_model_dir, tiny_llama
from torch import Tensor, nn
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from mipo.data.builtin import arithmetic_records
from mipo.data.collate import collate
from mipo.data.tiny_tokenizer import TINY_VOCAB_SIZE, tiny_chat_tokenizer
from mipo.data.tokenize import encode_record
from mipo.needs import Need
from mipo.training.batching import BatchBuilder, count_tokens
from mipo.training.evaluate import evaluate_pairs
from mipo.training.logps import POLICY_STATS, token_stats
from mipo.training.models import FrozenCopyReference
from mipo.training.recipes import load_recipe
from mipo.training.services import Models
from mipo.training.token_metrics import NAMES, pooled_means
from mipo.training.trainer import train

F64 = {"rtol": 1e-9, "atol": 1e-10}
# a float32 model against a float64 recomputation of its own logits
F32 = {"rtol": 1e-5, "atol": 1e-5}
SIZES = {"batch": 3, "length": 9, "vocab": 13, "hidden": 5}


def stats_oracle(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """The four statistics on the shifted axis from full unshifted logits, one
    (row, position) at a time in float64; zero off the labels."""
    batch, length, _ = logits.shape
    out = {n: torch.zeros(batch, length - 1, dtype=torch.float64) for n in POLICY_STATS}
    for i in range(batch):
        for t in range(length - 1):
            label = int(labels[i, t + 1])
            if label == -100:
                continue
            z = logits[i, t].detach().double()
            p = torch.softmax(z, dim=-1)
            out["log_collision"][i, t] = math.log(float((p * p).sum()))
            out["logit_means"][i, t] = float(z.sum()) / z.shape[0]
            out["entropy"][i, t] = -float((p * p.log()).sum())
            first_max = int((z == z.max()).nonzero()[0])
            out["top1"][i, t] = float(first_max == label)
    return out


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 1000])
def test_policy_stats_equal_float64_oracle(chunk_size: int | None) -> None:
    hidden, _, head, _, _, labels = random_inputs(seed=0, **SIZES)
    with torch.no_grad():  # every other response label becomes the argmax
        greedy = head(hidden[:, :-1]).argmax(-1)
    swap = (labels[:, 1:] != -100) & (torch.arange(SIZES["length"] - 1) % 2 == 0)
    labels[:, 1:] = torch.where(swap, greedy, labels[:, 1:])
    stats = token_stats(hidden, head, labels, chunk_size=chunk_size, policy_stats=True)
    with torch.no_grad():
        expected = stats_oracle(head(hidden), labels)
    for name in POLICY_STATS:
        assert_close(getattr(stats, name), expected[name], **F64, msg=name)
    assert float(expected["entropy"].max()) > 0.5  # not a degenerate case
    assert float(expected["top1"].sum()) >= 1  # some labels are the argmax


@pytest.mark.parametrize("chunk_size", [None, 2])
def test_top1_is_the_first_maximum(chunk_size: int | None) -> None:
    """Two vocabulary rows of the head are equal, so their logits tie at the
    maximum: only the first of them counts as a top-1 hit (TRL's ``is_top1``)."""
    head = nn.Linear(2, 4, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [-1, 0]]))
    hidden = torch.tensor([[[1.0, 0.0]] * 3], dtype=torch.float64)
    for label, hit in ((1, 1.0), (2, 0.0), (3, 0.0)):
        labels = torch.tensor([[-100, label, label]])
        stats = token_stats(
            hidden, head, labels, chunk_size=chunk_size, policy_stats=True
        )
        assert stats.top1 is not None
        assert stats.top1.tolist() == [[hit, hit]], label


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_policy_stats_leave_values_and_gradients_unchanged(
    chunk_size: int | None,
) -> None:
    """With and without the statistics: bit-identical log-probs, KLs and
    gradients (w.r.t. the hidden states and the head); the statistics carry no
    gradient."""
    runs = []
    for wanted in (False, True):
        hidden, reference, head, _, reference_head, labels = random_inputs(
            seed=1, **SIZES
        )
        hidden.requires_grad_(True)
        stats = token_stats(
            hidden,
            head,
            labels,
            reference_hidden=reference,
            reference_head=reference_head,
            kl_forward=True,
            kl_reverse=True,
            chunk_size=chunk_size,
            policy_stats=wanted,
        )
        total = (
            stats.policy_logps.sum()
            + 0.3 * stats.kl_forward.sum()
            - 0.7 * stats.kl_reverse.sum()
        )
        grads = torch.autograd.grad(total, [hidden, head.weight, head.bias])
        values = [stats.policy_logps, stats.reference_logps, stats.kl_forward]
        runs.append(([v.detach() for v in (*values, stats.kl_reverse)], grads))
        if wanted:
            for name in POLICY_STATS:
                assert not getattr(stats, name).requires_grad, name
        else:
            assert all(getattr(stats, name) is None for name in POLICY_STATS)
    with_stats, without = (values + list(grads) for values, grads in runs[::-1])
    for got, want in zip(with_stats, without, strict=True):
        assert torch.equal(got, want)


class _VocabTensors(TorchDispatchMode):
    """Records the row count of every op output whose last axis is the vocabulary."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.rows = vocab, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else [out]:
            if isinstance(tensor, Tensor) and tensor.dim() >= 2:
                if tensor.shape[-1] == self.vocab:
                    self.rows.append(tensor.numel() // self.vocab)
        return out


def test_chunked_stats_hold_no_vocab_tensor_beyond_a_chunk() -> None:
    """Forward and backward of the chunked head with the statistics create no
    ``[rows, vocab]`` tensor of more than one chunk's rows (the head weight,
    ``[vocab, hidden]``, is the input's)."""
    # hidden < chunk: the transposed head weight [hidden, vocab] stays below
    sizes = {"batch": 4, "length": 30, "vocab": 97, "hidden": 3}
    hidden, reference, head, _, reference_head, labels = random_inputs(seed=2, **sizes)
    hidden.requires_grad_(True)
    chunk = 4
    with _VocabTensors(sizes["vocab"]) as seen:
        stats = token_stats(
            hidden,
            head,
            labels,
            reference_hidden=reference,
            reference_head=reference_head,
            kl_reverse=True,
            chunk_size=chunk,
            policy_stats=True,
        )
        (stats.policy_logps.sum() + stats.kl_reverse.sum()).backward()
    responses = int((labels[:, 1:] != -100).sum())
    assert responses > 4 * chunk
    assert seen.rows and max(seen.rows) == chunk, sorted(set(seen.rows))


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_stats_under_autocast_are_those_of_the_bf16_logits(
    chunk_size: int | None,
) -> None:
    """Under bf16 autocast the statistics are those of the bf16-rounded logits
    (one precision per pass, as the log-probs), accumulated in float32."""
    hidden, _, head, _, _, labels = random_inputs(
        seed=3, batch=3, length=12, vocab=300, hidden=16
    )
    hidden, head = hidden.float(), head.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = token_stats(
            hidden, head, labels, chunk_size=chunk_size, policy_stats=True
        )
    logits = nn.functional.linear(
        hidden.bfloat16(), head.weight.bfloat16(), head.bias.bfloat16()
    )
    expected = stats_oracle(logits, labels)
    for name in POLICY_STATS:
        value = getattr(stats, name)
        assert value.dtype == torch.float32
        assert_close(value.double(), expected[name], **F32, msg=name)


# --- through the batch builder, on the tiny Llama ---------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple:
    tokenizer = tiny_chat_tokenizer()
    records = arithmetic_records(n=4, seed=2)
    pairs = [
        encode_record(r, tokenizer, max_length=96, max_prompt_length=64)
        for r in records
    ]
    tensors = collate(pairs, pad_token_id=tokenizer.pad_token_id)
    halves = [
        collate(part, pad_token_id=tokenizer.pad_token_id)
        for part in (pairs[:3], pairs[3:])
    ]
    policy = tiny_llama(0, max_position_embeddings=128)
    reference = tiny_llama(1, max_position_embeddings=128)
    models = Models(
        policy=policy,
        reference=FrozenCopyReference(reference),
        pad_token_id=tokenizer.pad_token_id,
    )
    return tensors, models, halves


def full_stats(model: nn.Module, side) -> dict[str, Tensor]:  # noqa: ANN001
    """The float64 oracle on the HF forward's own logits of one side."""
    with torch.no_grad():
        logits = model(
            input_ids=side.input_ids, attention_mask=side.attention_mask
        ).logits
    return stats_oracle(logits, side.labels)


def masked_mean(values: Tensor, mask: Tensor) -> float:
    return float(values[mask].sum() / mask.sum())


@pytest.mark.parametrize(
    ("chunk_size", "padding_free"), [(None, False), (4, False), (4, True)]
)
def test_builder_fills_log_collision(
    tiny: tuple, chunk_size: int | None, padding_free: bool
) -> None:
    tensors, models, _ = tiny
    builder = BatchBuilder(
        needs=frozenset({Need.LOG_COLLISION}),
        chunk_size=chunk_size,
        padding_free=padding_free,
    )
    batch = builder(models, tensors)
    for side, data in (
        (batch.chosen, tensors.chosen),
        (batch.rejected, tensors.rejected),
    ):
        expected = full_stats(models.policy, data)["log_collision"]
        assert side.log_collision is not None and not side.log_collision.requires_grad
        assert_close(side.log_collision.double(), expected, **F32)
    # the tiny random policy is near uniform: log sum p^2 near -log V, not 0
    assert float(batch.chosen.log_collision[batch.chosen.response_mask].max()) < -4


def test_builder_leaves_out_unneeded_collision_and_unwanted_metrics(
    tiny: tuple,
) -> None:
    tensors, models, _ = tiny
    batch, metrics = BatchBuilder(needs=frozenset(), metrics=False).build(
        models, tensors
    )
    assert batch.chosen.log_collision is None and metrics == {}
    batch, metrics = BatchBuilder(needs=frozenset()).build(models, tensors)
    assert batch.chosen.log_collision is None and set(metrics) == set(NAMES)


def metric_oracle(models: Models, tensors) -> dict[str, float]:  # noqa: ANN001
    """TRL's four metrics of one batch from the float64 oracle."""
    chosen = full_stats(models.policy, tensors.chosen)
    rejected = full_stats(models.policy, tensors.rejected)
    mask_c = tensors.chosen.labels[:, 1:] != -100
    mask_r = tensors.rejected.labels[:, 1:] != -100
    entropy = torch.cat([chosen["entropy"][mask_c], rejected["entropy"][mask_r]])
    return {
        "logits/chosen": masked_mean(chosen["logit_means"], mask_c),
        "logits/rejected": masked_mean(rejected["logit_means"], mask_r),
        "entropy": float(entropy.mean()),
        "mean_token_accuracy": masked_mean(chosen["top1"], mask_c),
    }


@pytest.mark.parametrize(
    ("chunk_size", "padding_free"), [(None, False), (4, False), (4, True)]
)
def test_token_metrics_equal_float64_oracle(
    tiny: tuple, chunk_size: int | None, padding_free: bool
) -> None:
    tensors, models, _ = tiny
    builder = BatchBuilder(
        needs=frozenset({Need.REFERENCE_LOGPS}),
        chunk_size=chunk_size,
        padding_free=padding_free,
    )
    _, totals = builder.build(models, tensors)
    metrics = pooled_means(totals)
    expected = metric_oracle(models, tensors)
    assert set(metrics) == set(expected)
    for name, value in expected.items():
        assert not metrics[name].requires_grad
        assert_close(float(metrics[name]), value, **F32, msg=name)
    assert abs(expected["logits/chosen"] - expected["logits/rejected"]) > 1e-4


def test_evaluation_averages_the_batch_metrics(tiny: tuple) -> None:
    """``eval/<metric>`` is the mean over evaluation batches of each batch's
    value, as TRL averages its evaluation metrics."""
    _, models, halves = tiny
    objective = load_recipe("wpo").objective
    result = evaluate_pairs(
        objective, models, halves, device=torch.device("cpu"), chunk_size=4
    )
    per_batch = [metric_oracle(models, half) for half in halves]
    for name in NAMES:
        expected = sum(b[name] for b in per_batch) / len(per_batch)
        assert_close(result[f"eval/{name}"], expected, **F32, msg=name)


def test_evaluation_split_over_two_processes_equals_one_process(
    tiny: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three evaluation batches over two processes: process 0 scores batches 0
    and 1, process 1 batch 2 and a padding copy of it (so both run two forwards,
    as a sharded model needs), and the gathered result equals one process's
    exactly, flags included."""
    from types import SimpleNamespace

    import mipo.training.distributed as distributed

    tensors, models, halves = tiny
    batches = [*halves, tensors]
    objective = load_recipe("dpo").objective
    cpu = torch.device("cpu")
    flags_one: list[float] = []
    one = evaluate_pairs(
        objective, models, batches, device=cpu, chunk_size=4, correct=flags_one
    )
    blocks: dict[int, list] = {}

    def gather(accelerator: SimpleNamespace, values: list) -> list:
        blocks[accelerator.process_index] = values
        return [value for rank in sorted(blocks) for value in blocks[rank]]

    builds: list[int] = []
    build = BatchBuilder.build

    def counted(self: BatchBuilder, *args: object, **kwargs: object) -> tuple:
        builds.append(1)
        return build(self, *args, **kwargs)

    monkeypatch.setattr(distributed, "gather_lists", gather)
    monkeypatch.setattr(BatchBuilder, "build", counted)
    results, forwards = {}, {}
    for rank in (1, 0):  # process 0 gathers last, when both blocks are in
        builds.clear()
        flags: list[float] = []
        accelerator = SimpleNamespace(num_processes=2, process_index=rank)
        results[rank] = evaluate_pairs(
            objective,
            models,
            batches,
            device=cpu,
            chunk_size=4,
            correct=flags,
            accelerator=accelerator,
        )
        forwards[rank] = len(builds)
    assert forwards == {0: 2, 1: 2}
    assert len(blocks[0]) == 2 and len(blocks[1]) == 1  # the padding is dropped
    assert results[0] == one
    assert (
        flags == flags_one
        and one["eval/pairs"] == 2 * tensors.chosen.input_ids.shape[0]
    )


# --- training ---------------------------------------------------------------------


def _data(path: Path, count: int = 8) -> Path:
    rows = [
        {"prompt": f"{i} + 1 =", "chosen": f" {i + 1}", "rejected": f" {2 * i + 3}0"}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("logps-stats")
    return build_tiny_model_dir(root / "model"), _data(root / "pairs.jsonl")


def _overrides(model: Path, data: Path, out: Path, **extra: object) -> dict:
    return {
        "train.model": str(model),
        "train.dataset": str(data),
        "train.output_dir": str(out),
        "train.max_examples": 0,
        "train.batch_size": 2,
        "train.learning_rate": 1e-3,
        "train.warmup_steps": 0,
        "train.warmup_ratio": 0.0,
        "train.max_length": 48,
        "train.max_prompt_length": 24,
        "train.seed": 0,
        **{f"train.{k}": v for k, v in extra.items()},
    }


def _records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(autouse=True)
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mipo.training.trainer.write_plots", lambda _run_dir: None)


def test_wpo_trains_and_logs_trls_metrics(
    run_inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """WPO (aligned weights, capped at 1) trains 3 steps: finite losses that
    move, the weights below 1 on some pair, and TRL's metrics in the training
    and evaluation records."""
    model, data = run_inputs
    overrides = _overrides(model, data, tmp_path, max_steps=3, eval_fraction=0.25)
    result = train("wpo", overrides, progress=False)
    records = _records(result.run_dir)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3]
    losses = [r["loss"] for r in steps]
    assert all(math.isfinite(v) for v in losses) and len(set(losses)) == 3
    for record in steps:
        assert set(NAMES) <= set(record), record
        assert 0.0 < record["entropy"] <= math.log(TINY_VOCAB_SIZE)
    evaluation = [r for r in records if "eval/loss" in r][-1]
    assert {f"eval/{name}" for name in NAMES} <= set(evaluation)


def test_wpo_weights_read_the_trainer_computed_collision(tiny: tuple) -> None:
    """On the builder's batch, WPO's weights equal exp(mean(log pi - log sum
    p^2)) over each side, from the float64 oracle."""
    tensors, models, _ = tiny
    objective = load_recipe("wpo").make_objective(max_weight=None)
    batch = BatchBuilder(needs=objective.needs, chunk_size=4)(models, tensors)
    link = objective.link
    expected = torch.zeros(batch.size, dtype=torch.float64)
    for data, side in (
        (tensors.chosen, batch.chosen),
        (tensors.rejected, batch.rejected),
    ):
        collision = full_stats(models.policy, data)["log_collision"]
        logps = side.policy_logps.detach().double()
        aligned = torch.where(side.response_mask, logps - collision, 0.0).sum(-1)
        expected += aligned / side.lengths.double()
    assert_close(link.weights(batch).double(), expected.exp(), **F32)
    assert float(expected.exp().min()) < 0.99 or float(expected.exp().max()) > 1.01


def test_num_tokens_is_a_running_count_kept_across_resume(
    run_inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """``num_tokens`` is TRL's running count of the training micro-batches'
    non-padding tokens: after one epoch it is every training pair's prompt +
    chosen + prompt + rejected tokens; a run resumed from a checkpoint taken
    between two logging steps (the tokens of steps 1-2 not yet logged) logs the
    same counts as one trained straight through."""
    model, data = run_inputs
    settings = {"max_steps": 4, "eval_fraction": 0.0, "logging_steps": 3}
    straight = train(
        "dpo", _overrides(model, data, tmp_path / "a", **settings), progress=False
    )
    resumable = _overrides(model, data, tmp_path / "b", save_steps=2, **settings)
    first = train("dpo", resumable, stop_after=3, progress=False)
    # stopped after step 3 was logged but before its checkpoint was written
    shutil.rmtree(first.run_dir / "checkpoint-3")
    resumed = train(resume=first.run_dir, progress=False)
    counts = [r["num_tokens"] for r in _records(straight.run_dir) if "loss" in r]
    again = [r["num_tokens"] for r in _records(resumed.run_dir) if "loss" in r]
    assert counts == again and len(counts) == 2
    assert 0 < counts[0] < counts[1]
    tokenizer = tiny_chat_tokenizer()
    from mipo.data.load import load_records

    pairs = [
        encode_record(r, tokenizer, max_length=48, max_prompt_length=24)
        for r in load_records(str(data))
    ]
    total = int(count_tokens(collate(pairs, pad_token_id=tokenizer.pad_token_id)))
    assert counts[-1] == total  # 4 steps of 2 pairs: the 8 pairs once
