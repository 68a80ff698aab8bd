"""One precision per run (CPU bf16 autocast stands in for a GPU): the frozen
reference of a ``bf16`` run holds its decoder matrices in bfloat16 and computes
exactly what the autocast policy computes; the precomputed reference cache is
computed in the run's precision and keyed on it; step 1's rewards are 0 in bf16
as in fp32; evaluation, gold generation and the prior fit run under the run's
autocast; TF32 is enabled on CUDA only and never inside the OT solver."""

import contextlib
import copy
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import build_tiny_model_dir, tiny_llama
from torch import nn

from mipo.batch import PairBatch
from mipo.objective import Objective
from mipo.primitives.otpo import TransportTokenWeights
from mipo.sinkhorn import AbstractTransportSolver, full_precision
from mipo.training import evaluate as evaluate_module
from mipo.training.config import TrainConfig
from mipo.training.loaders import IndexedBatch, RunData
from mipo.training.logps import final_hidden_states
from mipo.training.models import frozen_reference
from mipo.training.precision import autocast, cast_reference_matrices, enable_tf32
from mipo.training.services import learned_prior
from mipo.training.services.reference_cache import (
    CachedLogps,
    cache_key,
    check_cache,
    compute_reference_logps,
    lookup_reference,
)
from mipo.training.trainer import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
BF16 = TrainConfig(precision="bf16")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def fresh_accelerator_state() -> Any:
    """accelerate refuses a second Accelerator with another mixed precision in
    one process; reset its state around each run."""
    from accelerate.state import AcceleratorState, GradientState

    def reset() -> None:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    reset()
    yield reset
    reset()


