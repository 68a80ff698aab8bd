"""mipo's recipes equal TRL's own loss code on one tiny model and batch (fp32).

TRL computes its per-token log-probs with its fused LM head from a tiny Llama and
its collated batch; mipo computes them with :func:`mipo.training.logps.final_hidden_states`
+ :func:`mipo.training.logps.token_stats` on the very same tensors and runs a recipe. For
every ``DPOConfig`` loss type and knob (``test_dpo_trainer_parity``, one case per
row of ``docs/trl.md``) the batch loss, each pair's loss (TRL run on that pair
alone), ``rewards/*`` and the policy gradients agree. Where mipo follows a paper
that TRL departs from, the ``test_trl_differs_*`` tests pin the documented
difference. ORPO and CPO are checked against ``trl.experimental``. WPO's log
collision probability and TRL's head metrics (``logits/*``, ``entropy``,
``mean_token_accuracy``, ``num_tokens``) are checked as the trainer computes
them: mipo's own data pipeline and :class:`~mipo.training.batching.BatchBuilder`
on the same examples. Skipped when ``trl`` is not installed
(``pip install mipo[bench]``).
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.testing import assert_close

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")

from tiny import tiny_llama  # noqa: E402
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from mipo import Objective, PairBatch, Side, Term  # noqa: E402
from mipo.data.collate import PairTensors, collate  # noqa: E402
from mipo.data.load import load_records  # noqa: E402
from mipo.data.tokenize import encode_record  # noqa: E402
from mipo.primitives import (  # noqa: E402
    AlphaDivergence,
    APODownLink,
    ChosenNLL,
    DiscoPOPLink,
    ExoLink,
    FDivergenceLink,
    ForwardKL,
    HingeLink,
    IPOLink,
    JensenShannon,
    LabelSmoothedLink,
    LengthDesensitisedWeights,
    LinkSum,
    LogSigmoidLink,
    MeanOverResponse,
    ReverseKL,
    RobustLink,
    WPOLink,
)
from mipo.training.batching import BatchBuilder, count_tokens  # noqa: E402
from mipo.training.logps import final_hidden_states, token_stats  # noqa: E402
from mipo.training.models import FrozenCopyReference  # noqa: E402
from mipo.training.recipes import load_recipe  # noqa: E402
from mipo.training.services import Models  # noqa: E402
from mipo.training.token_metrics import NAMES as TOKEN_METRICS  # noqa: E402
from mipo.training.token_metrics import pooled_means  # noqa: E402

WORDS = "the a cat dog sat ran on under mat log is was red blue big small".split()
SPECIAL = ["<pad>", "<eos>", "<unk>"]
REWARD_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
)
TOL = {"rtol": 1e-6, "atol": 1e-6}
# TRL run pair by pair pads and sums in another order than on the batch: float32
# noise of a few ulps, which the squared losses (values near 10) magnify
PER_PAIR_TOL = {"rtol": 1e-5, "atol": 1e-6}
# SPPO's squared loss (values near 10) needs 1e-4; the other cases pass 1e-5
GRAD_TOL = {"rtol": 1e-4, "atol": 1e-6}
BETA = 0.3

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer built in memory (no hub download)."""
    vocab = {token: i for i, token in enumerate(SPECIAL + WORDS)}
    model = tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
    )


def word_llama(vocab_size: int, seed: int) -> LlamaForCausalLM:
    """The shared tiny Llama over the word tokenizer's ids, 64 positions."""
    return tiny_llama(
        seed,
        vocab_size=vocab_size,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )


EXAMPLES = [
    {"prompt": "the cat", "chosen": " sat on the mat", "rejected": " ran"},
    {"prompt": "a dog was", "chosen": " big", "rejected": " under a red log"},
    {"prompt": "the", "chosen": " blue cat is small", "rejected": " dog sat on"},
    {"prompt": "a small red", "chosen": " log", "rejected": " mat"},
]


def policy_and_reference(
    vocab_size: int, dtype: torch.dtype = torch.float32
) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """Two tiny Llamas 0.1-noise apart (seeded)."""
    policy = word_llama(vocab_size, seed=0)
    reference = word_llama(vocab_size, seed=0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return policy.to(dtype), reference.to(dtype)


def dpo_trainer(
    tmp_path: Path, examples: list[dict[str, str]] | None = None, **config: Any
) -> Any:
    """A TRL DPOTrainer on the tiny models and ``examples`` (default: the four
    EXAMPLES), one batch of all of them, in train mode."""
    examples = EXAMPLES if examples is None else examples
    tokenizer = word_tokenizer()
    policy, reference = policy_and_reference(len(tokenizer))
    args = trl.DPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=len(examples),
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        **config,
    )
    trainer = trl.DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=datasets.Dataset.from_list(examples),
        processing_class=tokenizer,
    )
    trainer.model.train()
    return trainer


