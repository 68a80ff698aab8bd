r"""The precomputed reference: token log-probs of the initial policy, computed
once per data set and model, cached on disk, and read back instead of a
reference forward (``TrainConfig.reference="precomputed"``).

A run declares it through its settings rather than through a primitive
(:func:`mipo.training.setup.config_services`); the objective may then read only
reference token log-probs (the table of needs marks what a cache can serve).
The cache lives in ``{output_dir}/.reference_cache/{key}.pt``, ``key`` a hash of
the model files, the lengths, the precision, the attention implementation and
every encoded token id. Under several processes each computes a share of the
batches; the main process writes the union, which every process then reads.

The log-probs are computed in the run's precision
(:func:`mipo.training.precision.autocast`), as the policy's are, so that at the
first step $\log\pi_\theta - \log\pi_{\mathrm{ref}}$ is 0 up to the rounding of
batch shapes in ``bf16`` as in ``fp32``. Once loaded, the cache is one flat
tensor on the run's device, checked against the data's response lengths once;
each batch reads its rows by index with tensor operations alone (no host sync,
no loop over rows).
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import final

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from mipo.needs import Need
from mipo.services import AbstractServiceSpec
from mipo.training.config import TrainConfig
from mipo.training.distributed import gather_lists
from mipo.training.loaders import IndexedBatch, RunData, make_loader
from mipo.training.logps import IGNORE_INDEX, final_hidden_states, token_stats
from mipo.training.models import model_attention
from mipo.training.precision import autocast
from mipo.training.services.base import Forward, Models, Service, ServiceSetup

Cache = dict[int, tuple[Tensor, Tensor]]
"""Global pair index -> (chosen, rejected) response-token log-probs, in order."""


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ReferenceCache(AbstractServiceSpec):
    """Reference token log-probs read from the run's cache."""

    @property
    def provides(self) -> frozenset[Need]:
        return frozenset({Need.REFERENCE_LOGPS})


def cache_key(
    config: TrainConfig, model_path: str, data: RunData, attention: str = "sdpa"
) -> str:
    """Hash of the model files, the lengths, the precision, the attention
    implementation and every encoded token id."""
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
    digest.update(f"precision={config.precision}:attention={attention}".encode())
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
    part: tuple[int, int] = (0, 1),
    precision: str = "fp32",
) -> dict[int, tuple[Tensor, Tensor]]:
    """One pass of the initial policy (= the reference) over every pair, in the
    run's ``precision``: global index -> (chosen, rejected) log-probs of the
    completion tokens, in order (float32). ``part=(k, n)`` computes only every
    ``n``-th batch from the ``k``-th (the share of process ``k`` of ``n``; the
    batches are those of one process, so the union of the parts equals the
    whole)."""
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
    batches = (batch for loader in loaders for batch in loader)
    try:
        with torch.no_grad(), autocast(precision, device):
            for number, batch in enumerate(batches):
                if number % part[1] != part[0]:
                    continue
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
                            row[mask].float().cpu()
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


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class CachedLogps:
    """A :data:`Cache` as tensors: every cached log-prob in one flat tensor
    (pair by pair, chosen then rejected) with each side's start and length.

    Args:
        values: ``[tokens]`` the cached log-probs.
        starts: ``[pairs, 2]`` where each pair's chosen (0) and rejected (1)
            log-probs start in ``values`` (-1: not cached).
        lengths: ``[pairs, 2]`` how many there are.
    """

    values: Tensor
    starts: Tensor
    lengths: Tensor

    @classmethod
    def from_cache(cls, cache: Cache) -> "CachedLogps":
        """Flatten ``cache`` (global indices may have gaps)."""
        pairs = max(cache, default=-1) + 1
        starts = torch.full((pairs, 2), -1, dtype=torch.long)
        lengths = torch.zeros((pairs, 2), dtype=torch.long)
        parts, offset = [], 0
        for index in sorted(cache):
            for side, values in enumerate(cache[index]):
                starts[index, side], lengths[index, side] = offset, values.numel()
                parts.append(values.reshape(-1).float())
                offset += values.numel()
        values = torch.cat(parts) if parts else torch.zeros(0)
        return cls(values=values, starts=starts, lengths=lengths)

    def to(self, device: torch.device) -> "CachedLogps":
        return CachedLogps(
            values=self.values.to(device),
            starts=self.starts.to(device),
            lengths=self.lengths.to(device),
        )

    def lookup(
        self, indices: Int[Tensor, " batch"], mask: Bool[Tensor, "batch seq"], side: int
    ) -> Float[Tensor, "batch seq"]:
        """Side ``side``'s cached log-probs of the pairs ``indices`` placed on
        the ``True`` positions of ``mask``, in order; zeros elsewhere."""
        indices = indices.to(self.starts.device)
        rank = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        flat = self.starts[indices, side].unsqueeze(-1) + rank
        gathered = self.values[flat.clamp(0, max(self.values.numel() - 1, 0))]
        return torch.where(mask, gathered, torch.zeros_like(gathered))


