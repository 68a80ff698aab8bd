"""TI-DPO's faster batch build equals the slow one (tiny random Llama, CPU).

Two changes make a TI-DPO step cheaper, and each is checked against the path it
replaces:

* the attribution scores are read from the policy's own forward (its input
  embeddings recorded by a hook, the target differentiated through its graph)
  instead of an extra forward: the scores, the loss and every parameter gradient
  equal those of the extra forward, which still runs when dropout can fire, when
  the forward is packed and when autograd is off;
* the anchor runs in a forward of its own, so chosen and rejected keep their own
  length: its log-probs, reference log-probs, KLs and gradients equal those of
  the old single forward over chosen, rejected and anchor stacked together.
"""

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny import tiny_llama
from torch.testing import assert_close

import mipo.training.services.attribution as attribution
from mipo import TrainConfig
from mipo.data.builtin import arithmetic_records
from mipo.data.collate import collate
from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
from mipo.data.tokenize import encode_record
from mipo.needs import Need
from mipo.training.batching import BatchBuilder, stack_sequences
from mipo.training.logps import final_hidden_states, token_stats
from mipo.training.models import FrozenCopyReference
from mipo.training.recipes import load_recipe
from mipo.training.services import Models, ServiceSetup, build_services
from mipo.training.services.anchor import generate_anchor

SEED = 11
ANCHOR_TOKENS = 12


def ti_dpo(**kwargs: object):
    """The TI-DPO recipe's objective, with a hinge margin large enough to keep
    the triplet active (so the anchor carries gradient)."""
    return load_recipe("ti_dpo").make_objective(
        anchor_tokens=ANCHOR_TOKENS, alpha_triplet=5.0, **kwargs
    )


