"""mipo's DPO loss and ``rewards/*`` metrics equal TRL's DPOTrainer on one batch.

TRL computes its per-token log-probs with its own fused LM head from the same
tiny Llama and the same collated batch; mipo computes them with
:func:`mipo.training.logps.final_hidden_states` + :func:`mipo.training.logps.token_stats` and runs
the ``dpo`` recipe. Skipped when ``trl`` is not installed (``pip install
mipo[bench]``).
"""

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")
tokenizers = pytest.importorskip("tokenizers")

from tiny import tiny_llama  # noqa: E402
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from mipo import PairBatch, Side  # noqa: E402
from mipo.training.logps import final_hidden_states, token_stats  # noqa: E402
from mipo.training.recipes import load_recipe  # noqa: E402

WORDS = "the a cat dog sat ran on under mat log is was red blue big small".split()
SPECIAL = ["<pad>", "<eos>", "<unk>"]

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:trl.*")


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


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_dpo_loss_and_reward_metrics_equal_trl(tmp_path: Path, beta: float) -> None:
    tokenizer = word_tokenizer()
    policy = word_llama(len(tokenizer), seed=0)
    reference = word_llama(len(tokenizer), seed=0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.1 * torch.randn_like(p))
    config = trl.DPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        per_device_train_batch_size=len(EXAMPLES),
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
    )
    trainer = trl.DPOTrainer(
        model=policy,
        ref_model=reference,
        args=config,
        train_dataset=datasets.Dataset.from_list(EXAMPLES),
        processing_class=tokenizer,
    )
    rows = [trainer.train_dataset[i] for i in range(len(EXAMPLES))]
    inputs = trainer.data_collator(rows)
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, inputs)
    trl_metrics = {k: v[-1] for k, v in trainer._metrics["train"].items()}

    # mipo on the very same tensors: [chosen..., rejected...] rows from TRL's collator.
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    with torch.no_grad():
        reference_hidden = final_hidden_states(
            trainer.ref_model, inputs["input_ids"], inputs["attention_mask"]
        )
    stats = token_stats(
        final_hidden_states(
            trainer.model, inputs["input_ids"], inputs["attention_mask"]
        ),
        trainer.model.get_output_embeddings(),
        labels,
        reference_hidden=reference_hidden,
        reference_head=trainer.ref_model.get_output_embeddings(),
        chunk_size=5,
    )
    assert stats.reference_logps is not None
    n = len(EXAMPLES)
    sides = [
        Side(
            policy_logps=stats.policy_logps[rows_],
            response_mask=stats.response_mask[rows_],
            reference_logps=stats.reference_logps[rows_],
        )
        for rows_ in (slice(0, n), slice(n, 2 * n))
    ]
    objective = load_recipe("dpo").make_objective(beta=beta)
    out = objective(PairBatch(chosen=sides[0], rejected=sides[1]))

    tolerance = {"rtol": 1e-6, "atol": 1e-6}
    assert_close(out.loss, trl_loss.detach(), **tolerance)
    for name in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
    ):
        assert_close(out.metrics[name].item(), trl_metrics[name], **tolerance, msg=name)
    # The gradients agree too (TRL's loss is live through the policy).
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    mipo_grads = torch.autograd.grad(out.loss, params, retain_graph=True)
    trl_grads = torch.autograd.grad(trl_loss, params)
    for g_mipo, g_trl in zip(mipo_grads, trl_grads, strict=True):
        assert_close(g_mipo, g_trl, rtol=1e-4, atol=1e-6)