def trl_rows(trainer: Any) -> list[dict[str, Any]]:
    return [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]


def trl_loss(trainer: Any, rows: list[dict[str, Any]]) -> tuple[Tensor, dict, dict]:
    """TRL's loss on ``rows`` (live), its logged metrics, and the collated inputs."""
    inputs = trainer.data_collator(rows)
    loss = trainer.compute_loss(trainer.model, inputs)
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return loss, metrics, inputs


def trl_per_pair(trainer: Any) -> tuple[Tensor, Tensor, Tensor]:
    """TRL run on each pair alone: its losses and its per-pair reward metrics."""
    losses, chosen, rejected = [], [], []
    with torch.no_grad():
        for row in trl_rows(trainer):
            loss, metrics, _ = trl_loss(trainer, [row])
            losses.append(loss)
            chosen.append(metrics["rewards/chosen"])
            rejected.append(metrics["rewards/rejected"])
    return torch.stack(losses), torch.tensor(chosen), torch.tensor(rejected)


def mipo_batch(
    model: torch.nn.Module,
    reference: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    labels: Tensor,
    *,
    collision: bool = False,
) -> PairBatch:
    """mipo's PairBatch from ``[chosen..., rejected...]`` rows of TRL tensors."""
    with torch.no_grad():
        reference_hidden = final_hidden_states(reference, input_ids, attention_mask)
    hidden = final_hidden_states(model, input_ids, attention_mask)
    stats = token_stats(
        hidden,
        model.get_output_embeddings(),
        labels,
        reference_hidden=reference_hidden,
        reference_head=reference.get_output_embeddings(),
        chunk_size=5,
        policy_stats=collision,  # the trainer's log collision (chunked head)
    )
    assert stats.reference_logps is not None
    extra = stats.log_collision
    n = input_ids.shape[0] // 2
    sides = [
        Side(
            policy_logps=stats.policy_logps[rows],
            response_mask=stats.response_mask[rows],
            reference_logps=stats.reference_logps[rows],
            log_collision=None if extra is None else extra[rows],
        )
        for rows in (slice(0, n), slice(n, 2 * n))
    ]
    return PairBatch(chosen=sides[0], rejected=sides[1])


def dpo_batch(trainer: Any, inputs: dict, *, collision: bool = False) -> PairBatch:
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    return mipo_batch(
        trainer.model,
        trainer.ref_model,
        inputs["input_ids"],
        inputs["attention_mask"],
        labels,
        collision=collision,
    )


def policy_grads(trainer: Any, loss: Tensor) -> list[Tensor]:
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, retain_graph=True))


def assert_same_grads(trainer: Any, mipo_loss: Tensor, trl_loss_: Tensor) -> None:
    mipo = policy_grads(trainer, mipo_loss)
    ours = policy_grads(trainer, trl_loss_)
    for index, (g_mipo, g_trl) in enumerate(zip(mipo, ours, strict=True)):
        # absolute slack scaled to the tensor: a near-zero element of a large
        # gradient carries the float32 noise of its neighbours
        atol = max(GRAD_TOL["atol"], GRAD_TOL["rtol"] * float(g_trl.abs().max()))
        assert_close(
            g_mipo,
            g_trl,
            rtol=GRAD_TOL["rtol"],
            atol=atol,
            msg=lambda m, i=index: f"parameter {i}: {m}",
        )


def recipe(name: str, **kwargs: Any) -> Callable[[float], Objective]:
    return lambda beta: load_recipe(name).make_objective(beta=beta, **kwargs)


def composed(**slots: Any) -> Callable[[float], Objective]:
    return lambda beta: Objective(beta=beta, **slots)


SFT = Term(name="sft", term=ChosenNLL(normalise="batch_tokens"))
TRL_LENGTH_NORMALISED = FDivergenceLink(
    link=LogSigmoidLink(), divergence=ReverseKL(), length_normalised=True
)
TRL_IPO = FDivergenceLink(
    link=IPOLink(), divergence=ReverseKL(), length_normalised=True
)

