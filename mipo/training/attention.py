r"""Which attention implementation a run's models use, and attention over packed rows.

``TrainConfig.attn_implementation`` names Hugging Face's attention backend:

========================  ==========================================================
``auto`` (default)        ``flash_attention_2`` on CUDA in ``bf16`` when the
                          ``flash_attn`` package is installed, else ``sdpa``
``sdpa``                  ``torch.nn.functional.scaled_dot_product_attention``
``eager``                 the model's own matmul-softmax-matmul
``flash_attention_2``     the ``flash_attn`` kernels (CUDA only)
``flex_attention``        ``torch.nn.attention.flex_attention`` (CUDA: torch has
                          no flex-attention backward on CPU)
========================  ==========================================================

**Padding-free packing** (``TrainConfig.padding_free``, :mod:`mipo.training.packing`)
puts the ``S`` sequences of a micro-batch into one row of ``N`` tokens whose
``position_ids`` restart at 0 for every sequence. Attention must then stay
within each sequence. How each implementation does it:

* ``flash_attention_2``: transformers' variable-length path reads the sequence
  boundaries from ``position_ids``; no mask at all.
* ``flex_attention``: a block-sparse document mask (``BlockMask``), never a
  dense one.
* ``sdpa``: transformers would build a dense ``[1, 1, N, N]`` block-diagonal
  mask, which is quadratic in the whole pack and rules out the fused kernels.
  mipo instead switches a model that packs to :data:`PACKED_SDPA`: the same SDPA
  call, made once per packed sequence with ``is_causal=True`` (fused kernels
  allowed, cost $\sum_k n_k^2$, no mask), and exactly ``sdpa`` on every input
  that is not a packed row (padded batches, generation).
* ``eager``: refused with padding-free packing (it would build the dense mask).
"""

import importlib.util
import weakref
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor, nn

ATTENTION_IMPLEMENTATIONS = (
    "auto",
    "sdpa",
    "eager",
    "flash_attention_2",
    "flex_attention",
)
"""The values of ``TrainConfig.attn_implementation``."""

PACKED_SDPA = "mipo_packed_sdpa"
"""The attention implementation mipo registers with transformers: ``sdpa`` run
once per sequence of a packed row."""

_VARLEN = ("flash_attention_2", "flash_attention_3", "flex_attention", PACKED_SDPA)
"""Implementations that attend within each packed sequence without a dense mask."""


def resolve_attention(
    name: str, *, device: torch.device, precision: str = "fp32"
) -> str:
    """The implementation a run loads its models with; refuses one this
    machine cannot run, naming the setting."""
    if name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"TrainConfig.attn_implementation: expected one of "
            f"{', '.join(ATTENTION_IMPLEMENTATIONS)}, got {name!r}"
        )
    cuda = device.type == "cuda"
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if name == "auto":
        return (
            "flash_attention_2"
            if cuda and has_flash and precision == "bf16"
            else "sdpa"
        )
    if name == "flash_attention_2" and not (cuda and has_flash):
        raise ValueError(
            "TrainConfig.attn_implementation='flash_attention_2': needs a CUDA device "
            "and the flash_attn package (pip install flash-attn); use 'sdpa' here"
        )
    if name == "flex_attention" and not cuda:
        raise ValueError(
            "TrainConfig.attn_implementation='flex_attention': torch has no "
            "flex-attention backward on CPU; use 'sdpa' here"
        )
    return name


def check_packable(name: str) -> None:
    """Refuse padding-free packing with an implementation that would attend
    over the pack through a dense ``[N, N]`` mask."""
    if name == "eager":
        raise ValueError(
            "TrainConfig.padding_free: the 'eager' attention implementation would "
            "build a dense [N, N] mask over the whole packed row; use "
            "attn_implementation='sdpa' (mipo runs it per packed sequence), "
            "'flash_attention_2' or 'flex_attention', or padding_free=false"
        )


def _unwrapped(model: nn.Module) -> nn.Module:
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def prepare_packed_attention(model: nn.Module) -> None:
    """Make ``model`` attend within each sequence of a packed row without a
    dense mask: ``sdpa`` becomes :data:`PACKED_SDPA` (equal on every other
    input); ``flash_attention_*`` and ``flex_attention`` already do; anything
    else is refused. Idempotent and cheap (called on every packed build)."""
    inner = _unwrapped(model)
    name = inner.config._attn_implementation
    if name in _VARLEN:
        return
    check_packable(name)
    if name != "sdpa":
        raise ValueError(
            f"padding_free: attention implementation {name!r} has no packed path "
            f"in mipo; use 'sdpa', 'flash_attention_2' or 'flex_attention'"
        )
    _refuse_local_attention(inner.config)
    register_packed_sdpa()
    inner.set_attn_implementation(PACKED_SDPA)


