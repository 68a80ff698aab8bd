"""Model-side services: the table of needs, how an objective collects the
services its parts declare (and refuses conflicting ones when it is built), the
registry, and the moving reference of TR-DPO (its update rule against TRL's and
a run that syncs, checkpoints and resumes exactly)."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import build_tiny_model_dir, tiny_llama
from torch.testing import assert_close

from mipo import CompositionError, Need, Objective, Term, TrainConfig
from mipo.needs import NEEDS, Scope, Source
from mipo.primitives import (
    GradientAttributionWeights,
    LearnedMasks,
    LogRatioTriplet,
    MaskWeights,
    ProductPrior,
    ReferencePrior,
    SequentialKLPenalty,
)
from mipo.services import (
    AbstractServiceSpec,
    AnchorSampling,
    GradientAttribution,
    LearnedMasking,
    ReferenceSync,
)
from mipo.training.services import Service, service_class
from mipo.training.services.reference_sync import REFERENCE_FILE, sync_reference
from mipo.training.trainer import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_the_table_covers_every_need_and_classifies_as_before() -> None:
    """One row per need; the reference-reading and the cache-refused needs are
    the sets the trainer used to keep in three files."""
    assert set(NEEDS) == set(Need)
    reads = {n for n in Need if n.info.reads_reference}
    assert reads == {
        Need.REFERENCE_LOGPS,
        Need.KL_FORWARD,
        Need.KL_REVERSE,
        Need.REFERENCE_ACTIVATIONS,
        Need.REFERENCE_HIDDEN_LAYERS,
        Need.LEARNED_PRIOR,
    }
    refused_by_cache = {n for n in Need if not n.info.cacheable}
    assert refused_by_cache == reads - {Need.REFERENCE_LOGPS} | {Need.ANCHOR}
    assert {n for n in Need if n.batch_level} == {Need.ANCHOR}
    assert {n for n in Need if not n.in_batch} == {
        Need.REFERENCE_ACTIVATIONS,
        Need.REFERENCE_HIDDEN_LAYERS,
        Need.LEARNED_PRIOR,
    }
    assert Need.TOKEN_WEIGHTS.info.scope is Scope.PAIR
    assert Need.TOKEN_WEIGHTS.info.source is Source.DATA
    assert Need.ATTRIBUTION_SCORES.info.source is Source.SERVICE


def _ti_dpo(sampling: AnchorSampling, gamma: float = 0.1) -> Objective:
    return Objective(
        weighter=GradientAttributionWeights(),
        terms=(Term(name="t", term=LogRatioTriplet(sampling=sampling), weight=gamma),),
    )


def test_the_objective_collects_its_parts_services_once() -> None:
    sampling = AnchorSampling(max_new_tokens=8)
    assert _ti_dpo(sampling).services == (GradientAttribution(), sampling)
    # a zero-weight term is switched off, and so is the anchor it would sample
    assert _ti_dpo(sampling, gamma=0.0).services == (GradientAttribution(),)
    # the same spec declared twice is one service
    twice = Objective(
        terms=tuple(
            Term(name=name, term=LogRatioTriplet(sampling=sampling)) for name in "ab"
        )
    )
    assert twice.services == (sampling,)


def test_conflicting_services_are_refused_when_the_objective_is_built() -> None:
    with pytest.raises(CompositionError, match="anchor: two different services"):
        Objective(
            terms=(
                Term(name="a", term=LogRatioTriplet(sampling=AnchorSampling())),
                Term(
                    name="b",
                    term=LogRatioTriplet(sampling=AnchorSampling(max_new_tokens=3)),
                ),
            )
        )


def test_a_switched_off_part_declares_no_service() -> None:
    """A zero-strength KL factor reads nothing, so the mask network of its
    weights is not built."""
    masks = MaskWeights(source=LearnedMasks(), field="kl_weights")
    off = Objective(
        prior=ProductPrior(
            base=ReferencePrior(),
            factors=(SequentialKLPenalty(kappa=0.0, weights=masks),),
        )
    )
    assert off.services == ()
    on = Objective(
        prior=ProductPrior(
            base=ReferencePrior(),
            factors=(SequentialKLPenalty(kappa=1.0, weights=masks),),
        )
    )
    assert on.services == (LearnedMasking(),)


def test_every_spec_has_a_registered_service() -> None:
    for spec in (AnchorSampling(), GradientAttribution(), LearnedMasking()):
        service = service_class(spec)
        assert issubclass(service, Service) and service.spec_type is type(spec)

    class Unserved(AbstractServiceSpec):
        @property
        def provides(self) -> frozenset[Need]:
            return frozenset({Need.TOKEN_WEIGHTS})

    with pytest.raises(ValueError, match="no service is registered for Unserved"):
        service_class(Unserved())


def test_sync_reference_is_the_soft_update() -> None:
    r"""$\theta_{ref} \leftarrow \alpha\theta + (1-\alpha)\theta_{ref}$ on every
    parameter, tied ones once (oracle: the formula on copies of the tensors)."""
    policy, reference = tiny_llama(0), tiny_llama(1)
    before = {k: v.detach().clone() for k, v in reference.named_parameters()}
    target = {k: v.detach().clone() for k, v in policy.named_parameters()}
    sync_reference(policy, reference, alpha=0.25)
    for name, value in reference.named_parameters():
        assert_close(value, 0.25 * target[name] + 0.75 * before[name])
    # tied embeddings stay tied
    assert (
        reference.get_output_embeddings().weight
        is reference.get_input_embeddings().weight
    )
    sync_reference(policy, reference, alpha=1.0)
    for name, value in reference.named_parameters():
        assert torch.equal(value, target[name])


def test_sync_reference_matches_trl() -> None:
    from trl.trainer.callbacks import SyncRefModelCallback

    policy = tiny_llama(0)
    ours, theirs = tiny_llama(1), tiny_llama(1)
    sync_reference(policy, ours, alpha=0.6)
    SyncRefModelCallback._sync_target_model(policy, theirs, 0.6)
    for (name, a), (_, b) in zip(
        ours.named_parameters(), theirs.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name


def test_reference_sync_is_refused_without_a_copied_reference() -> None:
    config = TrainConfig(sync_ref_model=True, lora_rank=4, reference="adapter_off")
    with pytest.raises(ValueError, match="reference must be a full copy"):
        service_class(ReferenceSync()).check(ReferenceSync(), config)
    with pytest.raises(CompositionError, match="alpha: must be in"):
        ReferenceSync(alpha=1.5)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def _sync_overrides(model: Path, out: Path) -> dict[str, object]:
    return {
        "train.model": str(model),
        "train.output_dir": str(out),
        "train.max_steps": 4,
        "train.max_examples": 24,
        "train.batch_size": 2,
        "train.learning_rate": 1e-3,
        "train.warmup_ratio": 0.0,
        "train.eval_fraction": 0.0,
        "train.save_steps": 2,
        "train.sync_ref_model": True,
        "train.ref_model_mixup_alpha": 0.5,
        "train.ref_model_sync_steps": 2,
    }


@pytest.mark.slow
def test_a_moving_reference_is_synced_saved_and_resumed(
    tiny_model: Path, tmp_path: Path
) -> None:
    """DPO with the reference synced every 2 steps: the reference at step 2 is
    the mix of the initial weights and the step-2 policy, it is saved with the
    checkpoint, and a run stopped at step 2 and resumed matches the straight run."""
    from transformers import AutoModelForCausalLM

    straight = train("dpo", _sync_overrides(tiny_model, tmp_path / "a"), progress=False)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model)
    policy_2 = load_file(str(straight.run_dir / "checkpoint-2" / "model.safetensors"))
    reference_2 = load_file(str(straight.run_dir / "checkpoint-2" / REFERENCE_FILE))
    for name, value in initial.named_parameters():
        expected = 0.5 * policy_2[name] + 0.5 * value.detach()
        assert_close(reference_2[name], expected, rtol=1e-6, atol=1e-7)
    config = json.loads((straight.run_dir / "config.json").read_text())
    assert config["services"] == ["ReferenceSync(alpha=0.5, every=2)"]

    overrides = _sync_overrides(tiny_model, tmp_path / "b")
    first = train("dpo", overrides, stop_after=2, progress=False)
    resumed = train(resume=first.run_dir, progress=False)
    for file in ("model.safetensors", REFERENCE_FILE):
        want = load_file(str(straight.run_dir / "checkpoint-4" / file))
        got = load_file(str(resumed.run_dir / "checkpoint-4" / file))
        for key in want:
            assert torch.equal(got[key], want[key]), (file, key)
    # without the sync the step-3 loss differs: the moving reference matters
    plain = {
        **_sync_overrides(tiny_model, tmp_path / "c"),
        "train.sync_ref_model": False,
    }
    unsynced = train("dpo", plain, progress=False)
    lines = (unsynced.run_dir / "metrics.jsonl").read_text().splitlines()
    synced = (straight.run_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[2])["loss"] != json.loads(synced[2])["loss"]
    assert json.loads(lines[1])["loss"] == json.loads(synced[1])["loss"]
