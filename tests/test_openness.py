r"""Openness: a model-side primitive defined entirely in this file trains,
evaluates, draws its token-weight picture, checkpoints and resumes exactly,
with no edit to the library.

The primitive weighs each response token by how likely a *second, frozen* model
finds it, relative to that model's running mean log-probability $\mu$:

$$ w_t = \sigma\big(\log p_{\text{scorer}}(y_t \mid s_t) - \mu\big), \qquad
   \mu \leftarrow m\,\mu + (1 - m)\,\bar\ell \ \text{after every optimiser step}, $$

with $\bar\ell$ the mean scorer log-probability over the response tokens of the
step's last micro-batch. Three pieces, all here: the spec
(:class:`FrozenScorer`, hyperparameters), the primitive that declares it
(:class:`ScorerWeights`), and the service that runs it
(:class:`FrozenScorerService`: it owns the frozen model, fills
``token_weights``, updates $\mu$ after each step and saves $\mu$ in every
checkpoint). ``docs/guides/new_primitive.md`` walks through this file.
"""

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

import pytest
import torch
from safetensors.torch import load_file
from tiny import build_tiny_model_dir
from torch import Tensor
from torch.testing import assert_close

from mipo import Need, Objective, Side, TrainConfig
from mipo.primitives import AbstractSequenceWeighter, ReferencePrior
from mipo.services import AbstractServiceSpec
from mipo.training.logps import final_hidden_states, token_stats
from mipo.training.services import Models, Service, ServiceSetup, Stacked
from mipo.typing import TokenWeights

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class FrozenScorer(AbstractServiceSpec):
    """A second causal LM, frozen, that scores every response token.

    Args:
        model_dir: the scorer's Hugging Face directory.
        momentum: $m$ of the running mean $\\mu$.
    """

    model_dir: str
    momentum: float = 0.5

    @property
    def provides(self) -> frozenset[Need]:
        return frozenset({Need.TOKEN_WEIGHTS})


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ScorerWeights(AbstractSequenceWeighter):
    r"""$w_t = \sigma(\log p_{\text{scorer}}(y_t|s_t) - \mu)$ (module docstring)."""

    scorer: FrozenScorer

    @property
    def needs(self) -> frozenset[Need]:
        return frozenset({Need.TOKEN_WEIGHTS})

    @property
    def services(self) -> tuple[AbstractServiceSpec, ...]:
        return (self.scorer,)

    def weigh(self, side: Side) -> TokenWeights:
        return side.token_weights


SCORER_FILE = "scorer_state.safetensors"


class FrozenScorerService(Service, spec=FrozenScorer):
    """Owns the frozen scorer and the running mean $\\mu$."""

    description = "frozen scorer"
    checkpoint_file = SCORER_FILE

    def __init__(self, spec: FrozenScorer, setup: ServiceSetup) -> None:
        from transformers import AutoModelForCausalLM

        super().__init__(spec, setup)
        scorer = AutoModelForCausalLM.from_pretrained(spec.model_dir).eval()
        scorer.requires_grad_(False)
        self.module = scorer.to(setup.device)
        self.mean = torch.zeros((), dtype=torch.float32, device=setup.device)
        self.last = self.mean

    def before_forward(
        self,
        stacked: Stacked,
        batch: Any,  # noqa: ARG002
        models: Models,  # noqa: ARG002
    ) -> dict[Need, Tensor]:
        pairs = stacked.pair_rows
        logps, mask = scorer_logps(
            self.module,
            stacked.input_ids[:pairs],
            stacked.attention_mask[:pairs],
            stacked.labels[:pairs],
        )
        self.last = logps[mask].mean()
        weights = torch.where(mask, torch.sigmoid(logps - self.mean), 0.0)
        return {Need.TOKEN_WEIGHTS: weights}

    def after_step(self, step: int, models: Models) -> None:  # noqa: ARG002
        m = self.spec.momentum
        self.mean = m * self.mean + (1.0 - m) * self.last

    def state_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.mean = state["mean"].to(self.mean.device)


def scorer_logps(
    model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """The scorer's token log-probs on the shifted axis and the response mask."""
    with torch.no_grad():
        hidden = final_hidden_states(model, input_ids, attention_mask)
        stats = token_stats(hidden, model.get_output_embeddings(), labels)
    return stats.policy_logps, stats.response_mask


# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("openness")
    return build_tiny_model_dir(root / "policy"), build_tiny_model_dir(
        root / "scorer", seed=1
    )


def _recipe(policy: Path, scorer: Path, out: Path) -> Any:
    from mipo.training.recipes import recipe_from

    objective = Objective(
        prior=ReferencePrior(),
        weighter=ScorerWeights(scorer=FrozenScorer(model_dir=str(scorer))),
        beta=0.1,
    )
    config = TrainConfig(
        model=str(policy),
        dataset="builtin:arithmetic",
        max_examples=30,
        eval_max_examples=4,
        eval_max_new_tokens=2,
        max_steps=4,
        batch_size=2,
        learning_rate=1e-3,
        warmup_ratio=0.0,
        save_steps=2,
        output_dir=str(out),
        seed=5,
    )
    return recipe_from(objective, config, name="scorer_weights")


def _records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "loss" in json.loads(line)]