def _ids() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, 200, (3, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    return ids, mask


def test_bf16_reference_holds_its_decoder_matrices_in_bf16() -> None:
    reference = frozen_reference(tiny_llama(), BF16)
    model = reference.model
    linears = [m for m in model.model.modules() if isinstance(m, nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    others = [
        p
        for name, p in model.named_parameters()
        if not any(name.startswith(n) for n in _linear_names(model))
    ]
    # embeddings (= the tied head) and norms stay float32, as the policy's are
    assert others and all(p.dtype == torch.float32 for p in others)
    assert model.get_output_embeddings().weight.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())
    fp32 = frozen_reference(tiny_llama(), TrainConfig())
    assert all(p.dtype == torch.float32 for p in fp32.model.parameters())
    # TR-DPO's moving reference is trained state: it stays float32
    moving = frozen_reference(
        tiny_llama(), dataclasses.replace(BF16, sync_ref_model=True)
    )
    assert all(p.dtype == torch.float32 for p in moving.model.parameters())


def _linear_names(model: nn.Module) -> list[str]:
    return [
        name + "."
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and m is not model.get_output_embeddings()
    ]


def test_bf16_reference_equals_the_autocast_policy_exactly() -> None:
    """Autocast rounds float32 weights to bfloat16 as the cast does, so the
    bf16-held reference computes bit for bit what the float32 policy computes
    under autocast, and differs from the plain float32 forward."""
    policy = tiny_llama()
    reference = frozen_reference(copy.deepcopy(policy), BF16)
    ids, mask = _ids()
    with torch.no_grad(), autocast("bf16", torch.device("cpu")):
        want = final_hidden_states(policy, ids, mask)
    with torch.no_grad():
        plain = final_hidden_states(policy, ids, mask)
    got = reference.hidden_states(ids, mask)  # enters autocast itself
    assert got.dtype == want.dtype == torch.float32  # the residual stream
    assert torch.equal(got, want)
    assert not torch.equal(got, plain)


def test_cast_leaves_the_head_and_embedding_untied_from_nothing() -> None:
    model = cast_reference_matrices(tiny_llama(), torch.bfloat16)
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    assert head.weight is embedding.weight  # still tied
    assert head.weight.dtype == torch.float32


@pytest.mark.parametrize("reference", ["copy", "precomputed"])
def test_step_one_rewards_are_zero_in_bf16(
    reference: str, tiny_model: Path, tmp_path: Path, fresh_accelerator_state: Any
) -> None:
    """Before any update the policy is the reference: rewards and margins are 0
    in bf16 as in fp32 (before, a float32 cache under a bf16 policy left
    margins of 2e-5 on this model and 2e-3 on SmolLM2)."""
    records = {}
    for precision in ("fp32", "bf16"):
        fresh_accelerator_state()
        result = train(
            "dpo",
            {
                "train.model": str(tiny_model),
                "train.output_dir": str(tmp_path / precision),
                "train.max_steps": 1,
                "train.max_examples": 24,
                "train.batch_size": 4,
                "train.eval_fraction": 0.0,
                "train.report_to": "none",
                "train.precision": precision,
                "train.reference": reference,
            },
            progress=False,
        )
        records[precision] = result.metrics
    for record in records.values():
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
            assert abs(record[key]) <= 1e-7, (key, record[key])
    # bf16 really ran: its log-probs differ from fp32's
    assert records["bf16"]["logps/chosen"] != records["fp32"]["logps/chosen"]


def _run_data() -> RunData:
    from mipo.data.load import load_records
    from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
    from mipo.data.tokenize import encode_record

    tokenizer = tiny_chat_tokenizer()
    pairs = [
        encode_record(r, tokenizer, max_length=64, max_prompt_length=48)
        for r in load_records("builtin:arithmetic?n=6&seed=2")
    ]
    return RunData(train=pairs[:4], eval=pairs[4:], eval_records=[])


def test_cache_key_depends_on_precision_and_attention(tmp_path: Path) -> None:
    data = _run_data()
    fp32 = TrainConfig(output_dir=str(tmp_path))
    bf16 = dataclasses.replace(fp32, precision="bf16")
    keys = {
        cache_key(fp32, "m", data),
        cache_key(bf16, "m", data),
        cache_key(fp32, "m", data, "eager"),
    }
    assert len(keys) == 3
    assert cache_key(bf16, "m", data) == cache_key(bf16, "m", data)


def test_precomputed_cache_is_computed_in_the_run_precision() -> None:
    """The bf16 cache holds the autocast policy's log-probs, not float32 ones,
    and every batch reads its rows back in place."""
    from mipo.training.batching import BatchBuilder
    from mipo.training.loaders import make_loader
    from mipo.training.services import Models

    policy, data = tiny_llama(), _run_data()
    caches = {
        precision: compute_reference_logps(
            policy,
            data,
            batch_size=2,
            pad_token_id=2,
            device=torch.device("cpu"),
            chunk_size=8,
            precision=precision,
        )
        for precision in ("fp32", "bf16")
    }
    check_cache(caches["bf16"], data)
    assert not torch.equal(caches["bf16"][0][0], caches["fp32"][0][0])
    table = CachedLogps.from_cache(caches["bf16"])
    builder = BatchBuilder(needs=frozenset(), chunk_size=8)
    for batch in make_loader(data.train, batch_size=3, pad_token_id=2):
        with torch.no_grad(), autocast("bf16", torch.device("cpu")):
            fresh = builder(Models(policy=policy, pad_token_id=2), batch)
        chosen, rejected = lookup_reference(table, batch)
        for side, cached in ((fresh.chosen, chosen), (fresh.rejected, rejected)):
            width = side.response_mask.shape[1]
            cached = cached[:, :width]
            assert torch.equal(cached != 0, side.response_mask)
            torch.testing.assert_close(
                cached[side.response_mask],
                side.policy_logps[side.response_mask],
                rtol=0,
                atol=1e-5,  # the batch shapes differ: float32 accumulation order
            )


def test_a_cache_of_other_data_is_refused_when_loaded() -> None:
    data = _run_data()
    good = {
        i: (torch.zeros(len(p.chosen_ids)), torch.zeros(len(p.rejected_ids)))
        for i, p in enumerate([*data.train, *data.eval])
    }
    check_cache(good, data)
    bad = dict(good)
    bad[3] = (good[3][0][:-1], good[3][1])
    with pytest.raises(ValueError, match="pair 3; delete the reference cache"):
        check_cache(bad, data)
    with pytest.raises(ValueError, match="pair 5"):
        check_cache({k: v for k, v in good.items() if k != 5}, data)


def test_cached_rows_are_looked_up_by_global_index() -> None:
    from mipo.data.collate import collate

    data = _run_data()
    pairs = [data.train[2], data.eval[1]]
    cache = {
        index: (
            torch.arange(len(p.chosen_ids), dtype=torch.float32) + 100 * index,
            -torch.arange(len(p.rejected_ids), dtype=torch.float32) - 100 * index,
        )
        for index, p in zip((2, 5), pairs, strict=True)
    }
    batch = IndexedBatch(
        indices=torch.tensor([2, 5]), tensors=collate(pairs, pad_token_id=2)
    )
    chosen, rejected = lookup_reference(CachedLogps.from_cache(cache), batch)
    for row, index in enumerate((2, 5)):
        mask = batch.tensors.chosen.labels[row, 1:] != -100
        assert torch.equal(chosen[row][mask], cache[index][0])
        assert bool((chosen[row][~mask] == 0).all())
        mask = batch.tensors.rejected.labels[row, 1:] != -100
        assert torch.equal(rejected[row][mask], cache[index][1])


def test_tf32_is_enabled_on_cuda_only_and_never_in_the_ot_solver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The flags are process-wide and need no GPU to set: a CUDA run turns TF32
    on, a CPU run leaves it alone, and OTPO's OT step runs with it off and
    without autocast, restoring both after."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    cuda = torch.device("cuda")
    try:
        enable_tf32(torch.device("cpu"))
        assert matmul.fp32_precision == before
        enable_tf32(cuda)
        assert matmul.fp32_precision == "tf32"
        seen: list[tuple[str, bool]] = []

        class Recorder(AbstractTransportSolver):
            def __call__(self, cost: torch.Tensor, *_: Any, **__: Any) -> torch.Tensor:
                seen.append((matmul.fp32_precision, torch.is_autocast_enabled("cpu")))
                return torch.ones(cost.shape, dtype=cost.dtype)

        def on_cuda_too(device: torch.device) -> Any:
            # the hidden states live on the CPU here: add what CUDA would get
            stack = contextlib.ExitStack()
            stack.enter_context(full_precision(cuda))
            stack.enter_context(full_precision(device))
            return stack

        monkeypatch.setattr("mipo.primitives.otpo.full_precision", on_cuda_too)
        side = _otpo_side()
        with autocast("bf16", "cpu"):
            TransportTokenWeights(solver=Recorder()).plan(
                PairBatch(chosen=side, rejected=side)
            )
            assert torch.is_autocast_enabled("cpu")
        assert seen == [("ieee", False)]
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before


def _otpo_side() -> Any:
    from mipo.batch import Side

    mask = torch.tensor([[False, True, True, True]])
    return Side(
        policy_logps=torch.zeros(1, 4),
        response_mask=mask,
        hidden_states=torch.randn(1, 4, 8),
    )


def test_evaluation_gold_and_prior_fit_run_in_the_run_precision(
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_accelerator_state: Any,
) -> None:
    """A bf16 run of the learned-prior recipe on the arithmetic task: the batch
    builds of evaluation, the greedy gold answers and the prior fit all see
    bfloat16 autocast; its objective runs outside autocast, as in training."""
    seen: dict[str, list[Any]] = {"build": [], "gold": [], "fit": [], "objective": []}

    def state() -> Any:
        return torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu")

    def spy(name: str, function: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            seen[name].append(state())
            return function(*args, **kwargs)

        return wrapped

    from mipo.training import gold

    monkeypatch.setattr(gold, "gold_scores", spy("gold", gold.gold_scores))
    monkeypatch.setattr(
        learned_prior,
        "fit_prior_to_policy",
        spy("fit", learned_prior.fit_prior_to_policy),
    )
    original_pairs = evaluate_module.evaluate_pairs

    def evaluate_pairs(*args: Any, **kwargs: Any) -> Any:
        with monkeypatch.context() as patch:
            builder = evaluate_module.BatchBuilder
            patch.setattr(builder, "build", spy("build", builder.build))
            patch.setattr(Objective, "__call__", spy("objective", Objective.__call__))
            return original_pairs(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "evaluate_pairs", evaluate_pairs)
    fresh_accelerator_state()
    train(
        "mi_dpo_learned_prior",
        {
            "train.model": str(tiny_model),
            "train.output_dir": str(tmp_path),
            "train.max_steps": 1,
            "train.max_examples": 16,
            "train.batch_size": 2,
            "train.eval_max_examples": 2,
            "train.eval_max_new_tokens": 2,
            "train.report_to": "none",
            "train.precision": "bf16",
            "objective.sample_max_new_tokens": 2,
            "objective.fit_steps": 1,
        },
        progress=False,
    )
    assert seen["gold"] and seen["fit"] and seen["build"]
    for name in ("gold", "fit", "build"):
        assert set(seen[name]) == {torch.bfloat16}, (name, seen[name])
    assert set(seen["objective"]) == {False}


def test_ti_dpo_evaluation_keeps_no_graph(
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fresh_accelerator_state: Any,
) -> None:
    """Evaluation builds TI-DPO's batches under ``no_grad``: no policy graph is
    kept, while the attribution service still takes its own gradients."""
    seen: list[tuple[bool, bool]] = []
    original = Objective.__call__

    def objective(self: Objective, batch: PairBatch) -> Any:
        if not torch.is_grad_enabled():  # evaluation
            scores = batch.chosen.attribution_scores
            seen.append(
                (batch.chosen.policy_logps.requires_grad, bool((scores != 0).any()))
            )
        return original(self, batch)

    monkeypatch.setattr(Objective, "__call__", objective)
    fresh_accelerator_state()
    result = train(
        "ti_dpo",
        {
            "train.model": str(tiny_model),
            "train.output_dir": str(tmp_path),
            "train.max_steps": 1,
            "train.max_examples": 16,
            "train.batch_size": 2,
            "train.eval_fraction": 0.25,
            "train.eval_max_examples": 2,
            "train.report_to": "none",
            "objective.anchor_tokens": 2,
        },
        progress=False,
    )
    assert seen and all(graph is False and scores for graph, scores in seen)
    assert json.loads((result.run_dir / "eval.json").read_text())["eval/pairs"] == 2