def inputs(**llama: object) -> tuple[Models, object]:
    tokenizer = tiny_chat_tokenizer()
    pairs = [
        encode_record(r, tokenizer, max_length=128, max_prompt_length=96)
        for r in arithmetic_records(n=3, seed=2)
    ]
    tensors = collate(pairs, pad_token_id=tokenizer.pad_token_id)
    policy = tiny_llama(3, max_position_embeddings=256, pad_token_id=None, **llama)
    reference = FrozenCopyReference(copy.deepcopy(policy).requires_grad_(False))
    policy.train()
    models = Models(
        policy=policy,
        reference=reference,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return models, tensors


def builder_for(objective, models: Models, **kwargs: object) -> BatchBuilder:
    setup = ServiceSetup(
        config=TrainConfig(), models=models, device=torch.device("cpu")
    )
    return BatchBuilder(
        needs=objective.needs,
        services=build_services(objective.services, setup),
        chunk_size=kwargs.pop("chunk_size", 64),
        **kwargs,
    )


def step(objective, models: Models, tensors, **kwargs: object) -> dict:
    """One micro-step: the batch, the loss and every parameter gradient."""
    builder = builder_for(objective, models, **kwargs)
    models.policy.zero_grad(set_to_none=True)
    torch.manual_seed(SEED)
    batch = builder(models, tensors)
    untouched = all(p.grad is None for p in models.policy.parameters())
    loss = objective(batch).loss
    loss.backward()
    grads = {
        name: p.grad.clone()
        for name, p in models.policy.named_parameters()
        if p.grad is not None
    }
    return {
        "batch": batch,
        "loss": loss.detach(),
        "grads": grads,
        "untouched": untouched,
    }


def slow(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the extra attribution forward (what ran before the change)."""
    monkeypatch.setattr(attribution, "is_stochastic", lambda _model: True)


def count_fast_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of the read-from-the-forward path."""
    calls: list[int] = []
    real = attribution.attribution_from_forward

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attribution, "attribution_from_forward", counted)
    return calls


def assert_same_step(fast: dict, reference: dict) -> None:
    for name in ("chosen", "rejected"):
        want = getattr(reference["batch"], name)
        got = getattr(fast["batch"], name)
        assert_close(got.attribution_scores, want.attribution_scores)
        assert float(got.attribution_scores.abs().sum()) > 0
    assert_close(fast["loss"], reference["loss"])
    assert fast["grads"].keys() == reference["grads"].keys()
    assert len(fast["grads"]) > 0
    for name, grad in reference["grads"].items():
        assert_close(fast["grads"][name], grad, msg=name)


@pytest.mark.parametrize("span", ["response", "sequence"])
def test_scores_from_the_policy_forward_equal_the_extra_forward(
    monkeypatch: pytest.MonkeyPatch, span: str
) -> None:
    models, tensors = inputs()
    objective = ti_dpo(span=span)
    calls = count_fast_calls(monkeypatch)
    fast = step(objective, models, tensors)
    assert len(calls) == 1
    with monkeypatch.context() as patch:
        slow(patch)
        reference = step(objective, models, tensors)
    assert len(calls) == 1
    assert_same_step(fast, reference)
    # the scores' own backward never writes a parameter gradient
    assert fast["untouched"]
    if span == "sequence":
        assert_close(
            fast["batch"].chosen.first_token_attribution,
            reference["batch"].chosen.first_token_attribution,
        )


def test_scores_match_attribution_scores_of_the_pair_rows() -> None:
    models, tensors = inputs()
    objective = ti_dpo()
    batch = step(objective, models, tensors)["batch"]
    ids, mask, _, _ = stack_sequences(
        [tensors.chosen, tensors.rejected], pad_token_id=models.pad_token_id
    )
    scores = attribution.attribution_scores(models.policy, ids, mask)[:, 1:]
    rows = tensors.chosen.input_ids.shape[0]
    assert_close(batch.chosen.attribution_scores, scores[:rows])
    assert_close(batch.rejected.attribution_scores, scores[rows:])


@pytest.mark.parametrize(
    "variant",
    ["frozen_embeddings", "gradient_checkpointing", "padding_free", "no_chunking"],
)
def test_fast_and_slow_agree_in_every_supported_setting(
    monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    models, tensors = inputs()
    kwargs: dict[str, object] = {}
    if variant == "frozen_embeddings":  # tied: the head is frozen too
        models.policy.get_input_embeddings().weight.requires_grad_(False)
    elif variant == "gradient_checkpointing":
        models.policy.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    elif variant == "padding_free":  # the packed forward falls back to the slow path
        kwargs["padding_free"] = True
    else:
        kwargs["chunk_size"] = None
    objective = ti_dpo()
    calls = count_fast_calls(monkeypatch)
    fast = step(objective, models, tensors, **kwargs)
    assert len(calls) == (0 if variant == "padding_free" else 1)
    with monkeypatch.context() as patch:
        slow(patch)
        reference = step(objective, models, tensors, **kwargs)
    assert_same_step(fast, reference)
    if variant == "frozen_embeddings":
        assert models.policy.get_input_embeddings().weight.grad is None


def test_without_autograd_the_scores_come_from_the_extra_forward(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    models, tensors = inputs()
    objective = ti_dpo(gamma=0.0)  # no anchor: the weights alone
    builder = builder_for(objective, models)
    calls = count_fast_calls(monkeypatch)
    with torch.no_grad():
        batch = builder(models, tensors)
    assert not calls
    with torch.enable_grad():
        want = builder(models, tensors)
    assert len(calls) == 1
    assert_close(batch.chosen.attribution_scores, want.chosen.attribution_scores)
    assert float(batch.chosen.attribution_scores.sum()) > 0


def test_with_live_dropout_the_scores_are_the_eval_mode_scores() -> None:
    """A training forward with dropout is not the eval-mode forward the scores
    are defined on: the extra forward runs, and the scores are deterministic."""
    models, tensors = inputs(attention_dropout=0.5)
    assert attribution.is_stochastic(models.policy)
    objective = ti_dpo(gamma=0.0)
    first = builder_for(objective, models)(models, tensors)
    second = builder_for(objective, models)(models, tensors)
    assert torch.equal(
        first.chosen.attribution_scores, second.chosen.attribution_scores
    )
    eval_policy = copy.deepcopy(models.policy).eval()
    eval_models = Models(
        policy=eval_policy,
        reference=models.reference,
        pad_token_id=models.pad_token_id,
        eos_token_id=models.eos_token_id,
    )
    want = builder_for(objective, eval_models)(eval_models, tensors)
    assert_close(first.chosen.attribution_scores, want.chosen.attribution_scores)


def test_is_stochastic_reads_modes_modules_and_config() -> None:
    from peft import LoraConfig, get_peft_model

    assert not attribution.is_stochastic(tiny_llama(0).train())
    assert not attribution.is_stochastic(tiny_llama(0, attention_dropout=0.1).eval())
    assert attribution.is_stochastic(tiny_llama(0, attention_dropout=0.1).train())
    for rate, expected in ((0.0, False), (0.1, True)):
        lora = LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=rate)
        wrapped = get_peft_model(tiny_llama(0), lora).train()
        assert attribution.is_stochastic(wrapped) is expected


# ------------------------------------------------------------ the anchor forward


def old_single_forward(models: Models, tensors, anchor) -> dict[str, torch.Tensor]:
    """The layout before the change: chosen, rejected and anchor right-padded to
    one length and run through one reference and one policy forward."""
    ids, mask, labels, rows = stack_sequences(
        [tensors.chosen, tensors.rejected, anchor], pad_token_id=models.pad_token_id
    )
    reference_hidden = models.reference.hidden_states(ids, mask)
    hidden = final_hidden_states(models.policy, ids, mask)
    stats = token_stats(
        hidden,
        models.policy.get_output_embeddings(),
        labels,
        reference_hidden=reference_hidden,
        reference_head=models.reference.head,
        kl_forward=True,
        chunk_size=64,
    )
    pairs = rows[0] + rows[1]
    return {
        "policy_logps": stats.policy_logps[pairs:],
        "reference_logps": stats.reference_logps[pairs:],
        "kl_forward": stats.kl_forward[pairs:],
        "response_mask": stats.response_mask[pairs:],
        "chosen_policy_logps": stats.policy_logps[: rows[0]],
    }


def test_the_anchor_forward_equals_the_old_stacked_forward() -> None:
    models, tensors = inputs()
    objective = ti_dpo()
    assert Need.KL_FORWARD in objective.needs
    sampling = objective.terms[0].term.sampling
    torch.manual_seed(SEED)
    anchor = generate_anchor(
        models.policy,
        tensors.prompt_input_ids,
        tensors.prompt_attention_mask,
        sampling=sampling,
        pad_token_id=models.pad_token_id,
        eos_token_id=models.eos_token_id,
    )
    width = anchor.input_ids.shape[1]
    chosen_width = tensors.chosen.input_ids.shape[1]
    assert width > chosen_width, "the anchor must be the longer side for this test"

    torch.manual_seed(SEED)  # the builder samples the same anchor first
    batch = builder_for(objective, models)(models, tensors)
    old = old_single_forward(models, tensors, anchor)
    # chosen and rejected keep their own length
    assert batch.chosen.policy_logps.shape[1] == chosen_width - 1
    assert batch.anchor.policy_logps.shape[1] == width - 1
    for name in ("policy_logps", "reference_logps", "kl_forward", "response_mask"):
        assert_close(getattr(batch.anchor, name), old[name], msg=name)
    assert_close(
        batch.chosen.policy_logps, old["chosen_policy_logps"][:, : chosen_width - 1]
    )
    assert int(batch.anchor.response_mask.sum()) == int((anchor.labels != -100).sum())

    def gradient(logps: torch.Tensor) -> dict[str, torch.Tensor]:
        models.policy.zero_grad(set_to_none=True)
        logps.sum().backward()
        return {n: p.grad.clone() for n, p in models.policy.named_parameters()}

    want = gradient(old["policy_logps"])
    got = gradient(batch.anchor.policy_logps)
    for name, grad in want.items():
        assert_close(got[name], grad, msg=name)


def test_the_anchor_is_the_same_sample_with_and_without_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The attribution draws no random numbers: the anchor sampled for a seed is
    the same whichever attribution path runs, and so is its triplet input."""
    models, tensors = inputs()
    objective = ti_dpo()
    fast = step(objective, models, tensors)["batch"].anchor
    with monkeypatch.context() as patch:
        slow(patch)
        reference = step(objective, models, tensors)["batch"].anchor
    assert torch.equal(fast.response_mask, reference.response_mask)
    assert_close(fast.policy_logps, reference.policy_logps)


def test_policy_hooks_are_off_on_the_reference_forward_of_a_shared_model() -> None:
    """An adapter-off reference runs the policy's own modules: the embedding hook
    must record the policy forward, not the reference one."""
    from peft import LoraConfig, get_peft_model

    from mipo.training.models import AdapterOffReference

    base, tensors = inputs()
    wrapped = get_peft_model(
        base.policy, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    for name, parameter in wrapped.named_parameters():  # move off the base model
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    models = Models(
        policy=wrapped,
        reference=AdapterOffReference(wrapped),
        pad_token_id=base.pad_token_id,
        eos_token_id=base.eos_token_id,
    )
    objective = ti_dpo(gamma=0.0)
    batch = builder_for(objective, models)(models, tensors)
    ids, mask, _, _ = stack_sequences(
        [tensors.chosen, tensors.rejected], pad_token_id=models.pad_token_id
    )
    want = attribution.attribution_scores(wrapped, ids, mask)[:, 1:]
    rows = tensors.chosen.input_ids.shape[0]
    assert_close(batch.chosen.attribution_scores, want[:rows])
    with wrapped.disable_adapter():
        base_scores = attribution.attribution_scores(wrapped, ids, mask)[:, 1:]
    # the adapters change the scores, so the recorded forward was the policy's
    assert float((base_scores[:rows] - want[:rows]).abs().max()) > 1e-3


def test_capturing_embeddings_records_only_forwards_with_autograd() -> None:
    model = tiny_llama(0)
    ids = torch.tensor([[5, 6, 7]])
    with attribution.capturing_embeddings(model) as captured:
        with torch.no_grad():
            model(input_ids=ids)
        assert "embeddings" not in captured
        model(input_ids=ids)
    assert captured["embeddings"].shape == (1, 3, model.config.hidden_size)
    assert captured["embeddings"].requires_grad
    # the hook is gone after the context
    model(input_ids=torch.tensor([[8, 9]]))
    assert captured["embeddings"].shape[1] == 3


# --- the anchor's repacking: gathers against the per-row loop -------------------


def _repack_by_rows(prompt_ids, prompt_mask, sampled, pad, eos):  # noqa: ANN001, ANN202
    """The slow path: one row at a time, boolean selection of the prompt."""
    rows = []
    for row in range(sampled.shape[0]):
        prompt = prompt_ids[row][prompt_mask[row].bool()]
        stops = (sampled[row] == eos).nonzero().flatten()
        end = int(stops[0]) + 1 if stops.numel() else sampled.shape[1]
        rows.append((prompt, sampled[row, :end]))
    length = max(p.shape[0] + r.shape[0] for p, r in rows)
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    for row, (prompt, response) in enumerate(rows):
        start, end = prompt.shape[0], prompt.shape[0] + response.shape[0]
        ids[row, :start], ids[row, start:end] = prompt, response
        mask[row, :end] = 1
        labels[row, start:end] = response
    return ids, mask, labels


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_anchor_repacking_equals_the_per_row_loop(data: st.DataObject) -> None:
    """Left-padded or holed prompt masks, responses with EOS anywhere, twice or
    not at all: the gathered repacking equals the per-row loop exactly."""
    from mipo.training.services.anchor import _repack

    batch = data.draw(st.integers(1, 4))
    width = data.draw(st.integers(1, 6))
    new = data.draw(st.integers(1, 6))
    masks = []
    for _ in range(batch):
        if data.draw(st.booleans()):  # left-padded, as generate gets it
            real = data.draw(st.integers(1, width))
            masks.append([0] * (width - real) + [1] * real)
        else:  # any mask with a token
            bits = data.draw(
                st.lists(st.integers(0, 1), min_size=width, max_size=width)
            )
            masks.append(bits if any(bits) else [1] + bits[1:])
    token = st.integers(0, 5)
    ids = data.draw(
        st.lists(
            st.lists(token, min_size=width, max_size=width),
            min_size=batch,
            max_size=batch,
        )
    )
    sampled = data.draw(
        st.lists(
            st.lists(token, min_size=new, max_size=new), min_size=batch, max_size=batch
        )
    )
    prompt_ids, prompt_mask = torch.tensor(ids), torch.tensor(masks)
    sampled_t = torch.tensor(sampled)
    fast = _repack(prompt_ids, prompt_mask, sampled_t, pad_token_id=9, eos_token_id=3)
    slow = _repack_by_rows(prompt_ids, prompt_mask, sampled_t, 9, 3)
    for got, expected in zip(
        (fast.input_ids, fast.attention_mask, fast.labels), slow, strict=True
    ):
        assert got.dtype == torch.long
        assert torch.equal(got, expected)