# (id, DPOConfig fields, mipo objective at beta, compare per pair, WPO column)
CASES = [
    ("sigmoid", {}, recipe("dpo"), True, False),
    ("hinge", {"loss_type": ["hinge"]}, recipe("slic"), True, False),
    (
        "ipo",
        {"loss_type": ["ipo"]},
        recipe("f_dpo", divergence=ReverseKL(), link=IPOLink(), length_normalised=True),
        True,
        False,
    ),
    (
        "exo_pair",
        {"loss_type": ["exo_pair"], "label_smoothing": 1e-3},
        recipe("exo", epsilon=1e-3),
        True,
        False,
    ),
    (
        "exo_pair_smoothing_0.2",
        {"loss_type": ["exo_pair"], "label_smoothing": 0.2},
        recipe("exo", epsilon=0.2),
        True,
        False,
    ),
    ("nca_pair", {"loss_type": ["nca_pair"]}, recipe("nca"), True, False),
    (
        "robust",
        {"loss_type": ["robust"], "label_smoothing": 0.1},
        recipe("cdpo", link=RobustLink, epsilon=0.1),
        True,
        False,
    ),
    ("bco_pair", {"loss_type": ["bco_pair"]}, recipe("bco"), True, False),
    ("sppo_hard", {"loss_type": ["sppo_hard"]}, recipe("sppo"), True, False),
    ("aot", {"loss_type": ["aot"]}, recipe("aot"), False, False),
    (
        "aot_smoothing_0.1",
        {"loss_type": ["aot"], "label_smoothing": 0.1},
        recipe("aot", epsilon=0.1),
        False,
        False,
    ),
    (
        "aot_unpaired",
        {"loss_type": ["aot_unpaired"], "label_smoothing": 0.1},
        recipe("aot", epsilon=0.1, paired=False),
        False,
        False,
    ),
    ("apo_zero", {"loss_type": ["apo_zero"]}, recipe("apo"), True, False),
    (
        "apo_down",
        {"loss_type": ["apo_down"]},
        recipe("apo", link=APODownLink()),
        True,
        False,
    ),
    ("discopop", {"loss_type": ["discopop"]}, recipe("discopop"), True, False),
    (
        "discopop_tau_0.3",
        {"loss_type": ["discopop"], "discopop_tau": 0.3},
        recipe("discopop", tau=0.3),
        True,
        False,
    ),
    (
        "sft",
        {"loss_type": ["sft"]},
        composed(link=LinkSum(links=(LogSigmoidLink(),), weights=(0.0,)), terms=(SFT,)),
        False,
        False,
    ),
    (
        "sigmoid_norm",
        {"loss_type": ["sigmoid_norm"]},
        composed(link=TRL_LENGTH_NORMALISED),
        True,
        False,
    ),
    (
        "rpo",
        {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5]},
        recipe("rpo", alpha=0.5, sft_normalise="batch_tokens"),
        False,
        False,
    ),
    (
        "mpo",
        {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
        recipe("mpo"),
        False,
        False,
    ),
    (
        "loss_weights",
        {
            "loss_type": ["sigmoid", "hinge", "nca_pair"],
            "loss_weights": [0.3, 1.5, 0.7],
        },
        composed(
            link=LinkSum(
                links=(
                    LogSigmoidLink(),
                    HingeLink(),
                    load_recipe("nca").objective.link,
                ),
                weights=(0.3, 1.5, 0.7),
            )
        ),
        True,
        False,
    ),
    (
        "forward_kl",
        {"f_divergence_type": "forward_kl"},
        recipe("f_dpo", divergence=ForwardKL()),
        True,
        False,
    ),
    (
        "js_divergence",
        {"f_divergence_type": "js_divergence"},
        recipe("f_dpo", divergence=JensenShannon()),
        True,
        False,
    ),
    (
        "alpha_divergence",
        {"f_divergence_type": "alpha_divergence"},
        recipe("f_dpo", divergence=AlphaDivergence(alpha=0.5)),
        True,
        False,
    ),
    (
        "alpha_divergence_coef_0.3",
        {"f_divergence_type": "alpha_divergence", "f_alpha_divergence_coef": 0.3},
        recipe("f_dpo", divergence=AlphaDivergence(alpha=0.7)),
        True,
        False,
    ),
    (
        "forward_kl_ipo",
        {"f_divergence_type": "forward_kl", "loss_type": ["ipo"]},
        recipe("f_dpo", divergence=ForwardKL(), link=IPOLink(), length_normalised=True),
        True,
        False,
    ),
    (
        "js_divergence_sigmoid_norm",
        {"f_divergence_type": "js_divergence", "loss_type": ["sigmoid_norm"]},
        recipe("f_dpo", divergence=JensenShannon(), length_normalised=True),
        True,
        False,
    ),
    (
        "alpha_divergence_hinge",
        {"f_divergence_type": "alpha_divergence", "loss_type": ["hinge"]},
        recipe("f_dpo", divergence=AlphaDivergence(alpha=0.5), link=HingeLink()),
        True,
        False,
    ),
    (
        "js_divergence_robust",
        {
            "f_divergence_type": "js_divergence",
            "loss_type": ["robust"],
            "label_smoothing": 0.1,
        },
        recipe("f_dpo", divergence=JensenShannon(), link=RobustLink(epsilon=0.1)),
        True,
        False,
    ),
    (
        "forward_kl_exo_pair",
        {
            "f_divergence_type": "forward_kl",
            "loss_type": ["exo_pair"],
            "label_smoothing": 0.01,
        },
        recipe("f_dpo", divergence=ForwardKL(), link=ExoLink(epsilon=0.01)),
        True,
        False,
    ),
    (
        "alpha_divergence_discopop",
        {"f_divergence_type": "alpha_divergence", "loss_type": ["discopop"]},
        recipe("f_dpo", divergence=AlphaDivergence(), link=DiscoPOPLink()),
        True,
        False,
    ),
    ("ld_alpha_0.5", {"ld_alpha": 0.5}, recipe("ld_dpo", alpha=0.5), True, False),
    ("ld_alpha_0", {"ld_alpha": 0.0}, recipe("ld_dpo", alpha=0.0), True, False),
    (
        "ld_alpha_ipo",
        {"ld_alpha": 0.3, "loss_type": ["ipo"]},
        composed(weighter=LengthDesensitisedWeights(alpha=0.3), link=TRL_IPO),
        True,
        False,
    ),
    (
        "use_weighting",
        {"use_weighting": True},
        recipe("wpo", max_weight=None),
        True,
        True,
    ),
    (
        "use_weighting_ipo",
        {"use_weighting": True, "loss_type": ["ipo"]},
        recipe("wpo", max_weight=None, link=TRL_IPO),
        True,
        True,
    ),
    (
        "use_weighting_ld_alpha",
        {"use_weighting": True, "ld_alpha": 0.5},
        composed(
            weighter=LengthDesensitisedWeights(alpha=0.5),
            link=WPOLink(max_weight=None),
        ),
        True,
        True,
    ),
    (
        "sigmoid_label_smoothing",
        {"label_smoothing": 0.2},
        recipe("dpo"),
        True,
        False,
    ),
]


