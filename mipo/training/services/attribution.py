r"""Gradient attribution of input tokens: TI-DPO's token importance.

For a sequence with input embeddings $e_1, \dots, e_L$ and logits $z$ at its last
valid position $T$, the target is the largest logit and the importance of token
$i$ is the L1 norm of the target's gradient with respect to $e_i$:

$$ L_{target} = \max_v z_{T, v}, \qquad
   I_i = \big\|\nabla_{e_i} L_{target}\big\|_1 . $$

All rows of a batch go through ONE extra forward from the (detached) embeddings
and ONE backward to the embeddings only, with ``torch.autograd.grad``: the
parameters' ``.grad`` are never touched and no graph is kept, so the scores are
constants. The policy runs in eval mode (dropout off) and every module's mode is
restored afterwards, also on an exception.

The :class:`AttributionService` serves :class:`~mipo.services.GradientAttribution`
for the chosen and the rejected rows (the anchor's weights are never read).
When the policy's training forward is deterministic (no dropout can fire), that
forward computes exactly what the extra forward would: the service records its
input embeddings (:func:`capturing_embeddings`) and differentiates the same
target through its graph (:func:`attribution_from_forward`, the graph kept for
the loss), which saves the extra forward. Otherwise (a dropout rate above 0 in
training mode, a packed forward, autograd off) it runs the extra forward.

References:
    Yang et al., "Token-Importance Guided Direct Preference Optimization", arXiv
    2505.19653 v3, Sec. 4.2, Eq. 5-6; released code ``gradient_attribution.py``
    at ``e04a0926`` (``docs/recipe_notes/ti_dpo.md``).
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from mipo.needs import Need
from mipo.services import GradientAttribution
from mipo.training.logps import _unwrap_peft
from mipo.training.services.base import Forward, Models, Service, Stacked


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module of ``model`` in eval mode; restore each module's own mode
    on exit (a frozen submodule in eval mode stays so), also on an exception."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def last_valid_position(
    attention_mask: Int[Tensor, "batch length"],
) -> Int[Tensor, " batch"]:
    """Index of the last position with ``attention_mask == 1`` in each row
    (works for right and left padding)."""
    length = attention_mask.shape[1]
    positions = torch.arange(length, device=attention_mask.device)
    return torch.where(attention_mask.bool(), positions, -1).amax(dim=1)


def attribution_scores(
    model: nn.Module,
    input_ids: Int[Tensor, "batch length"],
    attention_mask: Int[Tensor, "batch length"],
) -> Float[Tensor, "batch length"]:
    r"""$I_i = \|\nabla_{e_i} \max_v z_{T,v}\|_1$ for every input token (0 on padding).

    Args:
        model: a Hugging Face causal LM (optionally peft-wrapped): the current
            policy. Its input embedding builds $e_i$ from ``input_ids``; its decoder
            body and output embedding give $z_T$.
        input_ids: token ids (prompt + response, padded).
        attention_mask: 1 on real tokens, 0 on padding. The target of a row is read
            at its last position with mask 1 (the final response token, usually
            the EOS).

    Returns:
        Float32 scores per input token; 0 where ``attention_mask`` is 0. The
        weight of label $y_t$ is the score of its own input embedding $e_t$, so
        the trainer maps the scores to the shifted axis as ``scores[:, 1:]``.

    Raises:
        ValueError: when a row has no valid token.

    References:
        arXiv 2505.19653 v3, Eq. 5-6; ``docs/recipe_notes/ti_dpo.md``.
    """
    last = _last_positions(attention_mask)
    causal_lm = _unwrap_peft(model)
    decoder = causal_lm.get_decoder()
    # Columns after every row's last valid token are padding everywhere: causal
    # attention never lets them reach a target, so they are cut before the forward.
    width = int(last.max()) + 1
    ids, mask = input_ids[:, :width], attention_mask[:, :width]
    with eval_mode(model), torch.enable_grad():
        embeddings = causal_lm.get_input_embeddings()(ids).detach()
        embeddings.requires_grad_(True)
        out = decoder(inputs_embeds=embeddings, attention_mask=mask, use_cache=False)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        target = _target(hidden, causal_lm.get_output_embeddings(), last)
        (gradient,) = torch.autograd.grad(target, embeddings)
    scores = _scores(gradient, mask)
    return torch.nn.functional.pad(scores, (0, input_ids.shape[1] - width))


def attribution_from_forward(
    embeddings: Float[Tensor, "batch length hidden"],
    hidden: Float[Tensor, "batch length hidden"],
    head: nn.Module,
    attention_mask: Int[Tensor, "batch length"],
) -> Float[Tensor, "batch length"]:
    r"""The scores of :func:`attribution_scores`, read from a forward already run.

    $I_i = \|\nabla_{e_i} \max_v z_{T,v}\|_1$ with $e$ the input embeddings of a
    forward with autograd on and $z_T$ its head at each row's last valid position.
    The graph is kept (``retain_graph``) for the caller's own backward, and no
    parameter's ``.grad`` is touched. Equal to :func:`attribution_scores` when that
    forward ran the same rows without dropout.

    Args:
        embeddings: the forward's input embeddings, in its graph (e.g. recorded by
            :func:`capturing_embeddings`).
        hidden: its final hidden states (what the head reads).
        head: the output embedding.
        attention_mask: 1 on real tokens, 0 on padding.

    Returns:
        Float32 scores per input token; 0 where ``attention_mask`` is 0.

    References:
        arXiv 2505.19653 v3, Eq. 5-6.
    """
    target = _target(hidden, head, _last_positions(attention_mask))
    (gradient,) = torch.autograd.grad(target, embeddings, retain_graph=True)
    return _scores(gradient, attention_mask)


def _last_positions(attention_mask: Tensor) -> Tensor:
    last = last_valid_position(attention_mask)
    if not bool(last.min() >= 0):  # one host read; the rows only on the error
        empty = (last < 0).nonzero().flatten().tolist()
        raise ValueError(f"attribution_scores: rows {empty} have no valid token")
    return last


def _target(hidden: Tensor, head: nn.Module, last: Tensor) -> Tensor:
    r"""$\sum_{rows} \max_v z_{T,v}$; only the last valid position of each row is
    projected to the vocabulary (the ``[batch, length, vocab]`` logits never are)."""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    return head(hidden[rows, last]).float().amax(dim=-1).sum()


def _scores(gradient: Tensor, attention_mask: Tensor) -> Tensor:
    return gradient.float().abs().sum(dim=-1) * attention_mask.to(torch.float32)


@contextlib.contextmanager
def capturing_embeddings(model: nn.Module) -> Iterator[dict[str, Tensor]]:
    """Record, in the yielded dict under ``"embeddings"``, the output of
    ``model``'s input embedding in every forward run with autograd on while the
    context is active (the last such forward wins). A frozen embedding's output is
    replaced by a detached copy that requires gradient (the same values; nothing
    upstream needed a gradient), so the scores can be differentiated to it."""
    captured: dict[str, Tensor] = {}

    def record(_module: nn.Module, _args: Any, output: Tensor) -> Tensor | None:
        if not torch.is_grad_enabled():
            return None
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        captured["embeddings"] = output
        return output

    embedding = _unwrap_peft(model).get_input_embeddings()
    handle = embedding.register_forward_hook(record)
    try:
        yield captured
    finally:
        handle.remove()


_DROPOUT_KEYS = ("dropout", "pdrop")


def is_stochastic(model: nn.Module) -> bool:
    """Whether a forward of ``model`` in its current modes may draw random
    numbers: a module in training mode while a dropout module has p > 0 or the
    config sets a dropout rate above 0 (attention dropout is often functional)."""
    modules = list(model.modules())
    if not any(module.training for module in modules):
        return False
    if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in modules):
        return True
    config = getattr(_unwrap_peft(model), "config", None)
    settings = config.to_dict() if hasattr(config, "to_dict") else {}
    return any(
        isinstance(value, int | float) and value > 0
        for key, value in settings.items()
        if any(word in key for word in _DROPOUT_KEYS)
    )


class AttributionService(Service, spec=GradientAttribution):
    """Attribution scores of the current policy, on the shifted axis."""

    description = "gradient attribution"
    needs_grad = True

    def before_forward(
        self,
        stacked: Stacked,
        batch: Any,  # noqa: ARG002
        models: Models,
    ) -> dict[Need | str, Tensor]:
        if not is_stochastic(models.policy):
            return {}  # read from the policy forward (after_forward)
        return self._fields(stacked, _slow_scores(models.policy, stacked))

    def policy_hooks(self, policy: nn.Module) -> Any:
        if is_stochastic(policy):
            return contextlib.nullcontext()
        return capturing_embeddings(policy)

    def after_forward(
        self,
        forward: Forward,
        batch: Any,  # noqa: ARG002
        models: Models,
    ) -> dict[Need | str, Tensor]:
        captured = forward.policy_captured.get(self)
        if captured is None:
            return {}  # computed before the forward
        stacked, pairs = forward.stacked, forward.stacked.pair_rows
        embeddings = captured.get("embeddings")
        if embeddings is None or embeddings.shape[:2] != stacked.input_ids.shape:
            # autograd was off, or the forward ran packed: the extra forward
            return self._fields(stacked, _slow_scores(models.policy, stacked))
        scores = attribution_from_forward(
            embeddings,
            forward.hidden,
            _unwrap_peft(models.policy).get_output_embeddings(),
            stacked.attention_mask,
        )
        return self._fields(stacked, scores[:pairs])

    @staticmethod
    def _fields(stacked: Stacked, scores: Tensor) -> dict[Need | str, Tensor]:
        out: dict[Need | str, Tensor] = {Need.ATTRIBUTION_SCORES: scores[:, 1:].float()}
        if Need.SEQUENCE_MASK in stacked.needs:
            # the "sequence" span counts the first token, which predicts nothing
            out["first_token_attribution"] = scores[:, 0].float()
        return out


def _slow_scores(policy: nn.Module, stacked: Stacked) -> Tensor:
    """:func:`attribution_scores` of the chosen and rejected rows (extra forward)."""
    pairs = stacked.pair_rows
    return attribution_scores(
        policy, stacked.input_ids[:pairs], stacked.attention_mask[:pairs]
    )


__all__ = [
    "AttributionService",
    "attribution_from_forward",
    "attribution_scores",
    "capturing_embeddings",
    "eval_mode",
    "is_stochastic",
    "last_valid_position",
]