def lookup_reference(cache: CachedLogps, batch: IndexedBatch) -> tuple[Tensor, Tensor]:
    """Cached reference log-probs of a batch on the shifted axis, zeros outside
    the response (no host sync)."""
    if batch.indices is None:
        raise ValueError("the reference cache needs the pairs' global indices")
    result = []
    for side_index, side in enumerate((batch.tensors.chosen, batch.tensors.rejected)):
        mask = side.labels[:, 1:] != IGNORE_INDEX
        result.append(cache.lookup(batch.indices, mask, side_index))
    return result[0], result[1]


def check_cache(cache: Cache, data: RunData) -> None:
    """Refuse a cache whose response lengths differ from the data's (a cache of
    other data, or of another truncation), once, when it is loaded."""
    pairs = [*data.train, *data.eval]
    for index, pair in enumerate(pairs):
        cached = cache.get(index)
        want = [
            len(ids) - (len(pair.prompt_ids) == 0)
            for ids in (pair.chosen_ids, pair.rejected_ids)
        ]
        if cached is None or [values.numel() for values in cached] != want:
            raise ValueError(
                f"precomputed reference log-probs do not match the response tokens of "
                f"pair {index}; delete the reference cache and rerun"
            )


def cache_path(
    config: TrainConfig, model_path: str, data: RunData, attention: str = "sdpa"
) -> Path:
    """Where the cache of this run's model, data and precision lives."""
    key = cache_key(config, model_path, data, attention)
    return Path(config.output_dir) / ".reference_cache" / f"{key}.pt"


class ReferenceCacheService(Service, spec=ReferenceCache):
    """Loads (or, when training, computes and writes) the cache, then fills
    ``reference_logps`` of the chosen and rejected rows of every batch."""

    description = "reference cache"

    def __init__(self, spec: ReferenceCache, setup: ServiceSetup | None) -> None:
        super().__init__(spec, setup)
        self.table = CachedLogps.from_cache({})
        if setup is not None:
            cache = _load_or_compute(setup)
            check_cache(cache, setup.data)
            self.table = CachedLogps.from_cache(cache).to(setup.device)

    @classmethod
    def from_cache(cls, cache: Cache) -> "ReferenceCacheService":
        """A service reading an in-memory ``cache`` (tests, tools)."""
        service = cls(ReferenceCache(), None)
        service.table = CachedLogps.from_cache(cache)
        return service

    def after_forward(
        self,
        forward: Forward,
        batch: IndexedBatch,
        models: Models,  # noqa: ARG002
    ) -> dict[Need, Tensor]:
        table = self.table
        if table.values.device != forward.stats.policy_logps.device:
            self.table = table = table.to(forward.stats.policy_logps.device)
        chosen, rejected = lookup_reference(table, batch)
        length = forward.stacked.length
        dtype = forward.stats.policy_logps.dtype
        values = [_pad_to(v.to(dtype), length) for v in (chosen, rejected)]
        return {Need.REFERENCE_LOGPS: torch.cat(values)}


def _load_or_compute(setup: ServiceSetup) -> Cache:
    attention = model_attention(setup.config, setup.device)
    path = cache_path(setup.config, setup.model_path, setup.data, attention)
    if not path.is_file():
        if not setup.training:
            raise FileNotFoundError(f"{path}: the run's reference cache is gone")
        accelerator = setup.accelerator
        # every process computes its share of the batches (the models are not
        # sharded yet); the main process writes the union
        part = (0, 1)
        if accelerator is not None:
            part = (accelerator.process_index, accelerator.num_processes)
        cache = compute_reference_logps(
            setup.models.policy,
            setup.data,
            batch_size=setup.config.batch_size,
            pad_token_id=setup.models.pad_token_id,
            device=setup.device,
            chunk_size=setup.config.logps_chunk_size or None,
            part=part,
            precision=setup.config.precision,
        )
        cache = dict(gather_lists(accelerator, list(cache.items())))
        if accelerator is None or accelerator.is_main_process:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save(cache, tmp)
            tmp.replace(path)
        if accelerator is not None:
            accelerator.wait_for_everyone()
    return torch.load(path, map_location="cpu", weights_only=False)


def _pad_to(values: Tensor, length: int) -> Tensor:
    extra = length - values.shape[1]
    if extra <= 0:
        return values[:, :length]
    return torch.cat([values, values.new_zeros(values.shape[0], extra)], dim=1)


__all__ = [
    "CachedLogps",
    "ReferenceCache",
    "ReferenceCacheService",
    "cache_key",
    "cache_path",
    "check_cache",
    "compute_reference_logps",
    "lookup_reference",
]
