r"""The learned prior $\zeta_\phi = \mathrm{softmax}(o^{ref} + \phi)$ and its
Blahut–Arimoto prior step (``docs/objective.md#learning-a-prior``)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import random_batch
from safetensors.torch import load_file
from tiny import build_tiny_model_dir
from torch.testing import assert_close

from mipo import Need
from mipo.errors import CompositionError
from mipo.primitives import MarginalFitPrior
from mipo.services import MarginalFit
from mipo.training.recipes import load_recipe
from mipo.training.services.learned_prior import LogitBiasPrior
from mipo.training.trainer import PRIOR_FILE, evaluate_run, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RECIPE = load_recipe("mi_dpo_learned_prior")


def test_prior_step_recovers_the_empirical_marginal() -> None:
    """With flat reference logits the maximum-likelihood bias makes zeta the
    empirical token frequencies of the samples: the marginal p_pi (the
    Blahut-Arimoto prior step, identity (d) of docs/objective.md).
    Oracle: counts / N."""
    rng = np.random.default_rng(0)
    vocab = 6
    tokens = rng.choice(vocab, size=400, p=[0.4, 0.25, 0.15, 0.1, 0.07, 0.03])
    prior = LogitBiasPrior(vocab)
    before, after = prior.fit(
        torch.zeros(len(tokens), vocab),
        torch.from_numpy(tokens),
        steps=400,
        learning_rate=1.5,
    )
    frequencies = np.bincount(tokens, minlength=vocab) / len(tokens)
    fitted = torch.softmax(prior.bias.detach().double(), 0).numpy()
    assert_close(fitted, frequencies, rtol=0, atol=2e-3)
    entropy = float(-(frequencies * np.log(frequencies)).sum())
    assert_close(before, float(np.log(vocab)), rtol=1e-6, atol=1e-6)
    assert after < before
    assert_close(after, entropy, rtol=0, atol=1e-4)
    assert prior.bias.grad is None


def test_zero_bias_is_the_reference() -> None:
    """phi = 0 gives log zeta = log pi_ref at every response token."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(3, 5, 8)
    labels = torch.tensor(
        [[-100, -100, 4, 2, 7], [-100, 1, 3, -100, -100]] * 1 + [[0] * 5]
    )
    prior = LogitBiasPrior(11)
    got = prior.token_logps(hidden, head, labels, chunk_tokens=5)  # 12 positions
    reference = torch.log_softmax(head(hidden[:, :-1]), -1)
    target = labels[:, 1:]
    expected = reference.gather(-1, target.clamp(min=0)[..., None])[..., 0]
    expected = torch.where(target == -100, 0.0, expected)
    assert_close(got, expected.detach())
    assert not got.requires_grad


def test_a_prior_with_gradient_is_refused() -> None:
    """The degeneracy guard: J never trains the prior
    (docs/objective.md#the-degeneracy)."""
    batch = random_batch({Need.PRIOR_LOGPS}, seed=0)
    live = batch.chosen.prior_logps.clone().requires_grad_(True)
    bad = type(batch)(
        chosen=batch.chosen.replace(prior_logps=live), rejected=batch.rejected
    )
    with pytest.raises(CompositionError, match="degenerate"):
        RECIPE.objective(bad)
    assert bool(torch.isfinite(RECIPE.objective(batch).loss))


def test_recipe_declares_a_trainer_fitted_prior() -> None:
    objective = RECIPE.make_objective(prior_update_every=2)
    assert {Need.PRIOR_LOGPS, Need.LEARNED_PRIOR} <= objective.needs
    assert objective.prior == MarginalFitPrior(prior_update_every=2)
    assert objective.services == (MarginalFit(update_every=2),)
    with pytest.raises(CompositionError, match="prior_update_every: must be >= 1"):
        MarginalFitPrior(prior_update_every=0)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def test_learned_prior_alternates_with_the_policy(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Two steps with a prior fit before each (prior_update_every=1): the fit
    lowers the samples' NLL, the bias is saved, and resuming restores it."""
    overrides = {
        "train.model": str(tiny_model),
        "train.output_dir": str(tmp_path),
        "train.max_steps": 2,
        "train.max_examples": 24,
        "train.batch_size": 2,
        "train.save_steps": 1,
        "train.eval_max_examples": 4,
        "train.eval_max_new_tokens": 2,
        "objective.prior_update_every": 1,
        "objective.fit_steps": 5,
        "objective.sample_max_new_tokens": 4,
    }
    first = train(
        "recipes/mi_dpo_learned_prior.py", overrides, progress=False, stop_after=1
    )
    bias_1 = load_file(str(first.run_dir / "checkpoint-1" / PRIOR_FILE))["bias"]
    assert float(bias_1.abs().sum()) > 0
    resumed = train(resume=first.run_dir, progress=False)
    assert resumed.step == 2
    bias_2 = load_file(str(first.run_dir / "checkpoint-2" / PRIOR_FILE))["bias"]
    assert not torch.equal(bias_1, bias_2)
    lines = (first.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if "loss" in r]  # training records
    assert len(records) == 2
    for record in records:
        assert record["prior/nll_after"] < record["prior/nll_before"]
    assert 0.0 <= resumed.eval["eval/rewards/accuracies"] <= 1.0
    # re-evaluating the saved run restores the fitted prior from the checkpoint
    again = evaluate_run(first.run_dir)
    assert_close(again["eval/loss"], resumed.eval["eval/loss"], rtol=1e-5, atol=1e-6)
