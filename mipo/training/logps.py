"""Per-token log-probabilities and full-vocabulary KLs from final hidden states.

Every quantity lives on the shifted ``seq`` axis of :mod:`mipo.batch`: for an
unshifted sequence of length ``L`` with labels ``labels[:, 0..L-1]``, position
``t`` of the ``[batch, L-1]`` output holds the label ``y_t = labels[:, t+1]``
predicted from the hidden state ``h_t = hidden[:, t]`` (the state
``s_t = (x, y_{<t})`` of ``objective.md``). With logits ``z_t = W h_t + b``:

.. math::

    \\log \\pi_\\theta(y_t \\mid s_t) = z_{t, y_t} - \\log \\sum_v e^{z_{t, v}},

    D^{\\mathrm{fwd}}_t = \\mathrm{KL}(\\pi_{\\mathrm{ref}}(\\cdot|s_t) \\,\\|\\,
        \\pi_\\theta(\\cdot|s_t))
        = \\sum_v \\pi_{\\mathrm{ref}}(v|s_t)
          \\big(\\log \\pi_{\\mathrm{ref}}(v|s_t) - \\log \\pi_\\theta(v|s_t)\\big),

    D^{\\mathrm{rev}}_t = \\mathrm{KL}(\\pi_\\theta(\\cdot|s_t) \\,\\|\\,
        \\pi_{\\mathrm{ref}}(\\cdot|s_t)).

The KLs are TDPO's sequential KL terms (Zeng et al., arXiv 2404.11999, Eq. 12-13).
Positions whose label is ``-100`` (prompt, padding) are zero in every output and
``False`` in ``response_mask``.

With ``policy_stats=True`` both paths also return four detached statistics of
the policy's next-token distribution :math:`p = \\mathrm{softmax}(z_t)` over a
vocabulary of size :math:`V`, computed from the same logits as the log-probs
(accumulated in at least float32):

.. math::

    \\log \\textstyle\\sum_v p_v^2 = \\mathrm{logsumexp}(2 z_t) - 2\\,\\mathrm{logsumexp}(z_t)
        \\quad \\text{(log collision probability; WPO's weight alignment,
        Zhou et al., arXiv 2406.11827, Eq. 2)},

    \\bar z_t = \\tfrac{1}{V}\\textstyle\\sum_v z_{t,v} \\quad \\text{(mean logit)},
    \\qquad
    H_t = -\\textstyle\\sum_v p_v \\log p_v \\quad \\text{(entropy)},
    \\qquad
    \\mathbb{1}[\\arg\\max_v z_{t,v} = y_t] \\quad \\text{(top-1 hit, first maximum)}.

They are what TRL 1.16's fused head returns as ``log_sum_sq_probs``,
``mean_logits``, ``entropy`` and ``is_top1``; the trainer logs the last three
as ``logits/chosen``, ``logits/rejected``, ``entropy`` and
``mean_token_accuracy`` (:mod:`mipo.training.token_metrics`). The chunked path
computes them inside its chunk loop, so they add no ``[rows, vocab]`` tensor
beyond the chunk's own.

Two paths compute the same values and gradients:

* ``chunk_size=None`` (eager): the head is applied to every position and the
  ``[batch, L-1, vocab]`` logits are materialised.
* ``chunk_size=n`` (chunked): the response rows go through the head ``n`` rows
  at a time inside one :class:`torch.autograd.Function` that saves the hidden
  states it was given (not a gathered copy), the head weight and the row
  positions, gathers each chunk's rows from the hidden states, and recomputes
  each chunk's logits in backward. Peak loss-head memory is
  ``O(n * vocab + vocab * hidden)`` on top of the hidden states and their
  gradient, instead of ``O(batch * L * vocab)``.

Under autocast (``torch.autocast`` / accelerate's ``bf16``) both paths compute
the logits in the autocast dtype, as ``F.linear`` does there, and the
log-softmax, the KLs and the gradient accumulation in float32. The chunked
path's backward recomputes the logits in that same dtype and runs its two
matmuls in it, so the gradient is the one of the logits the loss used.
"""

