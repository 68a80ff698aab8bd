"""The chunked log-prob head under bf16 autocast (CPU): one precision per pass.

Under ``torch.autocast`` the eager path's ``F.linear`` gives bf16 logits and
autograd differentiates those same bf16 logits. The chunked path recomputes the
logits in backward, so it must recompute them in the forward's dtype too: its
values *and* gradients must match the eager path run under the same autocast
(to bf16 tolerance), and its gradient must be much closer to that one than to
the float32 gradient, which belongs to different (float32) logits.
"""

import pytest
import torch
from conftest import TOLERANCES
from tiny import tiny_llama
from torch import Tensor, nn
from torch.testing import assert_close

from mipo.training.logps import _head_dtype as head_dtype
from mipo.training.logps import final_hidden_states, token_stats

BF16 = TOLERANCES[torch.bfloat16]
# batch, length, hidden, vocab: logits of std ~4 so that bf16 rounding moves
# the log-probs visibly (~1e-2) against float32
B, L, H, V = 4, 33, 48, 1000


def inputs(seed: int) -> tuple[Tensor, Tensor, nn.Linear, nn.Linear, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    policy_hidden = torch.randn(B, L, H, generator=gen)
    reference_hidden = policy_hidden + 0.3 * torch.randn(B, L, H, generator=gen)
    head = nn.Linear(H, V, bias=True)
    reference_head = nn.Linear(H, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(0.6 * torch.randn(V, H, generator=gen))
        head.bias.copy_(torch.randn(V, generator=gen))
        reference_head.weight.copy_(
            head.weight + 0.1 * torch.randn(V, H, generator=gen)
        )
    labels = torch.randint(0, V, (B, L), generator=gen)
    labels[0, :7] = -100  # prompt
    labels[1, 25:] = -100  # padding
    labels[2, :3] = -100
    return policy_hidden, reference_hidden, head, reference_head, labels


def run(
    chunk_size: int | None, *, autocast: bool, seed: int = 0
) -> tuple[list[Tensor], list[Tensor]]:
    """(values, gradients w.r.t. hidden, weight, bias) of a random functional."""
    policy_hidden, reference_hidden, head, reference_head, labels = inputs(seed)
    policy_hidden.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        stats = token_stats(
            policy_hidden,
            head,
            labels,
            reference_hidden=reference_hidden,
            reference_head=reference_head,
            kl_forward=True,
            kl_reverse=True,
            chunk_size=chunk_size,
        )
    assert stats.reference_logps is not None
    assert stats.kl_forward is not None and stats.kl_reverse is not None
    values = [
        stats.policy_logps,
        stats.reference_logps,
        stats.kl_forward,
        stats.kl_reverse,
    ]
    coefficients = torch.randn(3, B, L - 1, generator=torch.Generator().manual_seed(9))
    total = sum(
        (c * v).sum()
        for c, v in zip(coefficients, values[:1] + values[2:], strict=True)
    )
    # backward outside autocast, as a trainer does
    grads = torch.autograd.grad(total, [policy_hidden, head.weight, head.bias])
    return [v.detach() for v in values], list(grads)


def relative_error(got: Tensor, want: Tensor) -> float:
    got, want = got.detach(), want.detach()
    return float((got - want).abs().max() / want.abs().max())


def test_head_dtype_is_autocast_dtype_only_under_autocast() -> None:
    x = torch.zeros(2, 3)
    assert head_dtype(x) == torch.float32
    assert head_dtype(x.bfloat16()) == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head_dtype(x) == torch.bfloat16
        assert head_dtype(x.double()) == torch.float64  # autocast never casts fp64
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=False):
        assert head_dtype(x) == torch.float32


@pytest.mark.parametrize("chunk_size", [1, 16, 4096])
def test_chunked_equals_eager_under_bf16_autocast(chunk_size: int) -> None:
    eager_values, eager_grads = run(None, autocast=True)
    values, grads = run(chunk_size, autocast=True)
    for got, want in zip(values, eager_values, strict=True):
        assert got.dtype == torch.float32  # the softmax maths stays float32
        assert_close(got, want, **BF16)
    for got, want in zip(grads, eager_grads, strict=True):
        assert got.dtype == torch.float32  # leaves keep their dtype
        assert_close(got, want, **BF16)


@pytest.mark.parametrize("chunk_size", [16, 4096])
def test_chunked_gradient_is_the_gradient_of_the_bf16_logits(chunk_size: int) -> None:
    """The bf16 eager gradient differs from the float32 one by ~1e-2 (relative);
    the chunked bf16 gradient sits far closer to the bf16 eager one (a backward
    recomputing float32 logits would sit at the float32 distance)."""
    _, eager_grads = run(None, autocast=True)
    _, fp32_grads = run(None, autocast=False)
    _, grads = run(chunk_size, autocast=True)
    for got, bf16, fp32 in zip(grads, eager_grads, fp32_grads, strict=True):
        precision_gap = relative_error(fp32, bf16)
        assert precision_gap > 3e-3  # the two precisions are distinguishable here
        assert relative_error(got, bf16) < 0.5 * precision_gap


def test_values_under_autocast_are_the_bf16_logits_log_probs() -> None:
    """Forward log-probs under autocast are those of the bf16-rounded logits
    (computed here by hand), not the float32 ones."""
    policy_hidden, _, head, _, labels = inputs(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        stats = token_stats(policy_hidden, head, labels, chunk_size=16)
    logits = nn.functional.linear(
        policy_hidden[:, :-1].bfloat16(), head.weight.bfloat16(), head.bias.bfloat16()
    )
    targets = labels[:, 1:]
    mask = targets != -100
    expected = (
        logits.float().log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])
    )
    expected = torch.where(mask, expected[..., 0], 0.0)
    assert_close(stats.policy_logps, expected, rtol=1e-5, atol=1e-5)
    fp32 = token_stats(policy_hidden, head, labels, chunk_size=16)
    assert relative_error(fp32.policy_logps, expected) > 1e-3


def test_tied_model_gradients_under_autocast_match_eager() -> None:
    """Through a tiny tied-embedding Llama: every parameter's gradient of the
    summed response log-probs agrees between the two paths under autocast."""
    model = tiny_llama(vocab_size=300, max_position_embeddings=64, pad_token_id=None)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 300, (3, 20), generator=gen)
    attention = torch.ones_like(ids)
    attention[2, 15:] = 0
    labels = ids.clone()
    labels[:, :6] = -100
    labels[2, 15:] = -100
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for chunk_size in (None, 8):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = final_hidden_states(model, ids, attention)
            stats = token_stats(
                hidden, model.get_output_embeddings(), labels, chunk_size=chunk_size
            )
        total = stats.policy_logps.sum()
        results.append([total.detach(), *torch.autograd.grad(total, params)])
    for got, want in zip(results[1], results[0], strict=True):
        assert_close(got, want, **BF16)
