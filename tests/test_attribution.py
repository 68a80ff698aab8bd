"""Gradient attribution scores and anchor generation on a tiny random Llama.

The attribution oracle runs each row alone, without padding, through the full
causal LM (``model(inputs_embeds=...).logits``) and differentiates the largest
logit at its last token with respect to that row's embeddings: an independent
per-row computation of the released code's importance scores
(``docs/recipe_notes/ti_dpo.md``).
"""

import numpy as np
import pytest
import torch
from tiny import tiny_llama
from torch import nn
from torch.testing import assert_close

from mipo import TrainConfig
from mipo.data.builtin import arithmetic_records
from mipo.data.collate import collate
from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
from mipo.data.tokenize import encode_record
from mipo.primitives import GradientAttributionWeights
from mipo.services import AnchorSampling
from mipo.training.batching import BatchBuilder
from mipo.training.services import Models, ServiceSetup, build_services
from mipo.training.services.anchor import generate_anchor
from mipo.training.services.attribution import attribution_scores, last_valid_position

VOCAB = 97
EOS = 2
PAD = 0

# The shared tiny Llama over this file's vocabulary, pad id and context length.
LLAMA = {"vocab_size": VOCAB, "max_position_embeddings": 128, "pad_token_id": PAD}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_llama(**LLAMA).double()


def right_padded(
    lengths: list[int], seed: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.long)
    mask = torch.zeros((len(lengths), width), dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, :length] = torch.randint(3, VOCAB, (length,), generator=generator)
        mask[row, :length] = 1
    return ids, mask


def oracle_scores(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """One unpadded row: ||d max_v z_{T,v} / d e_i||_1 via the full model."""
    embeddings = model.get_input_embeddings()(ids[None]).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeddings, use_cache=False).logits
    (gradient,) = torch.autograd.grad(logits[0, -1].max(), embeddings)
    return gradient[0].abs().sum(-1)


def test_scores_match_a_per_row_oracle_and_padding_is_zero(model: nn.Module) -> None:
    lengths = [7, 4, 9, 1]
    ids, mask = right_padded(lengths)
    scores = attribution_scores(model, ids, mask)
    assert scores.shape == ids.shape and scores.dtype == torch.float32
    for row, length in enumerate(lengths):
        expected = oracle_scores(model, ids[row, :length]).float()
        assert_close(scores[row, :length], expected, rtol=1e-5, atol=1e-7)
        assert bool((scores[row, length:] == 0).all())
        assert bool((scores[row, :length] > 0).all())


def test_scores_do_not_depend_on_the_other_rows(model: nn.Module) -> None:
    ids, mask = right_padded([6, 3, 8])
    together = attribution_scores(model, ids, mask)
    alone = attribution_scores(model, ids[1:2, :3], mask[1:2, :3])
    assert_close(together[1:2, :3], alone)


def test_extra_padding_columns_change_nothing(model: nn.Module) -> None:
    ids, mask = right_padded([5, 3])
    wide_ids = torch.cat([ids, torch.full((2, 4), PAD)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros((2, 4), dtype=torch.long)], dim=1)
    wide = attribution_scores(model, wide_ids, wide_mask)
    assert wide.shape == (2, 9)
    assert_close(wide[:, :5], attribution_scores(model, ids, mask))
    assert bool((wide[:, 5:] == 0).all())


def test_parameter_gradients_are_untouched_and_modes_restored(model: nn.Module) -> None:
    parameters = list(model.parameters())
    marker = torch.full_like(parameters[0], 0.5)
    parameters[0].grad = marker.clone()
    model.train()
    frozen = model.model.layers[0]
    frozen.eval()
    ids, mask = right_padded([5, 5])
    scores = attribution_scores(model, ids, mask)
    assert not scores.requires_grad
    assert_close(parameters[0].grad, marker)
    assert all(p.grad is None for p in parameters[1:])
    assert model.training and not frozen.training
    assert all(
        m.training
        for m in model.modules()
        if m is not frozen and m not in set(frozen.modules())
    )
    parameters[0].grad = None
    model.eval()