from dataclasses import dataclass
from typing import Any, final

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mipo.typing import TokenLogps, TokenMask, TokenValues

IGNORE_INDEX = -100
"""Label value of prompt and padding positions (Hugging Face convention)."""

# Logit post-processing some causal LMs apply after the head. Skipping it would give
# wrong log-probs, so models that set one are refused with a clear error.
_LOGIT_TRANSFORMS = {
    "final_logit_softcapping": None,  # Gemma 2/3: tanh soft-capping
    "logit_softcapping": None,
    "logit_scale": 1.0,  # Cohere: logits * logit_scale
    "logits_scaling": 1.0,  # Granite: logits / logits_scaling
}


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class TokenStats:
    """Per-token statistics of one batch of sequences, on the shifted axis.

    Args:
        policy_logps: :math:`\\log \\pi_\\theta(y_t|s_t)`, live.
        response_mask: True where the label is not ``-100``.
        reference_logps: :math:`\\log \\pi_{\\mathrm{ref}}(y_t|s_t)`, a constant.
        kl_forward: :math:`D^{\\mathrm{fwd}}_t`, live through the policy only.
        kl_reverse: :math:`D^{\\mathrm{rev}}_t`, live through the policy only.
        log_collision: :math:`\\log \\sum_v \\pi_\\theta(v|s_t)^2`, detached.
        logit_means: the mean logit over the vocabulary, detached.
        entropy: :math:`-\\sum_v \\pi_\\theta(v|s_t) \\log \\pi_\\theta(v|s_t)`,
            detached.
        top1: 1.0 where the label is the first maximum of the logits, else 0.0.

    The last four are set by ``policy_stats=True`` (module docstring).
    """

    policy_logps: TokenLogps
    response_mask: TokenMask
    reference_logps: TokenLogps | None = None
    kl_forward: TokenValues | None = None
    kl_reverse: TokenValues | None = None
    log_collision: TokenValues | None = None
    logit_means: TokenValues | None = None
    entropy: TokenValues | None = None
    top1: TokenValues | None = None


POLICY_STATS = ("log_collision", "logit_means", "entropy", "top1")
"""The :class:`TokenStats` fields ``policy_stats=True`` fills, in the column
order of :func:`distribution_stats`."""


