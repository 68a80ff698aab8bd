"""Host syncs per training step, counted on the CPU (:mod:`sync_counter`).

The bound, per micro-batch, per optimiser step and per logging step, with where
each sync is:

================================  =====  =====================================
where                             count  what
================================  =====  =====================================
``training/batching.py``          1 / mb the values of every side at once
                                         (non-empty responses, example weights)
``training/packing.py``           1 / mb the sequence lengths (padding-free only)
``training/logps.py``             <= 2   the chunked head gathers the response
                                  / mb   rows (their count sizes the output)
``training/step.py``              1 / st gradient norm and every micro-batch's
                                         loss finiteness together
``training/metrics.py``           1 / lg every logged metric at once
TI-DPO's services                 4 / mb the anchor's prompt check and length,
                                         its value check, the attribution's row
                                         check (``TI_DPO_BOUND``)
transformers                      <= 2   the causal mask per forward (padded:
                                  / fw   "is there padding?"; packed: "are there
                                         several sequences?")
================================  =====  =====================================

(mb: micro-batch, st: optimiser step, lg: logging step, fw: model forward.)
Nothing else in the step path reads a device value: metrics accumulate on the
device, a micro-batch's loss is checked at the optimiser step, and the cached
reference log-probs are read by index without a loop over rows.
"""

import collections
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from sync_counter import SyncCounter
from tiny import build_tiny_model_dir

