"""Padding-free packing of a batch of sequences into one row, and unpacking.

A right-padded batch of ``S`` sequences (chosen and rejected of every pair, say)
with lengths :math:`n_1, \\dots, n_S` becomes one row of
:math:`N = \\sum_k n_k` tokens, with ``position_ids`` restarting at 0 for every
sequence:

.. code-block:: text

    input_ids     [a0 a1 a2 | b0 b1 | c0 c1 c2 c3]
    position_ids  [ 0  1  2 |  0  1 |  0  1  2  3]

No compute is spent on padding. Attention must not cross sequence boundaries.
Hugging Face ``transformers`` (5.x) detects packing from ``position_ids``
whenever the 2-D ``attention_mask`` is ``None``, so a packed forward is
``final_hidden_states(model, packed.input_ids, None,
position_ids=packed.position_ids)``. Flash-attention then runs its
variable-length kernels and flex attention a block-sparse document mask;
transformers' SDPA would build a dense ``[N, N]`` block-diagonal mask, so the
batch builder switches an SDPA model to mipo's per-sequence SDPA first and
refuses eager attention (:mod:`mipo.training.attention`). Packing reads the
sequence lengths to the host once (:func:`pack_sequences`), and attention reuses
them in every layer.

The causal shift must not cross a boundary either: the last token of one
sequence would otherwise "predict" the first token of the next. The packed
``labels`` therefore set the first token of every sequence to ``-100`` (it is
never a label anyway: nothing predicts it), so
:func:`mipo.training.logps.token_stats` on the packed row masks the cross-boundary
positions, and :meth:`PackedSequences.unpack_shifted` maps its ``[1, N-1]``
outputs back to ``[S, L-1]``.

References:
    OpenRLHF's ``--ds.packing_samples`` (packed DPO); Hugging Face blog
    "Improving Hugging Face Training Efficiency Through Packing with Flash
    Attention 2" (2024) for ``position_ids`` packing.
"""

import dataclasses
from dataclasses import dataclass
from typing import final

import torch
from jaxtyping import Bool, Int, Shaped
from torch import Tensor

from mipo.training.attention import remember_segments
from mipo.training.logps import IGNORE_INDEX, TokenStats


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class PackedSequences:
    """One packed row plus the index that maps it back to the padded layout.

    Args:
        input_ids: the ``N`` real tokens of every sequence, concatenated.
        position_ids: position of each token inside its own sequence.
        labels: the sequences' labels, with ``-100`` at every sequence start.
        index: for each padded position ``[s, l]``, its packed position (0 on
            padding, which ``valid`` excludes).
        valid: True on the real (non-padding) tokens of the padded layout.
        lengths: the length of every sequence, in order (on the host).
    """

    input_ids: Int[Tensor, "1 packed"]
    position_ids: Int[Tensor, "1 packed"]
    labels: Int[Tensor, "1 packed"]
    index: Int[Tensor, "sequences length"]
    valid: Bool[Tensor, "sequences length"]
    lengths: tuple[int, ...] = ()

    @property
    def num_tokens(self) -> int:
        """N, the packed length."""
        return self.input_ids.shape[1]

    def unpack(
        self, values: Shaped[Tensor, "1 packed *rest"]
    ) -> Shaped[Tensor, "sequences length *rest"]:
        """Packed per-token values (hidden states, ...) back to the right-padded
        layout, zeros on padding; differentiable."""
        gathered = values[0][self.index]
        keep = self.valid.reshape(*self.valid.shape, *(1,) * (values.dim() - 2))
        return torch.where(keep, gathered, torch.zeros_like(gathered))

    def unpack_shifted(
        self, values: Shaped[Tensor, "1 shifted"]
    ) -> Shaped[Tensor, "sequences shifted_length"]:
        """Values on the packed shifted axis (``[1, N-1]``, position ``j`` about
        the label at ``j+1``) back to the padded shifted axis ``[S, L-1]``.

        Position ``t`` of sequence ``s`` is about its token ``t+1``, i.e. packed
        token ``index[s, t+1]``, i.e. packed shifted position ``index[s, t+1] - 1``.
        """
        valid = self.valid[:, 1:]
        index = (self.index[:, 1:] - 1).clamp(min=0)
        gathered = values[0][index]
        return torch.where(valid, gathered, torch.zeros_like(gathered))

    def unpack_token_stats(self, stats: TokenStats) -> TokenStats:
        """:func:`mipo.training.logps.token_stats` of the packed row, unpacked to
        ``[S, L-1]``; equal to the stats of the padded batch."""

        def unpack(values: Tensor | None) -> Tensor | None:
            return None if values is None else self.unpack_shifted(values)

        # every field is a per-token tensor on the shifted axis (or None)
        return dataclasses.replace(
            stats,
            **{
                field.name: unpack(getattr(stats, field.name))
                for field in dataclasses.fields(stats)
            },
        )


def pack_sequences(
    input_ids: Int[Tensor, "sequences length"],
    attention_mask: Int[Tensor, "sequences length"] | Bool[Tensor, "sequences length"],
    labels: Int[Tensor, "sequences length"],
) -> PackedSequences:
    """Pack right-padded sequences into one row with restarting ``position_ids``.

    Args:
        input_ids: token ids, right-padded.
        attention_mask: 1 on real tokens; every row must be a prefix of ones
            followed by zeros (right padding) and hold at least one token.
        labels: unshifted labels, ``-100`` on prompt and padding.

    Returns:
        The packed row and the index to unpack it.
    """
    valid = attention_mask.bool()
    count = valid.shape[0]
    lengths = valid.sum(-1)
    positions = torch.arange(valid.shape[1], device=valid.device)
    right_padded = (valid == (positions < lengths.unsqueeze(-1))).all(-1)
    # the one device-to-host copy of packing: the lengths and the layout check
    host = torch.cat([lengths, right_padded.long()]).tolist()
    sizes, flags = host[:count], host[count:]
    bad = [row for row, flag in enumerate(flags) if not flag]
    if bad:
        raise ValueError(
            f"pack_sequences: attention_mask rows {bad} are not right-padded (ones "
            f"then zeros); left-padded prompts cannot be packed"
        )
    empty = [row for row, size in enumerate(sizes) if size == 0]
    if empty:
        raise ValueError(f"pack_sequences: attention_mask rows {empty} are empty")
    total = sum(sizes)
    starts = torch.cumsum(lengths, 0) - lengths
    rows = torch.repeat_interleave(
        torch.arange(count, device=valid.device), lengths, output_size=total
    )
    offsets = torch.arange(total, device=valid.device) - starts[rows]
    index = torch.where(valid, starts.unsqueeze(-1) + positions, 0)
    packed_labels = labels[rows, offsets].clone()
    # Nothing predicts a sequence's first token; masking it keeps the causal
    # shift from pairing one sequence's last state with the next one's start.
    packed_labels[starts] = IGNORE_INDEX
    position_ids = offsets.unsqueeze(0)
    remember_segments(position_ids, tuple(sizes))
    return PackedSequences(
        input_ids=input_ids[rows, offsets].unsqueeze(0),
        position_ids=position_ids,
        labels=packed_labels.unsqueeze(0),
        index=index,
        valid=valid,
        lengths=tuple(sizes),
    )


__all__ = ["PackedSequences", "pack_sequences"]