def final_hidden_states(
    model: nn.Module,
    input_ids: Int[Tensor, "batch length"],
    attention_mask: Int[Tensor, "batch length"] | Bool[Tensor, "batch length"] | None,
    *,
    position_ids: Int[Tensor, "batch length"] | None = None,
) -> Float[Tensor, "batch length hidden"]:
    """Last hidden states of a causal LM, after the final norm, without the LM head.

    Works for Hugging Face causal LMs whose body is reachable through
    ``get_decoder()`` (Llama, Qwen, Mistral, GPT-2, ...) and for peft-wrapped ones
    (the body's adapters stay active). The head is ``model.get_output_embeddings()``.

    Args:
        model: a ``*ForCausalLM`` model, optionally wrapped by peft.
        input_ids: token ids.
        attention_mask: 1 on real tokens, 0 on padding; ``None`` when a packed
            batch passes ``position_ids`` (see :mod:`mipo.training.packing`).
        position_ids: optional explicit positions (packed sequences).

    Returns:
        The hidden states the LM head would read.
    """
    causal_lm = _unwrap_peft(model)
    config = getattr(causal_lm, "config", None)
    for name, neutral in _LOGIT_TRANSFORMS.items():
        value = getattr(config, name, neutral)
        if value != neutral:
            raise ValueError(
                f"{type(causal_lm).__name__}: config.{name}={value!r} post-processes "
                f"the logits; mipo.training.logps applies the head alone and does not support it"
            )
    get_decoder = getattr(causal_lm, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    if decoder is None or decoder is causal_lm:
        raise TypeError(
            f"{type(causal_lm).__name__}: cannot find the decoder body "
            f"(get_decoder() returned {type(decoder).__name__}); pass a Hugging Face "
            f"*ForCausalLM model"
        )
    kwargs: dict[str, Any] = {"use_cache": False}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
    return hidden


def _unwrap_peft(model: nn.Module) -> nn.Module:
    # peft's PeftModel keeps the causal LM (with adapters injected) behind
    # get_base_model(); calling its body keeps LoRA layers active.
    get_base_model = getattr(model, "get_base_model", None)
    if callable(get_base_model) and not hasattr(model, "get_decoder"):
        return get_base_model()
    if callable(get_base_model) and type(model).__module__.startswith("peft"):
        return get_base_model()
    return model


def token_stats(
    policy_hidden: Float[Tensor, "batch length hidden"],
    policy_head: nn.Module,
    labels: Int[Tensor, "batch length"],
    *,
    reference_hidden: Float[Tensor, "batch length ref_hidden"] | None = None,
    reference_head: nn.Module | None = None,
    kl_forward: bool = False,
    kl_reverse: bool = False,
    chunk_size: int | None = None,
    policy_stats: bool = False,
) -> TokenStats:
    """Per-token log-probs (and KLs) of ``labels`` from final hidden states.

    Args:
        policy_hidden: policy hidden states of the full (unshifted) sequences.
        policy_head: the policy's output embedding, ``model.get_output_embeddings()``.
        labels: unshifted labels, ``-100`` on prompt and padding.
        reference_hidden: reference hidden states (used without gradient); needed
            for ``reference_logps`` and the KLs.
        reference_head: the reference's output embedding.
        kl_forward: also compute :math:`D^{\\mathrm{fwd}}_t`.
        kl_reverse: also compute :math:`D^{\\mathrm{rev}}_t`.
        chunk_size: ``None`` for the eager path, else the number of response rows
            per chunk of the recomputing chunked path.
        policy_stats: also compute the detached statistics of the policy's
            distribution (:data:`POLICY_STATS`); they change neither the
            log-probs nor any gradient.

    Returns:
        :class:`TokenStats` on the shifted ``[batch, L-1]`` axis; the reference
        fields are set when ``reference_hidden`` is given, the KLs when asked,
        the statistics when ``policy_stats``.
    """
    _check_arguments(
        labels,
        has_reference=reference_hidden is not None,
        has_head=reference_head is not None,
        kls=kl_forward or kl_reverse,
        chunk_size=chunk_size,
    )
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    if chunk_size is None:
        return _eager(
            policy_hidden[:, :-1],
            policy_head,
            targets,
            mask,
            reference_hidden=None
            if reference_hidden is None
            else reference_hidden[:, :-1],
            reference_head=reference_head,
            kl_forward=kl_forward,
            kl_reverse=kl_reverse,
            policy_stats=policy_stats,
        )
    batch_index, seq_index = mask.nonzero(as_tuple=True)
    values = _chunked(
        policy_hidden,
        _linear_params(policy_head, "policy_head"),
        targets[mask],
        (batch_index, seq_index),
        reference_hidden=reference_hidden,
        reference_params=None
        if reference_head is None
        else _linear_params(reference_head, "reference_head"),
        kl_forward=kl_forward,
        kl_reverse=kl_reverse,
        chunk_size=chunk_size,
        policy_stats=policy_stats,
    )
    return _scattered(values, mask)


def _check_arguments(
    labels: Tensor,
    *,
    has_reference: bool,
    has_head: bool,
    kls: bool,
    chunk_size: int | None,
) -> None:
    if has_reference != has_head:
        raise ValueError(
            "token_stats: pass reference_hidden and reference_head together"
        )
    if kls and not has_reference:
        raise ValueError("token_stats: the KLs need reference_hidden/reference_head")
    if labels.shape[1] < 2:
        raise ValueError(
            f"token_stats: labels has {labels.shape[1]} positions; the causal shift "
            f"needs at least 2"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"token_stats: chunk_size must be >= 1, got {chunk_size}")


def _scattered(values: "_RowStats", mask: Tensor) -> TokenStats:
    """The per-response-row values of the chunked path back on the shifted axis
    (zeros off the responses)."""
    dtype = values.logps.dtype

    def scatter(rows: Tensor | None) -> Tensor | None:
        if rows is None:
            return None
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_scatter(
            mask, rows
        )

    columns = [None] * len(POLICY_STATS) if values.stats is None else values.stats.T
    return TokenStats(
        policy_logps=scatter(values.logps),
        response_mask=mask,
        reference_logps=scatter(values.reference_logps),
        kl_forward=scatter(values.kl_forward),
        kl_reverse=scatter(values.kl_reverse),
        **{
            name: scatter(column)
            for name, column in zip(POLICY_STATS, columns, strict=True)
        },
    )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Softmax maths runs in at least float32 (bf16 log-probs lose the gradient
    # signal DPO relies on); float64 stays float64 for the oracle tests.
    return torch.promote_types(dtype, torch.float32)


def _linear_params(head: nn.Module, name: str) -> tuple[Tensor, Tensor | None]:
    if not isinstance(head, nn.Linear):
        raise TypeError(
            f"token_stats: the chunked path needs {name} to be a torch.nn.Linear "
            f"(got {type(head).__name__}); use chunk_size=None for other heads"
        )
    return head.weight, head.bias


def _eager(
    hidden: Tensor,
    head: nn.Module,
    targets: Tensor,
    mask: Tensor,
    *,
    reference_hidden: Tensor | None,
    reference_head: nn.Module | None,
    kl_forward: bool,
    kl_reverse: bool,
    policy_stats: bool,
) -> TokenStats:
    dtype = _compute_dtype(hidden.dtype)
    logits = head(hidden).to(dtype)
    policy_logp_all = F.log_softmax(logits, dim=-1)
    safe_targets = targets.clamp(min=0).unsqueeze(-1)
    zero = torch.zeros((), dtype=dtype, device=hidden.device)

    def masked(values: Tensor) -> Tensor:
        return torch.where(mask, values, zero)

    stats: dict[str, Tensor] = {}
    if policy_stats:
        with torch.no_grad():
            # the response rows' logits, copied (the copy is overwritten)
            columns = distribution_stats(
                logits.detach()[mask], policy_logp_all.detach()[mask], targets[mask]
            )
        stats = {
            name: torch.zeros(
                mask.shape, dtype=dtype, device=mask.device
            ).masked_scatter(mask, column)
            for name, column in zip(POLICY_STATS, columns.unbind(-1), strict=True)
        }
    del logits
    policy_logps = masked(policy_logp_all.gather(-1, safe_targets).squeeze(-1))
    reference_logps = forward = reverse = None
    if reference_hidden is not None and reference_head is not None:
        with torch.no_grad():
            reference_logp_all = F.log_softmax(
                reference_head(reference_hidden).to(dtype), dim=-1
            )
        reference_logps = masked(
            reference_logp_all.gather(-1, safe_targets).squeeze(-1)
        )
        if kl_forward:
            forward = masked(kl_from_logps(reference_logp_all, policy_logp_all))
        if kl_reverse:
            reverse = masked(kl_from_logps(policy_logp_all, reference_logp_all))
    return TokenStats(
        policy_logps=policy_logps,
        response_mask=mask,
        reference_logps=reference_logps,
        kl_forward=forward,
        kl_reverse=reverse,
        **stats,
    )


def distribution_stats(
    logits: Float[Tensor, "*rows vocab"],
    logps: Float[Tensor, "*rows vocab"],
    targets: Int[Tensor, "*rows"],
) -> Float[Tensor, "*rows 4"]:
    """The columns of :data:`POLICY_STATS` per row, from the logits ``z`` and
    their log-softmax (both in the compute dtype; call without gradient).

    **Overwrites** ``logits``, its work buffer: allocating fresh ``[rows, vocab]``
    buffers costs more than the arithmetic on CPU, so the statistics allocate
    none. In order: the mean logit; the top-1 hit (``z_y`` is the row maximum and
    no earlier entry equals it, i.e. :func:`torch.argmax`'s first maximum, as
    TRL's ``is_top1`` counts; a ``-100`` target never hits); then ``z`` becomes
    :math:`p = e^{\\log p}` for :math:`\\log \\sum_v p_v^2 = 2 \\log \\|p\\|_2`
    (equal to :math:`\\mathrm{logsumexp}(2z) - 2\\,\\mathrm{logsumexp}(z)`), and
    :math:`p \\odot \\log p` for the entropy.
    """
    means = logits.mean(-1)
    top1 = _first_maximum_is(logits, targets).to(logits.dtype)
    probs = torch.exp(logps, out=logits)
    collision = 2.0 * torch.linalg.vector_norm(probs, dim=-1).log()
    entropy = -probs.mul_(logps).sum(-1)
    return torch.stack((collision, means, entropy, top1), dim=-1)


def _first_maximum_is(
    logits: Float[Tensor, "*rows vocab"], targets: Int[Tensor, "*rows"]
) -> Bool[Tensor, "*rows"]:
    """Whether each row's first maximum is at ``targets``; overwrites ``logits``.

    The maxima become :math:`v - V` (negative) and every other entry 0, so the
    row minimum is the first maximum's :math:`v - V`: two reductions and one
    in-place product, no ``argmax`` pass and no host sync. (Positions are exact
    in the compute dtype, at least float32, for vocabularies below :math:`2^{24}`.)
    """
    vocab = logits.shape[-1]
    maximum = logits.amax(-1, keepdim=True)
    offsets = torch.arange(vocab, device=logits.device, dtype=logits.dtype) - vocab
    first = logits.eq_(maximum).mul_(offsets).amin(-1) + vocab
    return first.to(targets.dtype) == targets


def kl_from_logps(
    p_logps: Float[Tensor, "*rows vocab"], q_logps: Float[Tensor, "*rows vocab"]
) -> Float[Tensor, "*rows"]:
    """:math:`\\mathrm{KL}(p\\|q) = \\sum_v p_v (\\log p_v - \\log q_v)` per row.

    Terms with :math:`p_v = 0` contribute 0 (the ``0 log 0 = 0`` convention), also
    when :math:`\\log p_v = -\\infty`.
    """
    p = p_logps.exp()
    terms = torch.where(p > 0, p * (p_logps - q_logps), torch.zeros_like(p))
    return terms.sum(-1)


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class _RowStats:
    """Per-row outputs of the chunked path, before scattering to ``[batch, seq]``."""

    logps: Float[Tensor, " rows"]
    reference_logps: Float[Tensor, " rows"] | None
    kl_forward: Float[Tensor, " rows"] | None
    kl_reverse: Float[Tensor, " rows"] | None
    stats: Float[Tensor, "rows 4"] | None


def _head_dtype(hidden: Tensor) -> torch.dtype:
    """The dtype ``F.linear`` computes the logits in here: the autocast dtype when
    autocast is on for the hidden states' device (float64 is never cast), else the
    hidden states' own dtype."""
    device = hidden.device.type
    if (
        hidden.dtype != torch.float64
        and torch.amp.is_autocast_available(device)
        and torch.is_autocast_enabled(device)
    ):
        return torch.get_autocast_dtype(device)
    return hidden.dtype


def _chunked(
    hidden: Float[Tensor, "batch length hidden"],
    params: tuple[Tensor, Tensor | None],
    targets: Int[Tensor, " rows"],
    positions: tuple[Int[Tensor, " rows"], Int[Tensor, " rows"]],
    *,
    reference_hidden: Float[Tensor, "batch length ref_hidden"] | None,
    reference_params: tuple[Tensor, Tensor | None] | None,
    kl_forward: bool,
    kl_reverse: bool,
    chunk_size: int,
    policy_stats: bool,
) -> _RowStats:
    weight, bias = params
    if reference_hidden is None or reference_params is None:
        reference_hidden = reference_weight = reference_bias = None
    else:
        # The reference is a constant: detached here, it never asks for a gradient
        # (even when it shares the policy's head, as a peft reference does).
        reference_hidden = reference_hidden.detach()
        reference_weight = reference_params[0].detach()
        reference_bias = (
            None if reference_params[1] is None else reference_params[1].detach()
        )
    logps, reference_logps, forward, reverse, stats = _ChunkedHead.apply(
        hidden,
        weight,
        bias,
        targets,
        *positions,
        reference_hidden,
        reference_weight,
        reference_bias,
        kl_forward,
        kl_reverse,
        chunk_size,
        policy_stats,
    )
    return _RowStats(
        logps=logps,
        reference_logps=reference_logps if reference_hidden is not None else None,
        kl_forward=forward if kl_forward else None,
        kl_reverse=reverse if kl_reverse else None,
        stats=stats if policy_stats else None,
    )


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class _Head:
    """One head, ready for chunks: the logits dtype fixed once per pass.

    ``hidden`` is the caller's ``[batch, length, hidden]`` tensor; a chunk's rows
    are gathered from it at ``(batch_index, seq_index)`` when the chunk is
    processed, so no ``[rows, hidden]`` copy outlives a chunk.
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    batch_index: Tensor
    seq_index: Tensor
    matmul_dtype: torch.dtype
    dtype: torch.dtype

    @staticmethod
    def of(
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        batch_index: Tensor,
        seq_index: Tensor,
        matmul_dtype: torch.dtype,
        dtype: torch.dtype,
    ) -> "_Head":
        return _Head(
            hidden=hidden,
            # cast once per pass (a no-op without autocast)
            weight=weight.to(matmul_dtype),
            bias=None if bias is None else bias.to(matmul_dtype),
            batch_index=batch_index,
            seq_index=seq_index,
            matmul_dtype=matmul_dtype,
            dtype=dtype,
        )

    def rows(self, chunk: slice) -> Tensor:
        """The chunk's hidden rows in the matmul dtype."""
        rows = self.hidden[self.batch_index[chunk], self.seq_index[chunk]]
        return rows.to(self.matmul_dtype)

    def logits(self, rows: Tensor) -> Tensor:
        """:math:`W h + b` in the matmul dtype, returned in the compute dtype."""
        return F.linear(rows, self.weight, self.bias).to(self.dtype)

    def log_softmax(self, rows: Tensor) -> Tensor:
        """:math:`\\log\\mathrm{softmax}(W h + b)` in the compute dtype."""
        return F.log_softmax(self.logits(rows), dim=-1)


class _ChunkedHead(torch.autograd.Function):
    """Head + log-softmax + gather (+ KLs, + the detached statistics of
    :func:`distribution_stats`) over row chunks, recomputed in backward.

    Only the hidden states (as given, never a gathered copy), the head parameters,
    the targets and the row positions are saved, and the reference hidden states
    only when a KL asks for them; each chunk's ``[chunk, vocab]`` logits exist
    only while that chunk is processed. Forward and backward fix the logits dtype
    the same way (:func:`_head_dtype`, read in forward and stored), so under
    autocast the recomputed logits are the forward's and the backward matmuls run
    in the same low precision, accumulated in float32. The backward pass uses the
    closed-form logit gradients (``p = softmax(z)``, ``q`` the reference
    distribution, ``a_v = log p_v - log q_v``):

    .. math::

        \\partial_z \\log p_y = e_y - p, \\quad
        \\partial_z \\mathrm{KL}(q\\|p) = p - q, \\quad
        \\partial_z \\mathrm{KL}(p\\|q) = p \\odot (a - \\textstyle\\sum_v p_v a_v),

    then ``dh = dz W`` and ``dW = dz^T h`` (``W`` is the embedding matrix when the
    embeddings are tied, so its gradient adds to the input-embedding one).
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        batch_index: Tensor,
        seq_index: Tensor,
        reference_hidden: Tensor | None,
        reference_weight: Tensor | None,
        reference_bias: Tensor | None,
        want_forward: bool,
        want_reverse: bool,
        chunk_size: int,
        want_stats: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        dtype = _compute_dtype(hidden.dtype)
        matmul_dtype = _head_dtype(hidden)
        reference_dtype = (
            None if reference_hidden is None else _head_dtype(reference_hidden)
        )
        with torch.autocast(hidden.device.type, enabled=False):
            outputs = _chunked_forward(
                _Head.of(
                    hidden, weight, bias, batch_index, seq_index, matmul_dtype, dtype
                ),
                targets,
                None
                if reference_hidden is None or reference_dtype is None
                else _Head.of(
                    reference_hidden,
                    reference_weight,
                    reference_bias,
                    batch_index,
                    seq_index,
                    reference_dtype,
                    dtype,
                ),
                (want_forward, want_reverse, want_stats),
                chunk_size,
            )
        keep_reference = want_forward or want_reverse
        ctx.save_for_backward(
            hidden,
            weight,
            bias,
            targets,
            batch_index,
            seq_index,
            # backward reads the reference only for the KLs' gradients
            reference_hidden if keep_reference else None,
            reference_weight if keep_reference else None,
            reference_bias if keep_reference else None,
        )
        ctx.chunk_size = chunk_size
        ctx.dtypes = (matmul_dtype, reference_dtype)
        ctx.mark_non_differentiable(outputs[1], outputs[4])
        ctx.set_materialize_grads(False)
        return outputs

    @staticmethod
    def backward(
        ctx: Any,
        grad_logps: Tensor | None,
        _grad_reference_logps: Tensor | None,
        grad_forward: Tensor | None,
        grad_reverse: Tensor | None,
        _grad_stats: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        (
            hidden,
            weight,
            bias,
            targets,
            batch_index,
            seq_index,
            reference_hidden,
            reference_weight,
            reference_bias,
        ) = ctx.saved_tensors
        matmul_dtype, reference_dtype = ctx.dtypes
        dtype = _compute_dtype(hidden.dtype)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        with torch.autocast(hidden.device.type, enabled=False):
            grads = _chunked_backward(
                _Head.of(
                    hidden, weight, bias, batch_index, seq_index, matmul_dtype, dtype
                ),
                targets,
                None
                if grad_forward is None and grad_reverse is None
                else _Head.of(
                    reference_hidden,
                    reference_weight,
                    reference_bias,
                    batch_index,
                    seq_index,
                    reference_dtype,
                    dtype,
                ),
                (grad_logps, grad_forward, grad_reverse),
                (need_hidden, need_weight, need_bias and bias is not None),
                ctx.chunk_size,
            )
        grad_hidden, grad_weight, grad_bias = grads
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            *(None,) * 10,
        )


def _chunked_forward(
    head: _Head,
    targets: Tensor,
    reference: _Head | None,
    wants: tuple[bool, bool, bool],
    chunk_size: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-row log-probs, reference log-probs, KLs and distribution statistics,
    one chunk at a time (``wants``: forward KL, reverse KL, statistics)."""
    want_forward, want_reverse, want_stats = wants
    dtype = head.dtype
    n = targets.shape[0]
    new = head.hidden.new_zeros
    logps = new(n, dtype=dtype)
    reference_logps = new(n if reference is not None else 0, dtype=dtype)
    forward = new(n if want_forward else 0, dtype=dtype)
    reverse = new(n if want_reverse else 0, dtype=dtype)
    stats = new(n if want_stats else 0, len(POLICY_STATS), dtype=dtype)
    for start in range(0, n, chunk_size):
        chunk = slice(start, start + chunk_size)
        logits = head.logits(head.rows(chunk))
        lp = F.log_softmax(logits, dim=-1)
        index = targets[chunk].unsqueeze(-1)
        logps[chunk] = lp.gather(-1, index).squeeze(-1)
        if want_stats:  # overwrites the logits buffer: no extra [chunk, vocab]
            stats[chunk] = distribution_stats(logits, lp, targets[chunk])
        del logits
        if reference is None:
            continue
        lq = reference.log_softmax(reference.rows(chunk))
        reference_logps[chunk] = lq.gather(-1, index).squeeze(-1)
        if want_forward:
            forward[chunk] = kl_from_logps(lq, lp)
        if want_reverse:
            reverse[chunk] = kl_from_logps(lp, lq)
    return logps, reference_logps, forward, reverse, stats


def _chunked_backward(
    head: _Head,
    targets: Tensor,
    reference: _Head | None,
    upstream: tuple[Tensor | None, Tensor | None, Tensor | None],
    needs: tuple[bool, bool, bool],
    chunk_size: int,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients w.r.t. the hidden states, the head weight and the bias.

    The hidden-state gradient is written straight into a tensor shaped like the
    hidden states (zero off the response rows).
    """
    dtype = head.dtype
    need_hidden, need_weight, need_bias = needs
    grad_hidden = torch.zeros_like(head.hidden) if need_hidden else None
    # Accumulate the head gradient in the compute dtype (low-precision sums over
    # many chunks would lose precision), cast once by the caller.
    grad_weight = (
        torch.zeros(head.weight.shape, dtype=dtype, device=head.weight.device)
        if need_weight
        else None
    )
    grad_bias = (
        torch.zeros(head.weight.shape[0], dtype=dtype, device=head.weight.device)
        if need_bias
        else None
    )
    for start in range(0, targets.shape[0], chunk_size):
        chunk = slice(start, start + chunk_size)
        h = head.rows(chunk)
        dz = _chunk_logit_gradient(
            head.log_softmax(h),
            None if reference is None else reference.log_softmax(reference.rows(chunk)),
            targets[chunk],
            *(
                None if g is None else g[chunk].to(dtype).unsqueeze(-1)
                for g in upstream
            ),
        )
        dz_low = dz.to(head.matmul_dtype)
        if grad_hidden is not None:
            where = (head.batch_index[chunk], head.seq_index[chunk])
            grad_hidden[where] = (dz_low @ head.weight).to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight += (dz_low.T @ h).to(dtype)
        if grad_bias is not None:
            grad_bias += dz.sum(0)
    return grad_hidden, grad_weight, grad_bias


def _chunk_logit_gradient(
    lp: Tensor,
    lq: Tensor | None,
    targets: Tensor,
    grad_logps: Tensor | None,
    grad_forward: Tensor | None,
    grad_reverse: Tensor | None,
) -> Tensor:
    """dz for one chunk from the closed forms of :class:`_ChunkedHead`.

    Works in place on the ``[chunk, vocab]`` buffers it is handed (``lp``,
    ``lq``), so that the common DPO case holds two such buffers, not five.
    """
    p = lp.exp() if grad_reverse is not None else lp.exp_()
    reverse = None
    if grad_reverse is not None and lq is not None:
        a = torch.where(p > 0, lp - lq, torch.zeros_like(lp))
        kl = (p * a).sum(-1, keepdim=True)
        reverse = a.sub_(kl).mul_(p).mul_(grad_reverse)
    # p * (g_fwd - g_logp) - q * g_fwd (+ e_y g_logp + reverse, below)
    coefficient = torch.zeros_like(p[:, :1])
    if grad_logps is not None:
        coefficient = coefficient - grad_logps
    if grad_forward is not None:
        coefficient = coefficient + grad_forward
    dz = p.mul_(coefficient)
    if grad_forward is not None and lq is not None:
        dz.sub_(lq.exp_().mul_(grad_forward))
    if grad_logps is not None:
        dz.scatter_add_(-1, targets.unsqueeze(-1), grad_logps)
    if reverse is not None:
        dz.add_(reverse)
    return dz


__all__ = [
    "IGNORE_INDEX",
    "POLICY_STATS",
    "TokenStats",
    "distribution_stats",
    "final_hidden_states",
    "kl_from_logps",
    "token_stats",
]