from mipo.objective import LossOutput, Objective
from mipo.training import loop
from mipo.training.trainer import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MIPO_BOUND = {
    "micro": {"mipo/training/batching.py": 1, "mipo/training/logps.py": 2},
    "step": {"mipo/training/step.py": 1},
    "logging": {"mipo/training/metrics.py": 1},
}
LIBRARY_PER_FORWARD = 2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def _counted_run(
    monkeypatch: pytest.MonkeyPatch,
    model: Path,
    out: Path,
    recipe: str = "dpo",
    **overrides: Any,
) -> tuple[dict[str, collections.Counter[str]], dict[str, int]]:
    """Train ``recipe`` for 3 steps of 2 micro-batches, counting the syncs of
    each micro-step, optimiser step and logging step."""
    counts: dict[str, collections.Counter[str]] = {
        phase: collections.Counter() for phase in MIPO_BOUND
    }
    calls = collections.Counter()

    def counted(phase: str, function: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls[phase] += 1
            with SyncCounter() as counter:
                result = function(*args, **kwargs)
            counts[phase].update(counter.by_file)
            return result

        return wrapped

    monkeypatch.setattr(loop, "micro_step", counted("micro", loop.micro_step))
    monkeypatch.setattr(loop, "optimizer_step", counted("step", loop.optimizer_step))
    monkeypatch.setattr(loop, "after_step", counted("logging", loop.after_step))
    torch.manual_seed(0)
    train(
        recipe,
        {
            "train.model": str(model),
            "train.output_dir": str(out),
            "train.max_steps": 3,
            "train.max_examples": 40,
            "train.batch_size": 2,
            "train.gradient_accumulation_steps": 2,
            "train.eval_fraction": 0.0,
            "train.report_to": "none",
            **overrides,
        },
        progress=False,
    )
    return counts, dict(calls)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"train.padding_free": True}, {"train.reference": "precomputed"}],
    ids=["padded", "padding-free", "precomputed"],
)
def test_syncs_per_step_stay_within_the_documented_bound(
    overrides: dict[str, Any],
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts, calls = _counted_run(monkeypatch, tiny_model, tmp_path, **overrides)
    assert calls == {"micro": 6, "step": 3, "logging": 3}
    bound = {phase: dict(files) for phase, files in MIPO_BOUND.items()}
    if overrides.get("train.padding_free"):
        bound["micro"]["mipo/training/packing.py"] = 1
    for phase, counter in counts.items():
        mipo = {f: n for f, n in counter.items() if f.startswith("mipo/")}
        for name, count in mipo.items():
            allowed = bound[phase].get(name, 0) * calls[phase]
            assert count <= allowed, (phase, name, count, dict(counter))
    # the ones the design needs are really there (the counter sees them)
    assert counts["micro"]["mipo/training/batching.py"] == calls["micro"]
    assert counts["step"]["mipo/training/step.py"] == calls["step"]
    assert counts["logging"]["mipo/training/metrics.py"] == calls["logging"]
    forwards = 1 if overrides.get("train.reference") == "precomputed" else 2
    library = sum(n for f, n in counts["micro"].items() if not f.startswith("mipo/"))
    assert library <= LIBRARY_PER_FORWARD * forwards * calls["micro"], counts["micro"]


def test_a_non_finite_loss_is_found_at_the_optimiser_step(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second micro-batch of step 1 gives a NaN link loss: it is
    back-propagated (no sync in the micro-step), and the optimiser step skips
    the update, naming the micro-batch, its pairs and the part."""
    original = Objective.__call__
    count = {"n": 0}

    def objective(self: Objective, batch: Any) -> LossOutput:
        out = original(self, batch)
        count["n"] += 1
        if count["n"] != 2:
            return out
        nan = torch.tensor(float("nan"))
        parts = dict(out.parts)
        parts["link"] = parts["link"].clone()
        parts["link"][1] = nan
        return LossOutput(
            loss=out.loss * nan,
            per_pair=out.per_pair,
            logits=out.logits,
            chosen_rewards=out.chosen_rewards,
            rejected_rewards=out.rejected_rewards,
            metrics=out.metrics,
            parts=parts,
        )

    monkeypatch.setattr(Objective, "__call__", objective)
    result = train(
        "dpo",
        {
            "train.model": str(tiny_model),
            "train.output_dir": str(tmp_path),
            "train.max_steps": 2,
            "train.max_examples": 40,
            "train.batch_size": 2,
            "train.gradient_accumulation_steps": 2,
            "train.eval_fraction": 0.0,
            "train.save_steps": 1,
            "train.report_to": "none",
        },
        progress=False,
    )
    lines = [
        json.loads(x)
        for x in (result.run_dir / "metrics.jsonl").read_text().split("\n")
        if x
    ]
    (skipped,) = [r for r in lines if "skipped" in r]
    assert skipped["step"] == 1 and skipped["micro_batch"] == 2
    assert len(skipped["pairs"]) == 2
    assert skipped["skipped"].startswith("non-finite loss from link (pairs [1])")
    initial = load_file(tiny_model / "model.safetensors")
    after = load_file(result.run_dir / "checkpoint-1" / "model.safetensors")
    for key, value in after.items():
        assert torch.equal(value, initial[key]), key
    assert [r["step"] for r in lines if "loss" in r] == [2]


TI_DPO_BOUND = {
    "mipo/training/batching.py": 1,
    "mipo/batch.py": 1,
    "mipo/training/logps.py": 4,
    "mipo/training/services/anchor.py": 2,
    "mipo/training/services/attribution.py": 1,
}
"""TI-DPO's per micro-batch: the anchor side's value check (``batch.py``), two
chunked policy forwards (pairs, anchor), the anchor's prompt check and its
length, the attribution's row check (sampling's own, one per decoded token in
``transformers``, are not counted here)."""


def test_ti_dpo_syncs_stay_within_their_bound(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts, calls = _counted_run(
        monkeypatch, tiny_model, tmp_path, "ti_dpo", **{"objective.anchor_tokens": 4}
    )
    assert calls == {"micro": 6, "step": 3, "logging": 3}
    mipo = {f: n for f, n in counts["micro"].items() if f.startswith("mipo/")}
    assert mipo == {f: n * calls["micro"] for f, n in TI_DPO_BOUND.items()}
    assert counts["step"]["mipo/training/step.py"] == calls["step"]
    assert counts["logging"]["mipo/training/metrics.py"] == calls["logging"]
