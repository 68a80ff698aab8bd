r"""The anchor response of TI-DPO's triplet term, sampled from the policy.

For each prompt $x$ the policy samples $y \sim \pi_\theta(\cdot|x)$ (top-k, top-p,
temperature), without gradient. The anchor is repacked like a data side:
prompt + sampled response, right-padded, labels $-100$ on prompt and padding.
The response ends at its first EOS, which counts as a response token (an EOS
sampled first is a one-token response); a response that reaches
``max_new_tokens`` without EOS is kept as sampled.

The :class:`AnchorService` serves :class:`~mipo.services.AnchorSampling`: it
samples one anchor per prompt of every micro-batch and adds it to the forward
as the batch-level side ``anchor``.

References:
    Yang et al., arXiv 2505.19653 v3, Sec. 4.3 (the paper starts the anchor from
    $y_w$; the released code ``trainers.py`` at ``e04a0926`` samples it from the
    prompt, which mipo follows; ``docs/recipe_notes/ti_dpo.md``).
"""

from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor, nn

from mipo.data.collate import IGNORE_INDEX, SequenceTensors
from mipo.needs import Need
from mipo.services import AnchorSampling
from mipo.training.services.attribution import eval_mode
from mipo.training.services.base import Models, Service, ServiceSetup


def generate_anchor(
    model: nn.Module,
    prompt_input_ids: Int[Tensor, "batch prompt"],
    prompt_attention_mask: Int[Tensor, "batch prompt"],
    *,
    sampling: AnchorSampling,
    pad_token_id: int,
    eos_token_id: int,
    max_length: int | None = None,
) -> SequenceTensors:
    """Sample one anchor response per prompt from the policy, without gradient.

    Args:
        model: the policy (a Hugging Face causal LM with ``generate``); it samples
            in eval mode, and every module's mode is restored afterwards.
        prompt_input_ids: the prompts, **left**-padded.
        prompt_attention_mask: 1 on prompt tokens, 0 on the left padding.
        sampling: the sampling settings (the term's ``sampling``).
        pad_token_id: fills the padding of the returned tensors.
        eos_token_id: ends a response (and is its last token).
        max_length: optional cap on prompt + response: at most
            ``max_length - longest prompt`` new tokens (the released code's rule).

    Returns:
        Prompt + anchor response per row, right-padded; ``labels`` hold the
        response ids (EOS included) and -100 on prompt and padding; every row has
        at least one response token.

    Raises:
        ValueError: on a prompt without tokens, or when ``max_length`` leaves no
            room for a new token.
    """
    from transformers import GenerationConfig

    lengths = prompt_attention_mask.sum(dim=1)
    if not bool(lengths.min() > 0):  # before sampling: a row of padding has no
        empty = (lengths == 0).nonzero().flatten().tolist()  # distribution
        raise ValueError(f"generate_anchor: prompts {empty} have no token")
    width = prompt_input_ids.shape[1]
    new_tokens = sampling.max_new_tokens
    if max_length is not None:
        new_tokens = min(new_tokens, max_length - width)
        if new_tokens < 1:
            raise ValueError(
                f"generate_anchor: max_length={max_length} leaves no room after the "
                f"longest prompt ({width} tokens)"
            )
    # A fresh config, so the checkpoint's generation_config.json (its own
    # temperature, repetition penalty, ...) cannot change the anchor's sampling.
    config = GenerationConfig(
        do_sample=True,
        max_new_tokens=new_tokens,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        temperature=sampling.temperature,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )
    with eval_mode(model), torch.no_grad():
        generated = model.generate(
            input_ids=prompt_input_ids,
            attention_mask=prompt_attention_mask,
            generation_config=config,
        )
    return _repack(
        prompt_input_ids,
        prompt_attention_mask,
        generated[:, width:],
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
    )


def _repack(
    prompt_input_ids: Int[Tensor, "batch prompt"],
    prompt_attention_mask: Int[Tensor, "batch prompt"],
    sampled: Int[Tensor, "batch new"],
    *,
    pad_token_id: int,
    eos_token_id: int,
) -> SequenceTensors:
    """Right-padded prompt + response rows; a response runs up to and including
    its first EOS (the whole sample when it has none).

    Built with gathers, no loop over rows: row $b$ holds its $L_b$ prompt
    tokens (in order, wherever the mask puts them), then its $R_b$ response
    tokens; the one host read is the rows' longest $L_b + R_b$, which sizes
    the output.
    """
    device = prompt_input_ids.device
    real = prompt_attention_mask.bool()
    prompt_len = real.sum(dim=1)
    # the real prompt tokens first, in their order (a stable sort on "is padding")
    order = torch.sort((~real).to(torch.int8), dim=1, stable=True).indices
    is_eos = sampled == eos_token_id
    first_eos = is_eos.to(torch.int8).argmax(dim=1)
    response_len = torch.where(is_eos.any(dim=1), first_eos + 1, sampled.shape[1])
    total = prompt_len + response_len
    length = int(total.max())
    j = torch.arange(length, device=device).unsqueeze(0)
    start, end = prompt_len.unsqueeze(1), total.unsqueeze(1)
    from_prompt = prompt_input_ids.gather(
        1, order.gather(1, j.clamp(max=order.shape[1] - 1).expand(len(order), -1))
    )
    from_response = sampled.gather(
        1, (j - start).clamp(0, sampled.shape[1] - 1).expand(len(sampled), -1)
    )
    in_response = (j >= start) & (j < end)
    input_ids = torch.where(j < start, from_prompt, from_response)
    input_ids = torch.where(j < end, input_ids, pad_token_id)
    labels = torch.where(in_response, from_response, IGNORE_INDEX)
    return SequenceTensors(
        input_ids=input_ids,
        attention_mask=(j < end).to(torch.long),
        labels=labels,
    )


class AnchorService(Service, spec=AnchorSampling):
    """Samples the anchor of every micro-batch from the current policy."""

    description = "anchor sampler"

    def __init__(self, spec: AnchorSampling, setup: ServiceSetup) -> None:
        super().__init__(spec, setup)
        self.sampling = spec

    def extra_sides(self, batch: Any, models: Models) -> dict[Need, SequenceTensors]:
        tensors = batch.tensors
        if models.eos_token_id is None:
            raise ValueError("the anchor needs an eos_token_id to end its response")
        anchor = generate_anchor(
            models.policy,
            tensors.prompt_input_ids,
            tensors.prompt_attention_mask,
            sampling=self.sampling,
            pad_token_id=models.pad_token_id,
            eos_token_id=models.eos_token_id,
        )
        return {Need.ANCHOR: anchor}


__all__ = ["AnchorService", "AnchorSampling", "generate_anchor"]
