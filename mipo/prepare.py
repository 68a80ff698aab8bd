"""Data for a run: load, split, encode, batch in a seeded order, and (for
``reference="precomputed"``) the cached reference token log-probs.

Every pair gets a global index (training pairs first, then held-out pairs), so a
batch can look its cached reference log-probs up. The order of epoch ``e`` is a
permutation seeded by ``seed + e``: a resumed run replays it and skips the
micro-batches it had consumed.
"""

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, final

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from mipo.config import TrainConfig
from mipo.logps import IGNORE_INDEX, final_hidden_states, token_stats


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class RunData:
    """Encoded pairs of one run.

    Args:
        train: encoded training pairs (global indices ``0..len(train)-1``).
        eval: encoded held-out pairs (global indices after the training pairs).
        eval_records: the held-out :class:`PreferenceRecord` objects (gold task).
    """

    train: list[Any]
    eval: list[Any]
    eval_records: list[Any]


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class IndexedBatch:
    """A collated micro-batch and the global indices of its pairs."""

    indices: Tensor
    tensors: Any

    def to(self, device: torch.device) -> "IndexedBatch":
        return IndexedBatch(indices=self.indices, tensors=self.tensors.to(device))


def load_run_data(config: TrainConfig, tokenizer: Any) -> RunData:
    """Load ``config.dataset``, split it (seeded) and encode both parts."""
    from mipo.data.load import load_records
    from mipo.data.split import train_eval_split
    from mipo.data.tokenize import encode_record

    records = load_records(
        config.dataset, max_examples=config.max_examples, seed=config.seed
    )
    if config.swap_pairs:
        records = [swap_record(record) for record in records]
    if config.eval_fraction > 0:
        train_records, eval_records = train_eval_split(
            records, config.eval_fraction, config.seed
        )
    else:
        train_records, eval_records = list(records), []
    if config.eval_max_examples:
        eval_records = eval_records[: config.eval_max_examples]
    if not train_records:
        raise ValueError(
            f"TrainConfig.dataset={config.dataset!r}: no training pairs left after "
            f"the split (eval_fraction={config.eval_fraction})"
        )

    def encode(record: Any) -> Any:
        return encode_record(
            record,
            tokenizer,
            max_length=config.max_length,
            max_prompt_length=config.max_prompt_length,
        )

    return RunData(
        train=[encode(r) for r in train_records],
        eval=[encode(r) for r in eval_records],
        eval_records=eval_records,
    )


def swap_record(record: Any) -> Any:
    """The pair with chosen and rejected exchanged (and their weight columns): the
    data of TIS-DPO's reverse DPO model (construction 3)."""
    import dataclasses

    return dataclasses.replace(
        record,
        chosen=record.rejected,
        rejected=record.chosen,
        chosen_token_weights=record.rejected_token_weights,
        rejected_token_weights=record.chosen_token_weights,
        chosen_kl_weights=record.rejected_kl_weights,
        rejected_kl_weights=record.chosen_kl_weights,
    )


class _ListSampler(Sampler[int]):
    def __init__(self, order: list[int]) -> None:
        self.order = order

    def __iter__(self) -> Any:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def _collate(items: list[tuple[int, Any]], *, pad_token_id: int) -> IndexedBatch:
    from mipo.data.collate import collate

    indices = torch.tensor([index for index, _ in items], dtype=torch.long)
    return IndexedBatch(
        indices=indices,
        tensors=collate([pair for _, pair in items], pad_token_id=pad_token_id),
    )


def make_loader(
    pairs: list[Any],
    *,
    batch_size: int,
    pad_token_id: int,
    offset: int = 0,
    shuffle_seed: int | None = None,
) -> DataLoader:
    """Batches of ``(global index, pair)``; shuffled by ``shuffle_seed`` if given."""
    items = [(offset + i, pair) for i, pair in enumerate(pairs)]
    order = list(range(len(items)))
    if shuffle_seed is not None:
        generator = torch.Generator().manual_seed(shuffle_seed)
        order = torch.randperm(len(items), generator=generator).tolist()
    return DataLoader(
        items,
        batch_size=batch_size,
        sampler=_ListSampler(order),
        collate_fn=functools.partial(_collate, pad_token_id=pad_token_id),
    )


def cache_key(config: TrainConfig, model_path: str, data: RunData) -> str:
    """Hash of the model files, the lengths and every encoded token id."""
    digest = hashlib.sha256()
    model_dir = Path(model_path)
    if model_dir.is_dir():
        for path in sorted(model_dir.glob("*.safetensors")) + sorted(
            model_dir.glob("*.bin")
        ):
            stat = path.stat()
            digest.update(
                f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
            )
    else:
        digest.update(model_path.encode())
    digest.update(f"{config.max_length}:{config.max_prompt_length}".encode())
    for pair in data.train + data.eval:
        digest.update(
            json.dumps([pair.prompt_ids, pair.chosen_ids, pair.rejected_ids]).encode()
        )
    return digest.hexdigest()[:20]


def compute_reference_logps(
    model: torch.nn.Module,
    data: RunData,
    *,
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
    chunk_size: int | None,
) -> dict[int, tuple[Tensor, Tensor]]:
    """One pass of the initial policy (= the reference) over every pair: global
    index -> (chosen, rejected) log-probs of the completion tokens, in order."""
    was_training = model.training
    model.eval()
    out: dict[int, tuple[Tensor, Tensor]] = {}
    loaders = (
        make_loader(data.train, batch_size=batch_size, pad_token_id=pad_token_id),
        make_loader(
            data.eval,
            batch_size=batch_size,
            pad_token_id=pad_token_id,
            offset=len(data.train),
        ),
    )
    head = model.get_output_embeddings()
    try:
        with torch.no_grad():
            for loader in loaders:
                for batch in loader:
                    tensors = batch.tensors.to(device)
                    per_side = []
                    for side in (tensors.chosen, tensors.rejected):
                        hidden = final_hidden_states(
                            model, side.input_ids, side.attention_mask
                        )
                        stats = token_stats(
                            hidden, head, side.labels, chunk_size=chunk_size
                        )
                        per_side.append(
                            [
                                row[mask].cpu()
                                for row, mask in zip(
                                    stats.policy_logps,
                                    stats.response_mask,
                                    strict=True,
                                )
                            ]
                        )
                    for row, index in enumerate(batch.indices.tolist()):
                        out[index] = (per_side[0][row], per_side[1][row])
    finally:
        model.train(was_training)
    return out


def lookup_reference(
    cache: dict[int, tuple[Tensor, Tensor]], batch: IndexedBatch
) -> tuple[Tensor, Tensor]:
    """Cached reference log-probs of a batch on the shifted axis, zeros outside
    the response."""
    result = []
    for side_index, side in enumerate((batch.tensors.chosen, batch.tensors.rejected)):
        mask = side.labels[:, 1:] != IGNORE_INDEX
        rows = [cache[i][side_index] for i in batch.indices.tolist()]
        values = torch.cat(rows).to(mask.device)
        if values.numel() != int(mask.sum()):
            raise ValueError(
                "precomputed reference log-probs do not match the batch's response "
                "tokens; delete the reference cache and rerun"
            )
        result.append(
            torch.zeros(
                mask.shape, dtype=values.dtype, device=mask.device
            ).masked_scatter(mask, values)
        )
    return result[0], result[1]


__all__ = [
    "IndexedBatch",
    "RunData",
    "cache_key",
    "compute_reference_logps",
    "load_run_data",
    "lookup_reference",
    "make_loader",
]