def _refuse_local_attention(config: Any) -> None:
    """Per-sequence SDPA is plain causal attention; a model with sliding-window
    or otherwise local layers needs transformers' own masks."""
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    sliding = getattr(config, "sliding_window", None) and getattr(
        config, "use_sliding_window", True
    )
    if layer_types != {"full_attention"} or sliding:
        raise ValueError(
            f"padding_free with sdpa: {type(config).__name__} has local attention "
            f"layers (layer_types={sorted(layer_types)}, sliding_window="
            f"{getattr(config, 'sliding_window', None)}); use "
            f"attn_implementation='flash_attention_2' or 'flex_attention'"
        )


# -- the packed SDPA implementation ------------------------------------------------

_SEGMENTS: dict[str, Any] = {"positions": None, "lengths": ()}


def remember_segments(
    position_ids: Int[Tensor, "1 packed"], lengths: tuple[int, ...]
) -> None:
    """Record the sequence lengths of the packed row whose positions are
    ``position_ids`` (known on the host when packing), so that attention reads
    them without a device-to-host copy in every layer."""
    _SEGMENTS["positions"] = weakref.ref(position_ids)
    _SEGMENTS["lengths"] = tuple(lengths)


def segment_lengths(position_ids: Int[Tensor, "1 packed"]) -> tuple[int, ...]:
    """Lengths of the sequences of one packed row: a new sequence starts
    wherever the position does not follow the previous one."""
    known = _SEGMENTS["positions"]
    if known is not None and known() is position_ids:
        return _SEGMENTS["lengths"]
    row = position_ids.reshape(-1)
    starts = torch.ones_like(row, dtype=torch.bool)
    starts[1:] = row[1:] != row[:-1] + 1
    index = torch.cat([starts.nonzero().flatten(), row.new_tensor([row.numel()])])
    lengths = tuple(int(n) for n in index.diff().tolist())
    remember_segments(position_ids, lengths)
    return lengths


def packed_sdpa_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """transformers' ``sdpa`` attention, once per sequence of a packed row.

    A row is packed when it comes without a mask, with ``position_ids`` that
    restart, and with as many keys as queries (no cache); each sequence then
    attends causally to itself alone. Any other input goes to ``sdpa`` as is.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    positions = kwargs.get("position_ids")
    packed = (
        attention_mask is None
        and positions is not None
        and query.shape[0] == 1
        and query.shape[2] == key.shape[2]
    )
    lengths = segment_lengths(positions) if packed else ()
    if len(lengths) <= 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, **kwargs
        )
    outputs = []
    start = 0
    for length in lengths:
        part = slice(start, start + length)
        start += length
        out, _ = sdpa_attention_forward(
            module,
            query[:, :, part],
            key[:, :, part],
            value[:, :, part],
            None,
            is_causal=True,
            **kwargs,
        )
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def packed_sdpa_mask(*args: Any, **kwargs: Any) -> Tensor | None:
    """transformers' ``sdpa`` mask, except that a full-length causal row without
    a padding mask gets none: plain rows then run SDPA with ``is_causal``, and
    packed rows go through :func:`packed_sdpa_forward` instead of a dense
    block-diagonal mask."""
    from transformers.masking_utils import sdpa_mask

    plain = (
        kwargs.get("attention_mask") is None
        and kwargs.get("q_offset", 0) == 0
        and kwargs.get("kv_offset", 0) == 0
        and kwargs.get("q_length") == kwargs.get("kv_length")
    )
    return None if plain else sdpa_mask(*args, **kwargs)


def register_packed_sdpa() -> None:
    """Register :data:`PACKED_SDPA` with transformers (attention and mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


__all__ = [
    "ATTENTION_IMPLEMENTATIONS",
    "PACKED_SDPA",
    "check_packable",
    "packed_sdpa_forward",
    "packed_sdpa_mask",
    "prepare_packed_attention",
    "register_packed_sdpa",
    "remember_segments",
    "resolve_attention",
    "segment_lengths",
]
