"""Per-token log-probs and KLs: eager and chunked paths against full-logit oracles.

The oracle in this file is written from the definitions in ``mipo/training/logps.py``'s
docstring (log-softmax of ``W h + b``, the causal shift, ``-100`` masking, the two
KL directions), independently of mipo's code.
"""

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given
from tiny import tiny_llama
from torch import Tensor, nn
from torch.testing import assert_close
from transformers import GPT2Config, GPT2LMHeadModel

from mipo.training.logps import TokenStats, final_hidden_states, token_stats

F64 = {"rtol": 1e-9, "atol": 1e-10}

# The shared tiny Llama over 97 ids, without a pad id, 128 positions.
LLAMA = {"vocab_size": 97, "max_position_embeddings": 128, "pad_token_id": None}


def oracle(
    policy_logits: Tensor, labels: Tensor, reference_logits: Tensor
) -> dict[str, Tensor]:
    """Loop over every (row, position) in float64 from full unshifted logits."""
    batch, length, _ = policy_logits.shape
    out = {k: torch.zeros(batch, length - 1, dtype=torch.float64) for k in "lrfv"}
    for i in range(batch):
        for t in range(length - 1):
            label = int(labels[i, t + 1])
            if label == -100:
                continue
            lp = policy_logits[i, t].double().log_softmax(-1)
            lq = reference_logits[i, t].double().log_softmax(-1)
            out["l"][i, t] = lp[label]
            out["r"][i, t] = lq[label]
            out["f"][i, t] = (lq.exp() * (lq - lp)).sum()
            out["v"][i, t] = (lp.exp() * (lp - lq)).sum()
    return out


def make_labels(
    input_ids: Tensor, prompt_lengths: list[int], lengths: list[int]
) -> Tensor:
    labels = torch.full_like(input_ids, -100)
    for i, (p, n) in enumerate(zip(prompt_lengths, lengths, strict=True)):
        labels[i, p:n] = input_ids[i, p:n]
    return labels


def random_inputs(
    *, batch: int, length: int, vocab: int, hidden: int, seed: int
) -> tuple[Tensor, Tensor, nn.Linear, Tensor, nn.Linear, Tensor]:
    """Hidden states, heads and labels with prompts and right padding."""
    gen = torch.Generator().manual_seed(seed)
    policy_hidden = torch.randn(
        batch, length, hidden, generator=gen, dtype=torch.float64
    )
    reference_hidden = policy_hidden + 0.3 * torch.randn(
        batch, length, hidden, generator=gen, dtype=torch.float64
    )
    policy_head = nn.Linear(hidden, vocab, bias=True).double()
    reference_head = nn.Linear(hidden, vocab, bias=False).double()
    with torch.no_grad():
        policy_head.weight.copy_(torch.randn(vocab, hidden, generator=gen))
        policy_head.bias.copy_(torch.randn(vocab, generator=gen))
        reference_head.weight.copy_(
            policy_head.weight + 0.2 * torch.randn(vocab, hidden, generator=gen)
        )
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    prompts = [int(x) for x in torch.randint(1, length, (batch,), generator=gen)]
    ends = [int(torch.randint(p + 1, length + 1, (1,), generator=gen)) for p in prompts]
    labels = make_labels(ids, prompts, ends)
    return policy_hidden, reference_hidden, policy_head, ids, reference_head, labels


def stats_of(chunk_size: int | None, seed: int = 0, **sizes: int) -> tuple:
    policy_hidden, reference_hidden, policy_head, _, reference_head, labels = (
        random_inputs(seed=seed, **sizes)
    )
    policy_hidden.requires_grad_(True)
    stats = token_stats(
        policy_hidden,
        policy_head,
        labels,
        reference_hidden=reference_hidden,
        reference_head=reference_head,
        kl_forward=True,
        kl_reverse=True,
        chunk_size=chunk_size,
    )
    return stats, policy_hidden, policy_head, reference_hidden, reference_head, labels


SIZES = {"batch": 3, "length": 9, "vocab": 13, "hidden": 5}


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 1000])
def test_token_stats_equal_full_logit_oracle(chunk_size: int | None) -> None:
    stats, ph, head, rh, rhead, labels = stats_of(chunk_size, **SIZES)
    with torch.no_grad():
        expected = oracle(head(ph), labels, rhead(rh))
    assert_close(stats.policy_logps, expected["l"], **F64)
    assert stats.reference_logps is not None
    assert stats.kl_forward is not None and stats.kl_reverse is not None
    assert_close(stats.reference_logps, expected["r"], **F64)
    assert_close(stats.kl_forward, expected["f"], **F64)
    assert_close(stats.kl_reverse, expected["v"], **F64)
    assert_close(stats.response_mask, labels[:, 1:] != -100)
    assert not stats.reference_logps.requires_grad


