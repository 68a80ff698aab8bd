"""Memory: no full ``[batch, length, vocab]`` logits outside the chunked
log-prob head (learned prior, weight estimation), the mask network reads every
layer without stacking them, and the tools run on the accelerator when there is
one (device choice tested on the CPU with the ``meta`` device)."""

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny import build_tiny_model_dir
from torch.testing import assert_close
from torch.utils._python_dispatch import TorchDispatchMode

from mipo.data.load import load_records
from mipo.tools import pictures, weights
from mipo.training import models as models_module
from mipo.training.models import default_device
from mipo.training.services.learned_prior import LogitBiasPrior
from mipo.training.services.masks import LearnedMaskModel


class LargestOutput(TorchDispatchMode):
    """The most rows of any new tensor (views left out: a transposed weight is
    not a computation) whose last axis is ``width``, and the largest new tensor
    of all (in elements)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width, self.rows, self.numel = width, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204, ARG002
        out = func(*args, **(kwargs or {}))
        if func.is_view:
            return out
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.numel = max(self.numel, tensor.numel())
                if tensor.dim() and tensor.shape[-1] == self.width:
                    self.rows = max(self.rows, tensor.numel() // self.width)
        return out


def test_learned_prior_streams_the_vocabulary_in_chunks() -> None:
    torch.manual_seed(0)
    vocab = 37
    head = torch.nn.Linear(8, vocab, bias=False).double()
    hidden = torch.randn(4, 9, 8, dtype=torch.float64)
    labels = torch.randint(0, vocab, (4, 9))
    labels[:, :3] = -100
    prior = LogitBiasPrior(vocab)
    with torch.no_grad():
        prior.bias.copy_(torch.randn(vocab))
    with LargestOutput(vocab) as seen:
        got = prior.token_logps(hidden, head, labels, chunk_tokens=5)
    assert seen.rows <= 5  # the eager path has 4 x 8 = 32 rows of logits
    logits = head(hidden[:, :-1]).float() + prior.bias
    want = torch.log_softmax(logits, -1).gather(
        -1, labels[:, 1:].clamp(min=0)[..., None]
    )
    want = torch.where(labels[:, 1:] == -100, 0.0, want[..., 0])
    assert_close(got, want.detach(), rtol=1e-6, atol=1e-6)


def test_prior_fit_in_chunks_equals_one_pass() -> None:
    torch.manual_seed(1)
    logits, tokens = torch.randn(300, 23), torch.randint(0, 23, (300,))
    fits = []
    for chunk in (10**6, 64):
        prior = LogitBiasPrior(23)
        with LargestOutput(23) as seen:
            before, after = prior.fit(
                logits, tokens, steps=20, learning_rate=1.0, chunk_tokens=chunk
            )
        fits.append((before, after, prior.bias.detach().clone(), seen.rows))
    (b1, a1, bias1, rows1), (b2, a2, bias2, rows2) = fits
    assert rows1 == 300 and rows2 <= 64  # one pass: [300, vocab] intermediates
    assert_close(b2, b1, rtol=1e-6, atol=1e-6)
    assert_close(a2, a1, rtol=1e-6, atol=1e-6)
    assert_close(bias2, bias1, rtol=1e-5, atol=1e-6)
    assert a1 < b1


def test_weight_estimation_uses_the_chunked_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = build_tiny_model_dir(tmp_path / "model")
    model, tokenizer = weights._load_model(str(model_dir))
    vocab = model.get_output_embeddings().weight.shape[0]
    records = load_records("builtin:arithmetic?n=4&seed=1")
    pairs = [weights._full(r, tokenizer) for r in records]
    monkeypatch.setattr(weights, "CHUNK_SIZE", 3)
    with torch.no_grad(), LargestOutput(vocab) as seen:
        chosen, rejected = weights._completion_logps(
            model, pairs, tokenizer.pad_token_id, torch.device("cpu")
        )
    padded = max(len(p.prompt_ids) + len(p.chosen_ids) for p in pairs)
    assert seen.rows <= 3 < 2 * len(pairs) * (padded - 1)
    monkeypatch.setattr(weights, "CHUNK_SIZE", 256)
    with torch.no_grad():
        again = weights._completion_logps(
            model, pairs, tokenizer.pad_token_id, torch.device("cpu")
        )
    assert_close(again, (chosen, rejected), rtol=1e-5, atol=1e-5)
    assert [len(c) for c in chosen] == [len(p.chosen_ids) for p in pairs]


def test_mask_network_reads_the_layers_without_stacking_them() -> None:
    torch.manual_seed(2)
    layers, batch, length, hidden = 6, 2, 9, 16
    model = LearnedMaskModel(
        hidden_size=hidden, num_layers=layers, independent=False, dropout=0.0
    )
    captured = {
        "layer": [torch.randn(batch, length, hidden) for _ in range(layers - 1)]
    }
    final = torch.randn(batch, length, hidden)
    mask = torch.ones(batch, length - 1, dtype=torch.bool)
    with LargestOutput(hidden) as seen:
        reward, kl = model.masks(captured, final, torch.nn.Identity(), mask)
    assert seen.numel < layers * batch * (length - 1) * hidden
    states = torch.stack([*captured["layer"], final])[:, :, :-1]
    assert_close(reward, model.reward(list(states)))
    assert torch.equal(kl, reward)  # one shared network


def test_tools_choose_the_accelerator_when_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert default_device() == torch.device("cpu")
    # "meta" stands in for the accelerator: every model must land there
    meta = torch.device("meta")
    monkeypatch.setattr(weights, "default_device", lambda: meta)
    monkeypatch.setattr(models_module, "default_device", lambda: meta)
    model_dir = build_tiny_model_dir(tmp_path / "model")
    model, _ = weights._load_model(str(model_dir))
    assert {p.device for p in model.parameters()} == {meta}
    from mipo.training.recipes import load_recipe

    recipe = load_recipe("dpo")
    config = recipe.train.__class__(model=str(model_dir), max_examples=4)
    source = pictures._fresh("dpo", recipe.objective, config)
    devices: set[Any] = {p.device for p in source.models.policy.parameters()}
    devices |= {p.device for p in source.models.reference.model.parameters()}
    assert devices == {meta}