def test_modes_are_restored_after_an_exception(model: nn.Module) -> None:
    model.train()
    ids, mask = right_padded([3])
    ids[0, 0] = VOCAB + 5  # out of the embedding table
    with pytest.raises(IndexError):
        attribution_scores(model, ids, mask)
    assert all(m.training for m in model.modules())
    model.eval()


def test_scores_are_computed_under_no_grad_too(model: nn.Module) -> None:
    ids, mask = right_padded([4, 2])
    with torch.no_grad():
        scores = attribution_scores(model, ids, mask)
    assert_close(scores, attribution_scores(model, ids, mask))


def test_last_valid_position_handles_both_paddings() -> None:
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0]])
    assert last_valid_position(mask).tolist() == [1, 3, -1]


def test_a_row_without_tokens_is_refused(model: nn.Module) -> None:
    ids, mask = right_padded([3, 2])
    mask[1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\] have no valid token"):
        attribution_scores(model, ids, mask)


# ---------------------------------------------------------------- anchor


def left_padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor(
        [[PAD, PAD, 5, 6, 7], [8, 9, 10, 11, 12], [PAD, PAD, PAD, 13, 14]]
    )
    return ids, (ids != PAD).long()


def test_generate_anchor_returns_well_formed_right_padded_sequences(
    model: nn.Module,
) -> None:
    prompts, prompt_mask = left_padded_prompts()
    torch.manual_seed(0)
    model.train()
    anchor = generate_anchor(
        model,
        prompts,
        prompt_mask,
        sampling=AnchorSampling(max_new_tokens=6),
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    assert model.training
    model.eval()
    ids, mask, labels = anchor.input_ids, anchor.attention_mask, anchor.labels
    assert ids.shape == mask.shape == labels.shape
    assert not ids.requires_grad
    for row in range(prompts.shape[0]):
        prompt = prompts[row][prompt_mask[row].bool()]
        p = prompt.shape[0]
        n = int(mask[row].sum())
        assert bool((mask[row, :n] == 1).all()) and bool((mask[row, n:] == 0).all())
        assert ids[row, :p].tolist() == prompt.tolist()
        assert bool((labels[row, :p] == -100).all())
        assert bool((labels[row, n:] == -100).all())
        assert bool((ids[row, n:] == PAD).all())
        response = labels[row, p:n]
        assert 1 <= response.shape[0] <= 6
        assert response.tolist() == ids[row, p:n].tolist()
        # EOS only as the last response token
        assert EOS not in response[:-1].tolist()


def test_an_empty_prompt_is_refused_before_sampling(model: nn.Module) -> None:
    prompts, prompt_mask = left_padded_prompts()
    prompt_mask = prompt_mask.clone()
    prompt_mask[1] = 0
    with pytest.raises(ValueError, match=r"prompts \[1\] have no token"):
        generate_anchor(
            model,
            prompts,
            prompt_mask,
            sampling=AnchorSampling(max_new_tokens=2),
            pad_token_id=PAD,
            eos_token_id=EOS,
        )


def test_an_immediate_eos_is_a_one_token_response(model: nn.Module) -> None:
    """top_k = 1 makes sampling deterministic; declaring the first sampled token
    the EOS makes every response that single token."""
    prompts, prompt_mask = left_padded_prompts()
    greedy = AnchorSampling(max_new_tokens=4, top_k=1)
    first = generate_anchor(
        model,
        prompts[:1],
        prompt_mask[:1],
        sampling=greedy,
        pad_token_id=PAD,
        eos_token_id=EOS,
    )
    token = int(first.labels[0, 3])
    anchor = generate_anchor(
        model,
        prompts[:1],
        prompt_mask[:1],
        sampling=greedy,
        pad_token_id=PAD,
        eos_token_id=token,
    )
    assert anchor.labels.tolist() == [[-100, -100, -100, token]]
    assert anchor.attention_mask.tolist() == [[1, 1, 1, 1]]


def test_max_length_caps_the_new_tokens(model: nn.Module) -> None:
    prompts, prompt_mask = left_padded_prompts()
    anchor = generate_anchor(
        model,
        prompts,
        prompt_mask,
        sampling=AnchorSampling(max_new_tokens=64),
        pad_token_id=PAD,
        eos_token_id=EOS,
        max_length=7,
    )
    assert anchor.input_ids.shape[1] <= 7
    with pytest.raises(ValueError, match="max_length=5 leaves no room"):
        generate_anchor(
            model,
            prompts,
            prompt_mask,
            sampling=AnchorSampling(),
            pad_token_id=PAD,
            eos_token_id=EOS,
            max_length=5,
        )


def test_a_peft_wrapped_policy_gives_the_base_scores_at_initialisation() -> None:
    """LoRA starts with B = 0, so the wrapped policy computes the same function."""
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(seed=3, **LLAMA).double()
    ids, mask = right_padded([5, 3])
    expected = attribution_scores(base, ids, mask)
    wrapped = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    )
    assert_close(attribution_scores(wrapped, ids, mask), expected)
    assert all(p.grad is None for p in wrapped.parameters())