def _grads(stats: TokenStats, leaves: list[Tensor], coefficients: Tensor) -> list:
    """Gradients of a random linear functional of every live output."""
    assert stats.kl_forward is not None and stats.kl_reverse is not None
    total = (
        coefficients[0] * stats.policy_logps
        + coefficients[1] * stats.kl_forward
        + coefficients[2] * stats.kl_reverse
    ).sum()
    return list(torch.autograd.grad(total, leaves))


@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
@pytest.mark.parametrize("which", ["logps", "kl_forward", "kl_reverse", "all"])
def test_chunked_gradients_equal_eager(chunk_size: int, which: str) -> None:
    """Values and gradients w.r.t. hidden states, head weight and bias agree."""
    gen = torch.Generator().manual_seed(1)
    coefficients = torch.randn(3, 3, 8, generator=gen, dtype=torch.float64)
    pick = {"logps": [0], "kl_forward": [1], "kl_reverse": [2], "all": [0, 1, 2]}
    mask = torch.zeros(3, 1, 1, dtype=torch.float64)
    mask[pick[which]] = 1.0
    coefficients = coefficients * mask
    results = []
    for size in (None, chunk_size):
        stats, ph, head, _, _, _ = stats_of(size, **SIZES)
        results.append(
            _grads(stats, [ph, head.weight, head.bias], coefficients)
            + [stats.policy_logps, stats.kl_forward, stats.kl_reverse]
        )
    for eager, chunked in zip(*results, strict=True):
        assert_close(chunked, eager, **F64)


def test_gradient_is_zero_on_prompt_and_padding_rows() -> None:
    stats, ph, _, _, _, labels = stats_of(3, **SIZES)
    assert stats.kl_forward is not None
    (grad,) = torch.autograd.grad((stats.policy_logps + stats.kl_forward).sum(), [ph])
    # hidden[:, t] predicts labels[:, t+1]; the last position predicts nothing.
    live = torch.zeros_like(labels, dtype=torch.bool)
    live[:, :-1] = labels[:, 1:] != -100
    assert bool((grad[~live] == 0).all())
    assert bool((grad[live].abs().sum(-1) > 0).all())


@given(
    batch=st.integers(1, 3),
    length=st.integers(2, 7),
    vocab=st.integers(2, 11),
    hidden=st.integers(1, 4),
    chunk_size=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_chunked_equals_eager_property(
    batch: int, length: int, vocab: int, hidden: int, chunk_size: int, seed: int
) -> None:
    """Refactoring oracle: the chunked path computes the eager path's values and
    gradients for any shapes, prompt lengths, padding and chunk size."""
    sizes = {"batch": batch, "length": length, "vocab": vocab, "hidden": hidden}
    coefficients = torch.randn(
        3, batch, length - 1, generator=torch.Generator().manual_seed(seed)
    ).double()
    results = []
    for size in (None, chunk_size):
        stats, ph, head, _, _, _ = stats_of(size, seed=seed, **sizes)
        results.append(
            _grads(stats, [ph, head.weight, head.bias], coefficients)
            + [stats.policy_logps, stats.reference_logps]
        )
    for eager, chunked in zip(*results, strict=True):
        assert_close(chunked, eager, **F64)


def test_policy_only_and_no_kl_fields_are_none() -> None:
    policy_hidden, _, head, _, _, labels = random_inputs(seed=3, **SIZES)
    for size in (None, 2):
        stats = token_stats(policy_hidden, head, labels, chunk_size=size)
        assert stats.reference_logps is None
        assert stats.kl_forward is None and stats.kl_reverse is None


def test_float32_chunked_matches_eager() -> None:
    policy_hidden, reference_hidden, head, _, rhead, labels = random_inputs(
        seed=4, **SIZES
    )
    args = (policy_hidden.float(), head.float(), labels)
    kwargs = {
        "reference_hidden": reference_hidden.float(),
        "reference_head": rhead.float(),
        "kl_forward": True,
    }
    eager = token_stats(*args, **kwargs)
    chunked = token_stats(*args, chunk_size=4, **kwargs)
    assert_close(chunked.policy_logps, eager.policy_logps, rtol=1e-5, atol=1e-5)
    assert_close(chunked.kl_forward, eager.kl_forward, rtol=1e-5, atol=1e-5)


def _model_logits(model: nn.Module, ids: Tensor, attention: Tensor) -> Tensor:
    return model(input_ids=ids, attention_mask=attention).logits


@pytest.mark.parametrize("tied", [True, False])
def test_final_hidden_states_through_head_equal_model_logits(tied: bool) -> None:
    model = tiny_llama(tie_word_embeddings=tied, **LLAMA).double()
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    attention[1, 5:] = 0
    hidden = final_hidden_states(model, ids, attention)
    logits = model.get_output_embeddings()(hidden)
    expected = _model_logits(model, ids, attention)
    assert_close(logits[attention.bool()], expected[attention.bool()], **F64)


def test_final_hidden_states_gpt2() -> None:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=50, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config).double().eval()
    ids = torch.randint(0, 50, (2, 6))
    attention = torch.ones_like(ids)
    hidden = final_hidden_states(model, ids, attention)
    assert_close(
        model.get_output_embeddings()(hidden),
        _model_logits(model, ids, attention),
        **F64,
    )