@pytest.mark.parametrize(
    ("config", "make", "per_pair", "collision"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_dpo_trainer_parity(
    tmp_path: Path,
    config: dict[str, Any],
    make: Callable[[float], Objective],
    per_pair: bool,
    collision: bool,
) -> None:
    """Loss, per-pair losses, rewards/* and policy gradients equal TRL's."""
    trainer = dpo_trainer(tmp_path, beta=BETA, **config)
    trl_total, metrics, inputs = trl_loss(trainer, trl_rows(trainer))
    out = make(BETA)(dpo_batch(trainer, inputs, collision=collision))
    # the squared losses (IPO, SPPO: values near 10) magnify float32 noise past
    # 1e-6 relative on some CPUs
    squared = bool({"ipo", "sppo_hard"} & set(config.get("loss_type", [])))
    assert_close(out.loss, trl_total.detach(), **(PER_PAIR_TOL if squared else TOL))
    for name in REWARD_METRICS:
        assert_close(out.metrics[name].item(), metrics[name], **TOL, msg=name)
    assert_same_grads(trainer, out.loss, trl_total)
    if per_pair:
        single, _, _ = trl_per_pair(trainer)
        assert_close(out.per_pair.detach(), single, **PER_PAIR_TOL)


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_dpo_loss_and_reward_metrics_equal_trl(tmp_path: Path, beta: float) -> None:
    """The dpo recipe at two scales (TRL's defaults otherwise)."""
    trainer = dpo_trainer(tmp_path, beta=beta)
    trl_total, metrics, inputs = trl_loss(trainer, trl_rows(trainer))
    out = load_recipe("dpo").make_objective(beta=beta)(dpo_batch(trainer, inputs))
    assert_close(out.loss, trl_total.detach(), **TOL)
    for name in REWARD_METRICS:
        assert_close(out.metrics[name].item(), metrics[name], **TOL, msg=name)
    assert_same_grads(trainer, out.loss, trl_total)


def test_trl_differs_sigmoid_ignores_label_smoothing(tmp_path: Path) -> None:
    """TRL 1.16's ``sigmoid`` drops ``label_smoothing``, so its "cDPO" is DPO;
    mipo's cdpo recipe is the paper's mixture, which adds exactly eps * z to each
    pair's DPO loss (-(1-e) log s(z) - e log s(-z) = softplus(-z) + e z)."""
    epsilon = 0.2
    trainer = dpo_trainer(tmp_path, beta=BETA, label_smoothing=epsilon)
    _, _, inputs = trl_loss(trainer, trl_rows(trainer))
    single, _, _ = trl_per_pair(trainer)
    batch = dpo_batch(trainer, inputs)
    dpo = load_recipe("dpo").make_objective(beta=BETA)(batch)
    cdpo = load_recipe("cdpo").make_objective(beta=BETA, epsilon=epsilon)(batch)
    assert_close(dpo.per_pair.detach(), single, **TOL)
    assert_close(
        (cdpo.per_pair - single).detach(), epsilon * cdpo.logits.detach(), **TOL
    )
    assert float((cdpo.per_pair - dpo.per_pair).abs().min()) > 1e-4


def float64_log_probs(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``model``'s fused-head forward return float64 per-token log-probs."""
    forward = model.forward

    def widened(*args: Any, **kwargs: Any) -> Any:
        out = forward(*args, **kwargs)
        out.log_probs = out.log_probs.double()
        return out

    monkeypatch.setattr(model, "forward", widened)


def test_trl_differs_alpha_divergence_raises_on_float64(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TRL 1.16's ``alpha_divergence`` branch looks its clamp up in a dtype table
    without float64, so float64 log-ratios raise KeyError (its fused head returns
    float32 today, so only float64 log-prob paths reach it); mipo's
    AlphaDivergence runs in float64 and agrees with TRL's float32 loss."""
    trainer = dpo_trainer(tmp_path, beta=BETA, f_divergence_type="alpha_divergence")
    trl_total, _, inputs = trl_loss(trainer, trl_rows(trainer))
    float64_log_probs(trainer.model, monkeypatch)
    float64_log_probs(trainer.ref_model, monkeypatch)
    with pytest.raises(KeyError, match="float64"):
        trl_loss(trainer, trl_rows(trainer))
    policy, reference = policy_and_reference(len(word_tokenizer()), torch.float64)
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    batch = mipo_batch(
        policy, reference, inputs["input_ids"], inputs["attention_mask"], labels
    )
    out64 = load_recipe("f_dpo").make_objective(beta=BETA)(batch)
    assert out64.loss.dtype == torch.float64
    assert_close(out64.loss.float(), trl_total.detach(), rtol=1e-5, atol=1e-6)


def test_trl_differs_alpha_coefficient_is_one_minus_the_papers_alpha(
    tmp_path: Path,
) -> None:
    """TRL 1.16 computes (u^(a-1) - 1)/(a - 1) for ``f_alpha_divergence_coef = a``;
    the paper's alpha-divergence score is (1 - u^-alpha)/alpha. TRL's a = 0.3 is
    the paper's alpha = 0.7 (equal, in the parity cases), not alpha = 0.3."""
    trainer = dpo_trainer(
        tmp_path,
        beta=BETA,
        f_divergence_type="alpha_divergence",
        f_alpha_divergence_coef=0.3,
    )
    trl_total, _, inputs = trl_loss(trainer, trl_rows(trainer))
    batch = dpo_batch(trainer, inputs)
    f_dpo = load_recipe("f_dpo")
    same = f_dpo.make_objective(beta=BETA, divergence=AlphaDivergence(alpha=0.7))
    named = f_dpo.make_objective(beta=BETA, divergence=AlphaDivergence(alpha=0.3))
    assert_close(same(batch).loss, trl_total.detach(), **TOL)
    assert abs(float(named(batch).loss - trl_total)) > 1e-4


def greedy_examples(steps: int = 3) -> list[dict[str, str]]:
    """EXAMPLES plus pairs whose responses are the tiny policy's greedy words
    (so their WPO weights exceed 1: a greedy token has p_t >= sum_v p_v^2)."""
    tokenizer = word_tokenizer()
    policy, _ = policy_and_reference(len(tokenizer))
    words = torch.arange(len(SPECIAL), len(tokenizer))
    extra = []
    for example in EXAMPLES[:2]:
        ids = tokenizer(example["prompt"])["input_ids"]
        picked = []
        with torch.no_grad():
            for _ in range(steps):
                logits = policy(torch.tensor([ids + picked])).logits[0, -1]
                picked.append(int(words[logits[words].argmax()]))
        # two different greedy continuations (mipo's data refuses equal ones)
        chosen, rejected = (" " + tokenizer.decode(picked[:n]) for n in (steps, 1))
        extra.append(
            {"prompt": example["prompt"], "chosen": chosen, "rejected": rejected}
        )
    return EXAMPLES + extra


def builder_batch(
    trainer: Any,
    objective: Objective,
    examples: list[dict[str, str]] | None = None,
    *,
    chunk_size: int | None = None,
) -> tuple[PairBatch, dict[str, Tensor], PairTensors]:
    """The trainer's own batch of ``examples`` for ``objective``: mipo's data
    pipeline (which lays the word tokens out as TRL's collator does) and
    :class:`BatchBuilder` on TRL's policy and reference; with its token metrics."""
    examples = EXAMPLES if examples is None else examples
    tokenizer = trainer.processing_class
    encoded = [
        encode_record(record, tokenizer, max_length=64, max_prompt_length=32)
        for record in load_records(examples)
    ]
    tensors = collate(encoded, pad_token_id=tokenizer.pad_token_id)
    models = Models(
        policy=trainer.model,
        reference=FrozenCopyReference(trainer.ref_model),
        pad_token_id=tokenizer.pad_token_id,
    )
    builder = BatchBuilder(needs=objective.needs, chunk_size=chunk_size)
    batch, metrics = builder.build(models, tensors)
    return batch, metrics, tensors


def test_trl_differs_wpo_weights_uncapped(tmp_path: Path) -> None:
    """TRL's ``use_weighting`` weights equal mipo's WPO weights on the trainer's
    own batch (the ratio of TRL's weighted to unweighted per-pair losses); the
    authors cap them at 1 and so does mipo's wpo recipe, which scales TRL's
    pair loss by min(1, c)/c."""
    examples = greedy_examples()
    weighted = dpo_trainer(tmp_path / "w", examples, beta=BETA, use_weighting=True)
    plain = dpo_trainer(tmp_path / "p", examples, beta=BETA)
    trl_weighted, _, _ = trl_per_pair(weighted)
    trl_plain, _, _ = trl_per_pair(plain)
    wpo = load_recipe("wpo").make_objective(beta=BETA)
    batch, _, _ = builder_batch(weighted, wpo, examples, chunk_size=3)
    weights = WPOLink(max_weight=None).weights(batch)
    assert_close(trl_weighted / trl_plain, weights, **PER_PAIR_TOL)
    assert bool((weights > 1.01).any()) and bool((weights < 0.99).any()), weights
    capped = load_recipe("wpo").make_objective(beta=BETA)(batch)
    expected = trl_weighted * weights.clamp(max=1.0) / weights
    assert_close(capped.per_pair.detach(), expected, **PER_PAIR_TOL)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_wpo_on_the_trainers_batch_equals_trl(
    tmp_path: Path, chunk_size: int | None
) -> None:
    """``use_weighting=True``: the wpo recipe (uncapped) on the batch the trainer
    builds, with the log collision its policy forward computes, gives TRL's
    loss, per-pair losses and gradients."""
    trainer = dpo_trainer(tmp_path, beta=BETA, use_weighting=True)
    trl_total, _, _ = trl_loss(trainer, trl_rows(trainer))
    wpo = load_recipe("wpo").make_objective(beta=BETA, max_weight=None)
    batch, _, _ = builder_batch(trainer, wpo, chunk_size=chunk_size)
    out = wpo(batch)
    assert_close(out.loss, trl_total.detach(), **TOL)
    assert_same_grads(trainer, out.loss, trl_total)
    single, _, _ = trl_per_pair(trainer)
    assert_close(out.per_pair.detach(), single, **PER_PAIR_TOL)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_policy_stats_equal_trls_fused_head(
    tmp_path: Path, chunk_size: int | None
) -> None:
    """Per token, mipo's log collision, mean logit, entropy and top-1 hit equal
    TRL 1.16's fused-head ``log_sum_sq_probs``, ``mean_logits``, ``entropy`` and
    ``is_top1`` on the same model and batch."""
    trainer = dpo_trainer(tmp_path, greedy_examples(), beta=BETA, use_weighting=True)
    inputs = trainer.data_collator(trl_rows(trainer))
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    with torch.no_grad():
        trl_out = trainer.model(
            input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True
        )
        hidden = final_hidden_states(trainer.model, ids, attention)
        stats = token_stats(
            hidden,
            trainer.model.get_output_embeddings(),
            labels,
            chunk_size=chunk_size,
            policy_stats=True,
        )
    mask = stats.response_mask
    pairs = (
        (stats.log_collision, trl_out.log_sum_sq_probs),
        (stats.logit_means, trl_out.mean_logits),
        (stats.entropy, trl_out.entropy),
        (stats.top1, trl_out.is_top1.float()),
    )
    for ours, theirs in pairs:
        assert_close(ours[mask], theirs[mask].float(), **TOL)
    assert 0 < float(stats.top1[mask].mean()) < 1  # greedy tokens hit, others miss


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_token_metrics_equal_trl(tmp_path: Path, chunk_size: int | None) -> None:
    """``logits/chosen``, ``logits/rejected``, ``entropy`` and
    ``mean_token_accuracy`` of the trainer's batch equal what TRL's DPOTrainer
    logs for the same examples, and ``num_tokens`` (TRL's running count, after
    this one batch) equals the batch's non-padding token count."""
    examples = greedy_examples()
    trainer = dpo_trainer(tmp_path, examples, beta=BETA)
    _, metrics, _ = trl_loss(trainer, trl_rows(trainer))
    dpo = load_recipe("dpo").make_objective(beta=BETA)
    _, totals, tensors = builder_batch(trainer, dpo, examples, chunk_size=chunk_size)
    ours = pooled_means(totals)
    assert set(ours) == set(TOKEN_METRICS)
    for name in TOKEN_METRICS:
        assert_close(ours[name].item(), metrics[name], **TOL, msg=name)
    assert int(count_tokens(tensors)) == metrics["num_tokens"]
    assert 0 < metrics["mean_token_accuracy"] < 1
    assert abs(metrics["logits/chosen"] - metrics["logits/rejected"]) > 1e-5


def test_trl_differs_length_normalised_rewards(tmp_path: Path) -> None:
    """mipo's ipo and ln_dpo recipes average the log-ratio in the weighter, so
    their rewards/* are beta * s / |y|, the reward the link sees; TRL divides
    inside the loss and logs beta * s. Losses and gradients agree."""
    for name, loss_type in (("ipo", "ipo"), ("ln_dpo", "sigmoid_norm")):
        trainer = dpo_trainer(tmp_path / name, beta=BETA, loss_type=[loss_type])
        trl_total, _, inputs = trl_loss(trainer, trl_rows(trainer))
        batch = dpo_batch(trainer, inputs)
        out = load_recipe(name).make_objective(beta=BETA)(batch)
        assert_close(out.loss, trl_total.detach(), **TOL)
        assert_same_grads(trainer, out.loss, trl_total)
        _, chosen, rejected = trl_per_pair(trainer)
        assert_close(out.chosen_rewards * batch.chosen.lengths, chosen, **TOL)
        assert_close(out.rejected_rewards * batch.rejected.lengths, rejected, **TOL)


def test_trl_differs_rpo_nll_per_sequence(tmp_path: Path) -> None:
    """RPO's NLL is each winning sequence's per-token mean (the paper, mipo's
    default); TRL's ``sft`` is one token mean over the batch. The losses differ
    by alpha * (mean_i NLL_i/n_i - sum_i NLL_i / sum_i n_i)."""
    alpha = 0.5
    trainer = dpo_trainer(
        tmp_path, beta=BETA, loss_type=["sigmoid", "sft"], loss_weights=[1.0, alpha]
    )
    trl_total, _, inputs = trl_loss(trainer, trl_rows(trainer))
    batch = dpo_batch(trainer, inputs)
    out = load_recipe("rpo").make_objective(beta=BETA, alpha=alpha)(batch)
    nll = -batch.chosen.masked_sum(batch.chosen.policy_logps)
    lengths = batch.chosen.lengths
    gap = alpha * ((nll / lengths).mean() - nll.sum() / lengths.sum())
    assert_close((out.loss - trl_total).detach(), gap.detach(), **TOL)
    assert abs(float(gap)) > 1e-4


def orpo_or_cpo(tmp_path: Path, kind: str, **config: Any) -> Any:
    """A trl.experimental ORPO or CPO trainer on the tiny policy (train mode)."""
    experimental = pytest.importorskip(f"trl.experimental.{kind}")
    config_type, trainer_type = (
        (experimental.ORPOConfig, experimental.ORPOTrainer)
        if kind == "orpo"
        else (experimental.CPOConfig, experimental.CPOTrainer)
    )
    tokenizer = word_tokenizer()
    policy, _ = policy_and_reference(len(tokenizer))
    args = config_type(
        output_dir=str(tmp_path),
        per_device_train_batch_size=len(EXAMPLES),
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        max_length=64,
        **config,
    )
    trainer = trainer_type(
        model=policy,
        args=args,
        train_dataset=datasets.Dataset.from_list(EXAMPLES),
        processing_class=tokenizer,
    )
    trainer.model.train()
    return trainer


def reference_free_batch(trainer: Any) -> tuple[PairBatch, Tensor, dict, Tensor]:
    """TRL's loss and metrics, mipo's batch from the same concatenated tensors,
    and each chosen row's NLL over prompt and response (TRL's ORPO span)."""
    inputs = trainer.data_collator(trl_rows(trainer))
    loss, metrics = trainer.get_batch_loss_metrics(trainer.model, inputs)
    # ORPO keeps a padding_value, CPO a pad_token_id
    pad = (
        trainer.padding_value
        if hasattr(trainer, "padding_value")
        else trainer.pad_token_id
    )
    cat = trainer.concatenated_inputs(
        inputs, is_encoder_decoder=False, padding_value=pad
    )
    ids, mask = cat["concatenated_input_ids"], cat["concatenated_attention_mask"]
    batch = mipo_batch(
        trainer.model, trainer.model, ids, mask, cat["concatenated_labels"]
    )
    n = len(EXAMPLES)
    every = ids[:n].masked_fill(mask[:n] == 0, -100)
    hidden = final_hidden_states(trainer.model, ids[:n], mask[:n])
    full = token_stats(hidden, trainer.model.get_output_embeddings(), every)
    full_nll = -full.policy_logps[full.response_mask].mean()
    return batch, loss, metrics, full_nll


def test_orpo_equals_trl_experimental_up_to_the_prompt_nll(tmp_path: Path) -> None:
    """ORPO's odds-ratio part and rewards/* equal TRL's; TRL's NLL also counts the
    prompt tokens (as the authors' code does by default), the paper's is the
    response's, so TRL's loss is mipo's plus (prompt+response NLL - response NLL)."""
    lam = 0.25
    trainer = orpo_or_cpo(tmp_path, "orpo", beta=lam)
    batch, trl_total, metrics, full_nll = reference_free_batch(trainer)
    out = load_recipe("orpo").make_objective(beta=lam)(batch)
    chosen = batch.chosen
    response_nll = -chosen.masked_sum(chosen.policy_logps).sum() / chosen.lengths.sum()
    assert_close(response_nll.detach(), out.metrics["terms/nll"], **TOL)
    assert_close(out.loss + full_nll - response_nll, trl_total, **TOL)
    for name in REWARD_METRICS:
        assert_close(out.metrics[name].item(), metrics[name], **TOL, msg=name)
    link_mean = (out.loss - response_nll).detach()
    assert_close(-link_mean.item() / lam, metrics["log_odds_ratio"], **PER_PAIR_TOL)
    assert abs(float(full_nll - response_nll)) > 1e-3
    assert_same_grads(trainer, out.loss + full_nll - response_nll, trl_total)


CPO_CASES = [
    ("sigmoid", {}, {}),
    (
        "sigmoid_label_smoothing",
        {"label_smoothing": 0.1},
        {"link": LabelSmoothedLink(epsilon=0.1)},
    ),
    ("hinge", {"loss_type": "hinge"}, {"link": HingeLink()}),
    (
        "ipo",
        {"loss_type": "ipo"},
        {"link": IPOLink(), "weighter": MeanOverResponse()},
    ),
    (
        "simpo",
        {"loss_type": "simpo", "simpo_gamma": 0.5, "cpo_alpha": 0.3},
        {"weighter": MeanOverResponse(), "gamma": 0.5, "cpo_alpha": 0.3},
    ),
]


@pytest.mark.parametrize(
    ("config", "kwargs"), [pytest.param(c, k, id=i) for i, c, k in CPO_CASES]
)
def test_cpo_equals_trl_experimental(
    tmp_path: Path, config: dict[str, Any], kwargs: dict[str, Any]
) -> None:
    """The cpo recipe equals trl.experimental's CPOTrainer (loss, rewards/*,
    gradients) for its loss types, label smoothing and the SimPO margin."""
    trainer = orpo_or_cpo(tmp_path, "cpo", beta=BETA, **config)
    batch, trl_total, metrics, _ = reference_free_batch(trainer)
    out = load_recipe("cpo").make_objective(beta=BETA, **kwargs)(batch)
    assert_close(out.loss, trl_total, **TOL)
    for name in REWARD_METRICS:
        assert_close(out.metrics[name].item(), metrics[name], **TOL, msg=name)
    assert_same_grads(trainer, out.loss, trl_total)