@pytest.mark.slow
def test_a_primitive_defined_here_trains_evaluates_draws_and_resumes(
    models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from mipo.tools.pictures import main as pictures_main
    from mipo.training.evaluate import main as eval_main
    from mipo.training.trainer import train

    policy, scorer = models
    straight = train(_recipe(policy, scorer, tmp_path / "a"), progress=False)
    assert straight.step == 4
    config = json.loads((straight.run_dir / "config.json").read_text())
    assert config["needs"] == ["reference_logps", "token_weights"]
    assert "FrozenScorer" in config["services"][0]
    # the service's state moved and is in every checkpoint
    mean_2 = load_file(str(straight.run_dir / "checkpoint-2" / SCORER_FILE))["mean"]
    mean_4 = load_file(str(straight.run_dir / "checkpoint-4" / SCORER_FILE))["mean"]
    assert float(mean_2) < 0.0 and float(mean_4) != float(mean_2)

    # checkpoint and resume exactly: stop at 2, resume from the run directory
    # alone (the objective composed here is stored with the run)
    first = train(_recipe(policy, scorer, tmp_path / "b"), stop_after=2, progress=False)
    resumed = train(resume=first.run_dir, progress=False)
    assert resumed.step == 4
    want = load_file(str(straight.run_dir / "checkpoint-4" / "model.safetensors"))
    got = load_file(str(resumed.run_dir / "checkpoint-4" / "model.safetensors"))
    for key in want:
        assert torch.equal(got[key], want[key]), key
    again = load_file(str(resumed.run_dir / "checkpoint-4" / SCORER_FILE))["mean"]
    assert torch.equal(again, mean_4)
    assert [r["loss"] for r in _records(resumed.run_dir)] == [
        r["loss"] for r in _records(straight.run_dir)
    ]

    # evaluate the saved run from its directory
    (straight.run_dir / "eval.json").unlink()
    capsys.readouterr()
    eval_main([str(straight.run_dir)])
    evaluation = json.loads((straight.run_dir / "eval.json").read_text())
    assert evaluation["checkpoint"] == "checkpoint-4"
    for key in ("eval/loss", "eval/rewards/accuracies", "eval/kl_reverse_per_token"):
        assert_close(evaluation[key], straight.eval[key], rtol=1e-5, atol=1e-6)

    # its token-weight picture, from the run directory: the weights drawn are
    # sigma(log p_scorer - mu) with mu restored from the checkpoint
    rows = [
        {"prompt": f"{i} + 1 =", "chosen": f" {i + 1}", "rejected": f" {i + 20}"}
        for i in range(2)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pictures_main(
        [
            str(straight.run_dir),
            "--data",
            str(data),
            "--pairs",
            "2",
            "--out",
            str(tmp_path / "pics"),
        ]
    )
    page = (tmp_path / "pics" / "weights.html").read_text()
    sums = [float(s) for s in re.findall(r"sum ([0-9.]+)</h3>", page)]
    assert len(sums) == 4
    expected = _oracle_sums(scorer, rows, float(mean_4))
    assert_close(torch.tensor(sums), torch.tensor(expected), rtol=0, atol=2e-3)


def _oracle_sums(scorer: Path, rows: list[dict[str, str]], mean: float) -> list[float]:
    """Sum of sigma(log p_scorer(y_t) - mean) over each response, from the
    Hugging Face forward's full logits (one sequence at a time, no padding)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mipo.data.formats import record_from_row
    from mipo.data.tokenize import encode_record

    model = AutoModelForCausalLM.from_pretrained(scorer).eval()
    tokenizer = AutoTokenizer.from_pretrained(scorer)
    sums = []
    for row in rows:
        record = record_from_row(row, source="pairs.jsonl:1")
        pair = encode_record(record, tokenizer, max_length=128, max_prompt_length=96)
        for response in (pair.chosen_ids, pair.rejected_ids):
            ids = torch.tensor([pair.prompt_ids + response])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1].double()
            logps = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
            tail = logps[len(pair.prompt_ids) - 1 :]
            sums.append(float(torch.sigmoid(tail - mean).sum()))
    return sums
