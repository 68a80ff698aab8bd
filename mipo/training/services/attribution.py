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

The :class:`AttributionService` serves :class:`~mipo.services.GradientAttribution`:
before the forwards of every micro-batch it scores the chosen and the rejected
rows (the anchor's weights are never read).

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
from mipo.training.services.base import Models, Service, Stacked


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
    last = last_valid_position(attention_mask)
    empty = (last < 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attribution_scores: rows {empty} have no valid token")
    causal_lm = _unwrap_peft(model)
    decoder = causal_lm.get_decoder()
    head = causal_lm.get_output_embeddings()
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    # Columns after every row's last valid token are padding everywhere: causal
    # attention never lets them reach a target, so they are cut before the forward.
    width = int(last.max()) + 1
    ids, mask = input_ids[:, :width], attention_mask[:, :width]
    with eval_mode(model), torch.enable_grad():
        embeddings = causal_lm.get_input_embeddings()(ids).detach()
        embeddings.requires_grad_(True)
        out = decoder(inputs_embeds=embeddings, attention_mask=mask, use_cache=False)
        hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
        # Only the last valid position of each row is projected to the vocabulary:
        # the full [batch, length, vocab] logits are never materialised.
        target = head(hidden[rows, last]).float().amax(dim=-1).sum()
        (gradient,) = torch.autograd.grad(target, embeddings)
    scores = gradient.float().abs().sum(dim=-1) * mask.to(torch.float32)
    return torch.nn.functional.pad(scores, (0, input_ids.shape[1] - width))


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
        pairs = stacked.pair_rows
        scores = attribution_scores(
            models.policy,
            stacked.input_ids[:pairs],
            stacked.attention_mask[:pairs],
        )
        out: dict[Need | str, Tensor] = {Need.ATTRIBUTION_SCORES: scores[:, 1:].float()}
        if Need.SEQUENCE_MASK in stacked.needs:
            # the "sequence" span counts the first token, which predicts nothing
            out["first_token_attribution"] = scores[:, 0].float()
        return out


__all__ = [
    "AttributionService",
    "attribution_scores",
    "eval_mode",
    "last_valid_position",
]
