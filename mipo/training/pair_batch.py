"""Rows and a model in, the token-level :class:`~mipo.PairBatch` an objective
reads out: the trainer's batch building for use from Python.

>>> batch = pair_batch(objective, model, tokenizer, rows)   # doctest: +SKIP
>>> objective(batch).loss.backward()                         # doctest: +SKIP

The rows are any data mipo reads (TRL standard or conversational dicts, a file
path, a data set name); they are encoded, collated and run through the same
:class:`~mipo.training.batching.BatchBuilder` and services as training, so the
batch carries exactly the fields the objective needs, and no more.
"""

import copy
from typing import Any

import torch
from torch import nn

from mipo.batch import PairBatch
from mipo.objective import Objective
from mipo.training.config import TrainConfig


def pair_batch(
    objective: Objective,
    model: nn.Module,
    tokenizer: Any,
    rows: Any,
    reference: nn.Module | None = None,
    *,
    max_length: int = 512,
    max_prompt_length: int = 256,
    chunk_size: int | None = None,
) -> PairBatch:
    """The :class:`~mipo.PairBatch` of ``rows`` for ``objective``.

    Args:
        objective: decides which fields are computed (``objective.needs``).
        model: the policy, a Hugging Face causal LM; its forward keeps its
            gradient, so ``objective(batch).loss.backward()`` trains it.
        tokenizer: its tokenizer (a pad token is set from EOS when it has none).
        rows: preference pairs in any format :func:`mipo.data.load.load_records`
            reads, e.g. ``[{"prompt": ..., "chosen": ..., "rejected": ...}]``.
        reference: the reference model; ``None``: a frozen copy of ``model`` as
            it is now (made only when the objective reads a reference).
        max_length: longest prompt + response in tokens.
        max_prompt_length: longest prompt in tokens after truncation.
        chunk_size: rows per chunk of the chunked log-prob path (``None``: eager).
    """
    from mipo.data.collate import collate
    from mipo.data.load import load_records
    from mipo.data.tokenize import encode_record
    from mipo.training.batching import BatchBuilder
    from mipo.training.models import FrozenCopyReference, reads_reference
    from mipo.training.services import Models, ServiceSetup, build_services

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = [
        encode_record(
            record,
            tokenizer,
            max_length=max_length,
            max_prompt_length=max_prompt_length,
        )
        for record in load_records(rows)
    ]
    device = next(model.parameters()).device
    tensors = collate(encoded, pad_token_id=tokenizer.pad_token_id).to(device)
    frozen = None
    if reads_reference(objective.needs):
        source = copy.deepcopy(model) if reference is None else reference
        frozen = FrozenCopyReference(source.eval())
    models = Models(
        policy=model,
        reference=frozen,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = TrainConfig(max_length=max_length, max_prompt_length=max_prompt_length)
    setup = ServiceSetup(config=config, models=models, device=device)
    services = build_services(objective.services, setup)
    builder = BatchBuilder(
        needs=objective.needs, services=services, chunk_size=chunk_size
    )
    with torch.enable_grad():
        return builder(models, tensors)


__all__ = ["pair_batch"]