# ------------------------------------------------ the trainer's "sequence" span


def released_weights(scores: np.ndarray, lam: float, sigma_div: float) -> np.ndarray:
    """The released weight routine over one unshifted row of valid tokens (NumPy
    float64): positive scores normalised, a normalised Gaussian over the token
    index (centre (n-1)/2, sigma max(1, n/d)), mixed, renormalised, times n."""
    n = scores.shape[0]
    if n <= 1:
        return np.zeros(n)
    k = np.arange(n, dtype=np.float64)
    gauss = np.exp(-0.5 * ((k - (n - 1) / 2) / max(1.0, n / sigma_div)) ** 2)
    prior = gauss / gauss.sum()
    positive = np.clip(scores, 0.0, None)
    share = positive / positive.sum() if positive.sum() > 0 else prior
    mixed = lam * share + (1 - lam) * prior
    return n * mixed / mixed.sum()


def test_trainer_sequence_span_weights_match_the_released_routine() -> None:
    """The trainer's batch builder + GradientAttributionWeights(span="sequence") on a tiny
    Llama against the released procedure re-derived here: per-row float64 scores
    of every unshifted token (first one included), the weights over the whole
    unshifted row, then the first column dropped to align with the labels."""
    tokenizer = tiny_chat_tokenizer()
    pairs = [
        encode_record(r, tokenizer, max_length=128, max_prompt_length=96)
        for r in arithmetic_records(n=3, seed=2)
    ]
    tensors = collate(pairs, pad_token_id=tokenizer.pad_token_id)
    policy = tiny_llama(3, max_position_embeddings=256, pad_token_id=None).double()
    weighter = GradientAttributionWeights(lam=0.7, prior_sigma_div=4.0, span="sequence")
    models = Models(policy=policy, pad_token_id=tokenizer.pad_token_id)
    setup = ServiceSetup(
        config=TrainConfig(), models=models, device=torch.device("cpu")
    )
    builder = BatchBuilder(
        needs=weighter.needs, services=build_services(weighter.services, setup)
    )
    batch = builder(models, tensors)
    for side, data in (
        (batch.chosen, tensors.chosen),
        (batch.rejected, tensors.rejected),
    ):
        weights = weighter.weigh(side).double()
        for row in range(data.input_ids.shape[0]):
            length = int(data.attention_mask[row].sum())
            ids = data.input_ids[row, :length]
            scores = oracle_scores(policy, ids).detach().numpy()
            expected = released_weights(scores, 0.7, 4.0)[1:]
            got = weights[row, : length - 1].numpy()
            np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-7)
            assert bool((weights[row, length - 1 :] == 0).all())
