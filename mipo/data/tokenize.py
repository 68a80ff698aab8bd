"""Tokenise one preference record into prompt and completion token ids.

Templates:

- **Conversational** records (message lists; HH, ShareGPT and Stack Exchange data
  are read as conversational) go through the tokenizer's chat template, as in TRL:
  the prompt text is ``apply_chat_template(prompt, add_generation_prompt=True)``;
  the completion text is what follows that prompt text in
  ``apply_chat_template(prompt + response)``. If the prompt text is not a prefix of
  the full text the template is unusable for training and we raise. Whitespace
  after the template's final end-of-turn token (ChatML writes ``"<|im_end|>\\n"``)
  is dropped, so the end-of-turn token is the last label: it is what ends a
  sampled reply, and for SmolLM2 it *is* the EOS (``<|im_end|>``, id 2).
- **Standard** records (plain strings) get no template, as in TRL, whose
  maintainers warn against double templating: prompt and completion are tokenised
  as they are (the prompt with the tokenizer's own special tokens, e.g. a BOS, the
  completion without). A prompt that already begins with the BOS the tokenizer
  adds keeps one BOS, not two.

Prompt and completion are tokenised separately, so the boundary is a token
boundary, exactly as when the policy samples a reply to the prompt ids.
``tokenizer.eos_token_id`` is appended to each completion unless it already ends
with it (never doubled). Every completion is therefore at least one token long,
even for an empty response.

Truncation, with ``P`` the prompt length and ``C`` the longer completion:

1. if ``P + C > max_length``, keep the **end** of the prompt, down to
   ``max_prompt_length`` tokens (the last turns of a long dialogue matter most;
   TRL's former ``keep_end`` mode);
2. if still too long, cut both completions to ``max_length - P`` tokens, keeping
   their start (a truncated completion then has no EOS);
3. completions keep at least one token (guaranteed by
   ``max_prompt_length < max_length``).

Weight columns are aligned 1:1 with the completion ids, EOS included. A column one
entry shorter (no entry for the appended EOS) gets EOS weight 0 appended, the
convention of TIS-DPO's released code, where the EOS carries no token weight; any
other length mismatch is an error. Truncation cuts weights like the ids.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import final

from transformers import PreTrainedTokenizerBase

from mipo.data.errors import DataError
from mipo.data.records import Message, PreferenceRecord, Text


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class EncodedPair:
    """Token ids of one pair, before padding.

    Args:
        prompt_ids: the prompt x (template and generation prompt included).
        chosen_ids: the completion y_w, EOS appended and counted (unless
            truncated).
        rejected_ids: the completion y_l, likewise.
        chosen_token_weights: per-token weights aligned 1:1 with ``chosen_ids``.
        rejected_token_weights: likewise for ``rejected_ids``.
        chosen_kl_weights: per-token KL weights aligned with ``chosen_ids``.
        rejected_kl_weights: likewise for ``rejected_ids``.
        example_weight: the per-pair weight from the data.
        source: where the record came from (file and line or index).
    """

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_token_weights: list[float] | None = None
    rejected_token_weights: list[float] | None = None
    chosen_kl_weights: list[float] | None = None
    rejected_kl_weights: list[float] | None = None
    example_weight: float | None = None
    source: str = "<unknown>"


def encode_record(
    record: PreferenceRecord,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    max_prompt_length: int,
) -> EncodedPair:
    """Tokenise ``record`` and truncate it (rules in the module docstring).

    Raises:
        ValueError: if ``0 < max_prompt_length < max_length`` does not hold, or the
            tokenizer has no EOS.
        DataError: naming the record's source, when the chat template is missing or
            not prefix-consistent, the prompt is empty, or a weight column does not
            match the completion length.
    """
    if not 0 < max_prompt_length < max_length:
        raise ValueError(
            "encode_record: need 0 < max_prompt_length < max_length, got "
            f"max_prompt_length={max_prompt_length}, max_length={max_length}"
        )
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("encode_record: the tokenizer has no eos_token_id")
    source = record.source
    if isinstance(record.prompt, list):
        prompt_text = _template(tokenizer, record.prompt, source, generation=True)
        completions = [
            _completion_text(
                tokenizer, record.prompt, response, prompt_text, field, source
            )
            for field, response in (
                ("chosen", record.chosen),
                ("rejected", record.rejected),
            )
        ]
        prompt_ids = _ids(tokenizer, prompt_text, special=False)
    else:
        completions = [
            _as_string(record.chosen, "chosen", source),
            _as_string(record.rejected, "rejected", source),
        ]
        prompt_ids = _one_bos(
            _ids(tokenizer, record.prompt, special=True), tokenizer.bos_token_id
        )
    if not prompt_ids:
        raise DataError.at(
            source,
            "tokenises to no tokens; the first response token needs a token before it",
            field="prompt",
            fix="give a non-empty prompt",
        )
    chosen_ids, rejected_ids = (
        _with_eos(_ids(tokenizer, text, special=False), eos) for text in completions
    )
    weights = {
        "chosen_token_weights": _aligned(
            record.chosen_token_weights, len(chosen_ids), "chosen_weight", source
        ),
        "rejected_token_weights": _aligned(
            record.rejected_token_weights, len(rejected_ids), "rejected_weight", source
        ),
        "chosen_kl_weights": _aligned(
            record.chosen_kl_weights, len(chosen_ids), "chosen_kl_weight", source
        ),
        "rejected_kl_weights": _aligned(
            record.rejected_kl_weights, len(rejected_ids), "rejected_kl_weight", source
        ),
    }
    if len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)) > max_length:
        prompt_ids = prompt_ids[-max_prompt_length:]
        budget = max_length - len(prompt_ids)
        chosen_ids, rejected_ids = chosen_ids[:budget], rejected_ids[:budget]
        weights = {
            name: None if values is None else values[:budget]
            for name, values in weights.items()
        }
    return EncodedPair(
        prompt_ids=prompt_ids,
        chosen_ids=chosen_ids,
        rejected_ids=rejected_ids,
        **weights,
        example_weight=record.example_weight,
        source=source,
    )


def _as_string(value: Text, field: str, source: str) -> str:
    if not isinstance(value, str):
        raise DataError.at(
            source,
            "is a message list but 'prompt' is a string",
            field=field,
            fix="use messages for all three or strings for all three",
        )
    return value


def _template(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    source: str,
    *,
    generation: bool,
) -> str:
    # jinja2 is what renders chat templates; transformers imports it on demand too.
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation, tokenize=False
        )
    except ValueError as error:  # transformers raises ValueError without a template
        raise DataError.at(
            source,
            f"conversational record but the tokenizer cannot apply a chat template "
            f"({error})",
            fix="use a tokenizer with a chat template, or plain-string rows",
        ) from error
    except TemplateError as error:  # raised by templates that police their input
        raise DataError.at(
            source,
            f"the chat template rejected the messages ({error})",
            fix="fix the roles or order of the messages",
        ) from error
    if not isinstance(text, str):
        raise DataError.at(
            source,
            f"apply_chat_template returned {type(text).__name__}, not text",
            fix="use a tokenizer whose chat template renders text",
        )
    return text


def _completion_text(
    tokenizer: PreTrainedTokenizerBase,
    prompt: list[Message],
    response: Text,
    prompt_text: str,
    field: str,
    source: str,
) -> str:
    if not isinstance(response, list):
        raise DataError(
            f"{source}: field '{field}' is a string but 'prompt' is a message list"
        )
    full = _template(tokenizer, prompt + response, source, generation=False)
    if not full.startswith(prompt_text):
        raise DataError.at(
            source,
            "the chat template of prompt + response does not start with the "
            "templated prompt (with the generation prompt), so the completion cannot "
            "be separated from the prompt",
            field=field,
            fix="use a chat template whose generation prompt is a prefix",
        )
    completion = full[len(prompt_text) :]
    end_of_turn = tokenizer.eos_token
    stripped = completion.rstrip()
    if end_of_turn and stripped.endswith(end_of_turn):
        # ChatML closes a turn with "<|im_end|>\n": the newline is never sampled
        # (generation stops at the EOS), so it is not a label either.
        completion = stripped
    return completion


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, *, special: bool) -> list[int]:
    if not text:
        return []
    encoded = tokenizer(text, add_special_tokens=special)
    ids = encoded["input_ids"]  # type: ignore[index]
    return [int(i) for i in ids]


def _one_bos(ids: list[int], bos: int | None) -> list[int]:
    """``ids`` with one BOS where the text already began with the BOS the
    tokenizer adds (a prompt copied with its template's BOS text: Llama 3 writes
    ``<|begin_of_text|>``), as the policy would see it once.

    >>> _one_bos([1, 1, 7], 1), _one_bos([1, 7], 1), _one_bos([1, 1, 7], None)
    ([1, 7], [1, 7], [1, 1, 7])
    """
    if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:
        return ids[1:]
    return ids


def _with_eos(ids: list[int], eos: int) -> list[int]:
    return ids if ids and ids[-1] == eos else [*ids, eos]


def _aligned(
    values: Sequence[float] | None, length: int, field: str, source: str
) -> list[float] | None:
    if values is None:
        return None
    if len(values) == length:
        return list(values)
    if len(values) == length - 1:
        return [*values, 0.0]
    raise DataError.at(
        source,
        f"has {len(values)} weights but the completion has {length} tokens (EOS "
        f"included; {length - 1} is also accepted and gets EOS weight 0)",
        field=field,
        fix="give one weight per completion token of this tokenizer",
    )


__all__ = ["EncodedPair", "encode_record"]