def test_final_hidden_states_peft_keeps_adapters_active() -> None:
    peft = pytest.importorskip("peft")
    model = tiny_llama(**LLAMA).double()
    lora = peft.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    wrapped = peft.get_peft_model(model, lora)
    ids = torch.randint(0, 97, (2, 6), generator=torch.Generator().manual_seed(0))
    attention = torch.ones_like(ids)
    hidden = final_hidden_states(wrapped, ids, attention)
    expected = wrapped(input_ids=ids, attention_mask=attention).logits
    assert_close(wrapped.get_output_embeddings()(hidden), expected, **F64)
    with wrapped.disable_adapter():
        base = final_hidden_states(wrapped, ids, attention)
    assert not torch.equal(base, hidden)


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_tied_embedding_gradient_through_model_matches_logits_oracle(
    chunk_size: int | None,
) -> None:
    """With tied embeddings the head weight is the input embedding: the gradient
    of the summed response log-probs w.r.t. it (and every other parameter) equals
    the one from ``model(...).logits`` with a hand-written masked log-softmax."""
    model = tiny_llama(**LLAMA).double()
    ids = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(2))
    attention = torch.ones_like(ids)
    attention[0, 6:] = 0
    labels = make_labels(ids, [3, 2], [6, 8])
    hidden = final_hidden_states(model, ids, attention)
    stats = token_stats(
        hidden, model.get_output_embeddings(), labels, chunk_size=chunk_size
    )
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(stats.policy_logps.sum(), params)
    logits = _model_logits(model, ids, attention)[:, :-1].log_softmax(-1)
    target = labels[:, 1:]
    keep = target != -100
    expected_sum = logits.gather(-1, target.clamp(min=0)[..., None])[..., 0][keep].sum()
    expected = torch.autograd.grad(expected_sum, params)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for g, e in zip(got, expected, strict=True):
        assert_close(g, e, **F64)


def test_errors_are_clear() -> None:
    policy_hidden, reference_hidden, head, _, _, labels = random_inputs(seed=5, **SIZES)
    with pytest.raises(ValueError, match="together"):
        token_stats(policy_hidden, head, labels, reference_hidden=reference_hidden)
    with pytest.raises(ValueError, match="KLs need"):
        token_stats(policy_hidden, head, labels, kl_forward=True)
    with pytest.raises(ValueError, match="chunk_size"):
        token_stats(policy_hidden, head, labels, chunk_size=0)
    with pytest.raises(TypeError, match="torch.nn.Linear"):
        token_stats(policy_hidden, nn.Sequential(head), labels, chunk_size=2)


def test_soft_capped_models_are_refused() -> None:
    model = tiny_llama(**LLAMA)
    model.config.final_logit_softcapping = 30.0
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="final_logit_softcapping"):
        final_hidden_states(model, ids, torch.ones_like(ids))


def test_kl_is_zero_when_policy_equals_reference() -> None:
    policy_hidden, _, head, _, _, labels = random_inputs(seed=6, **SIZES)
    for size in (None, 4):
        stats = token_stats(
            policy_hidden,
            head,
            labels,
            reference_hidden=policy_hidden,
            reference_head=head,
            kl_forward=True,
            kl_reverse=True,
            chunk_size=size,
        )
        assert stats.kl_forward is not None and stats.kl_reverse is not None
        assert_close(stats.kl_forward, torch.zeros_like(stats.kl_forward), **F64)
        assert_close(stats.kl_reverse, torch.zeros_like(stats.kl_reverse), **F64)
        assert_close(stats.policy_logps, stats.reference_logps, **F64)
