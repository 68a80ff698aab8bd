"""Data for a run: load, split, encode, batch in a seeded order.

Every pair gets a global index (training pairs first, then held-out pairs), so a
batch can look its cached reference log-probs up
(:mod:`mipo.training.services.reference_cache`). The order of epoch ``e`` is a
permutation seeded by ``seed + e``: a resumed run replays it and skips the
micro-batches it had consumed.
"""

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, final

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from mipo.errors import ConfigError, DataWarning
from mipo.needs import Need
from mipo.training.config import TrainConfig


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
    """A collated micro-batch and the global indices of its pairs (``None``
    for pairs that are not part of a run's data)."""

    indices: Tensor | None
    tensors: Any

    def to(self, device: torch.device) -> "IndexedBatch":
        return IndexedBatch(indices=self.indices, tensors=self.tensors.to(device))


def load_run_data(
    config: TrainConfig,
    tokenizer: Any,
    *,
    needs: frozenset[Need] = frozenset(),
    warn: Callable[[DataWarning], None] | None = None,
) -> RunData:
    """Load ``config.dataset`` (columns renamed by ``config.column_map``), split
    it (seeded) or take the held-out pairs from ``config.eval_dataset``, and
    encode both parts.

    Every row is checked (:func:`mipo.data.validate.validate_dataset`): the weight
    columns ``needs`` read must be on every row; ``warn`` receives the
    :class:`~mipo.errors.DataWarning` values (default: dropped).
    """
    from mipo.data.columns import parse_column_map
    from mipo.data.split import train_eval_split
    from mipo.data.tokenize import encode_record

    column_map = parse_column_map(config.column_map)
    check = _Check(needs=needs, warn=warn or _drop, column_map=column_map)
    records = _records(config, config.dataset, check, config.max_examples)
    if config.eval_dataset:
        train_records = records
        eval_records = _records(config, config.eval_dataset, check, 0, records)
    elif config.eval_fraction > 0:
        if max(1, round(len(records) * config.eval_fraction)) >= len(records):
            raise ConfigError(
                f"--train.eval_fraction={config.eval_fraction}: {config.dataset} has "
                f"{len(records)} pairs, which leaves none for training; lower it, or "
                "give a separate --train.eval_dataset"
            )
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


@dataclass(frozen=True, kw_only=True)
class _Check:
    """How the data of a run is checked: the needs its columns serve, where
    warnings go, the column map."""

    needs: frozenset[Need]
    warn: Callable[[DataWarning], None]
    column_map: dict[str, str]


def _drop(_warning: DataWarning) -> None:
    return None


def _records(
    config: TrainConfig,
    source: str,
    check: _Check,
    max_examples: int,
    train_records: Sequence[Any] = (),
) -> list[Any]:
    """The checked pairs of ``source``, swapped when ``config.swap_pairs``."""
    from mipo.data.builtin import BUILTIN_PREFIX
    from mipo.data.validate import validate_dataset

    # the built-in tasks are mipo's own generated data: nothing to warn the user of
    quiet = source.startswith(BUILTIN_PREFIX)
    records = validate_dataset(
        source,
        needs=check.needs,
        column_map=check.column_map or None,
        max_examples=max_examples,
        seed=config.seed,
        train_records=train_records,
        warn=_drop if quiet else check.warn,
    )
    if config.swap_pairs:
        records = [swap_record(record) for record in records]
    return records


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


__all__ = ["IndexedBatch", "RunData", "load_run_data", "make_loader"]
