"""Row formats: one JSON object in, one :class:`PreferenceRecord` out.

The format is detected from the keys of each row (never from the file name):

| keys                                   | format                         | record kind    |
|----------------------------------------|--------------------------------|----------------|
| ``conversations``, ``chosen``, ``rejected`` | ShareGPT (LLaMA-Factory ``ranking``) | conversational |
| ``question``, ``response_j``, ``response_k`` | Stack Exchange paired (j preferred) | conversational |
| ``prompt``, ``chosen``, ``rejected`` (strings) | TRL standard, explicit prompt | standard |
| ``prompt``, ``chosen``, ``rejected`` (message lists) | TRL conversational, explicit | conversational |
| ``chosen``, ``rejected`` (message lists) | TRL conversational, implicit   | conversational |
| ``chosen``, ``rejected`` (strings starting ``"\\n\\nHuman:"``) | Anthropic HH transcripts | conversational |
| ``chosen``, ``rejected`` (other strings) | TRL standard, implicit         | standard       |

A ``column_map`` (``{"question": "prompt", ...}``) renames keys before detection;
renaming the Stack Exchange columns onto ``prompt``/``chosen``/``rejected`` thus
gives the *standard* (template-free) reading, the plain keys the conversational one.

Implicit prompts follow TRL's ``extract_prompt``: the longest common prefix of the
two responses (message-wise for message lists, character-wise for strings). For
HH transcripts the prompt is cut at the last ``"\\n\\nAssistant:"`` that lies inside
the character-level common prefix: for 2,308 of the 2,312 harmless-base test pairs
that is the last ``"\\n\\nAssistant:"`` of ``chosen``; for the four pairs with role
markers inside a response (lines 1255, 1689, 1953, 2037, 1-based) it is the last
marker the two transcripts share. A plain character prefix would run into the
replies (both often start with " I"). The transcript is parsed into alternating
``user``/``assistant`` messages; response text is stripped of surrounding
whitespace. Empty responses (four chosen HH replies) are kept: the EOS appended at
tokenisation keeps every response at least one token long.

Optional columns: ``chosen_weight``/``rejected_weight`` (per-token weights),
``chosen_kl_weight``/``rejected_kl_weight`` (per-token KL weights), ``weight``
(per-pair weight). JSON ``null`` means absent.
"""

import math
import os
import re
from collections.abc import Mapping

from mipo.data.errors import DataError
from mipo.data.records import Message, PreferenceRecord, Text

SHAREGPT_ROLES: dict[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
}
"""ShareGPT ``from`` values and the chat role each becomes."""

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}

_WEIGHT_COLUMNS = {
    "chosen_token_weights": "chosen_weight",
    "rejected_token_weights": "rejected_weight",
    "chosen_kl_weights": "chosen_kl_weight",
    "rejected_kl_weights": "rejected_kl_weight",
}


def record_from_row(
    row: object, *, source: str, column_map: Mapping[str, str] | None = None
) -> PreferenceRecord:
    """Convert one parsed JSON row into a :class:`PreferenceRecord`.

    Raises:
        DataError: naming ``source`` and the field, for any malformed row.
    """
    if not isinstance(row, dict):
        raise DataError(
            f"{source}: expected a JSON object per row, got {type(row).__name__}"
        )
    row = _renamed(row, column_map, source)
    if "conversations" in row:
        prompt, chosen, rejected = _sharegpt(row, source)
    elif "prompt" not in row and {"question", "response_j", "response_k"} <= row.keys():
        prompt = [{"role": "user", "content": _string(row, "question", source)}]
        chosen = _assistant(_string(row, "response_j", source))
        rejected = _assistant(_string(row, "response_k", source))
    else:
        for field in ("chosen", "rejected"):
            if field not in row:
                raise DataError(
                    f"{source}: missing field '{field}' (keys: {sorted(row)}); "
                    "expected prompt/chosen/rejected, chosen/rejected, "
                    "conversations/chosen/rejected or question/response_j/response_k"
                )
        if "prompt" in row:
            prompt, chosen, rejected = _explicit(row, source)
        else:
            prompt, chosen, rejected = _implicit(row, source)
    return PreferenceRecord(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        **{
            name: _weights(row, column, source)
            for name, column in _WEIGHT_COLUMNS.items()
        },
        example_weight=_example_weight(row, source),
        source=source,
    )


def _renamed(
    row: dict[str, object], column_map: Mapping[str, str] | None, source: str
) -> dict[str, object]:
    if not column_map:
        return row
    out = dict(row)
    for old, new in column_map.items():
        if new in row and new not in column_map:
            raise DataError(
                f"{source}: column_map renames '{old}' -> '{new}' but the row already "
                f"has a field '{new}'"
            )
        if old not in row:
            raise DataError(
                f"{source}: column_map renames '{old}' -> '{new}' but the row has no "
                f"field '{old}' (keys: {sorted(row)})"
            )
        out.pop(old)
    for old, new in column_map.items():
        out[new] = row[old]
    return out


def _string(row: Mapping[str, object], field: str, source: str) -> str:
    if field not in row:
        raise DataError(f"{source}: missing field '{field}'")
    value = row[field]
    if not isinstance(value, str):
        raise DataError(
            f"{source}: field '{field}' must be a string, got {type(value).__name__}"
        )
    return value


def _assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def _messages(value: object, field: str, source: str) -> list[Message]:
    if not isinstance(value, list):
        raise DataError(
            f"{source}: field '{field}' must be a list of messages, "
            f"got {type(value).__name__}"
        )
    out: list[Message] = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise DataError(
                f"{source}: field '{where}' must be an object with 'role' and "
                f"'content', got {type(message).__name__}"
            )
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = type(message.get(key)).__name__ if key in message else "nothing"
                raise DataError(
                    f"{source}: field '{where}.{key}' must be a string, got {got}"
                )
        out.append({"role": message["role"], "content": message["content"]})
    return out


def _sharegpt_message(value: object, field: str, source: str) -> Message:
    if not isinstance(value, dict):
        raise DataError(
            f"{source}: field '{field}' must be an object with 'from' and 'value', "
            f"got {type(value).__name__}"
        )
    for key in ("from", "value"):
        if not isinstance(value.get(key), str):
            got = type(value.get(key)).__name__ if key in value else "nothing"
            raise DataError(
                f"{source}: field '{field}.{key}' must be a string, got {got}"
            )
    speaker = value["from"]
    if speaker not in SHAREGPT_ROLES:
        raise DataError(
            f"{source}: field '{field}.from' is '{speaker}', expected one of "
            f"{sorted(SHAREGPT_ROLES)}"
        )
    return {"role": SHAREGPT_ROLES[speaker], "content": value["value"]}


def _sharegpt(
    row: Mapping[str, object], source: str
) -> tuple[list[Message], list[Message], list[Message]]:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise DataError(
            f"{source}: field 'conversations' must be a non-empty list of "
            "{'from', 'value'} objects"
        )
    prompt = [
        _sharegpt_message(turn, f"conversations[{i}]", source)
        for i, turn in enumerate(turns)
    ]
    responses = []
    for field in ("chosen", "rejected"):
        if field not in row:
            raise DataError(f"{source}: missing field '{field}'")
        message = _sharegpt_message(row[field], field, source)
        if message["role"] != "assistant":
            raise DataError(
                f"{source}: field '{field}.from' must be an assistant role "
                f"(gpt, assistant, ...), got '{row[field]['from']}'"  # type: ignore[index]
            )
        responses.append([message])
    return prompt, responses[0], responses[1]


def _explicit(row: Mapping[str, object], source: str) -> tuple[Text, Text, Text]:
    if isinstance(row["prompt"], list):
        prompt = _messages(row["prompt"], "prompt", source)
        if not prompt:
            raise DataError(f"{source}: field 'prompt' is an empty message list")
        chosen = _messages(row["chosen"], "chosen", source)
        rejected = _messages(row["rejected"], "rejected", source)
        for field, messages in (("chosen", chosen), ("rejected", rejected)):
            if not messages:
                raise DataError(f"{source}: field '{field}' is an empty message list")
        return prompt, chosen, rejected
    prompt_text = _string(row, "prompt", source)
    for field in ("chosen", "rejected"):
        if isinstance(row[field], list):
            raise DataError(
                f"{source}: field '{field}' is a message list but 'prompt' is a "
                "string; use messages for all three (conversational) or strings "
                "for all three (standard)"
            )
    return prompt_text, _string(row, "chosen", source), _string(row, "rejected", source)


def _implicit(row: Mapping[str, object], source: str) -> tuple[Text, Text, Text]:
    if isinstance(row["chosen"], list) or isinstance(row["rejected"], list):
        chosen = _messages(row["chosen"], "chosen", source)
        rejected = _messages(row["rejected"], "rejected", source)
        shared = 0
        while (
            shared < min(len(chosen), len(rejected))
            and chosen[shared] == rejected[shared]
        ):
            shared += 1
        if shared == 0:
            raise DataError(
                f"{source}: fields 'chosen' and 'rejected' share no leading message, "
                "so no implicit prompt can be extracted; add a 'prompt' field"
            )
        if shared == len(chosen) or shared == len(rejected):
            raise DataError(
                f"{source}: field '{'chosen' if shared == len(chosen) else 'rejected'}'"
                " has no message after the shared prompt"
            )
        return chosen[:shared], chosen[shared:], rejected[shared:]
    chosen_text = _string(row, "chosen", source)
    rejected_text = _string(row, "rejected", source)
    if chosen_text == rejected_text:
        raise DataError(f"{source}: fields 'chosen' and 'rejected' are identical")
    if chosen_text.startswith("\n\nHuman:") and rejected_text.startswith("\n\nHuman:"):
        return _hh(chosen_text, rejected_text, source)
    prefix = os.path.commonprefix([chosen_text, rejected_text])
    if not prefix:
        raise DataError(
            f"{source}: fields 'chosen' and 'rejected' share no common prefix, so "
            "no implicit prompt can be extracted; add a 'prompt' field"
        )
    return prefix, chosen_text[len(prefix) :], rejected_text[len(prefix) :]


def _hh(chosen: str, rejected: str, source: str) -> tuple[Text, Text, Text]:
    """Split two HH transcripts at the last shared ``"\\n\\nAssistant:"``."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(
            f"{source}: fields 'chosen' and 'rejected' share no "
            "'\\n\\nAssistant:' turn, so the HH prompt cannot be extracted"
        )
    end = cut + len(HH_ASSISTANT)
    pieces = _HH_TURN.split(chosen[:end])
    # split() with one capture group alternates text, role, text, role, ...; the
    # transcript starts with a marker (empty head) and ends with "Assistant:".
    messages: list[Message] = [
        {"role": _HH_ROLES[role], "content": text.strip()}
        for role, text in zip(pieces[1::2], pieces[2::2], strict=True)
    ]
    if pieces[0] or messages[-1] != {"role": "assistant", "content": ""}:
        raise DataError(
            f"{source}: field 'chosen' is not an HH transcript "
            "('\\n\\nHuman: ...\\n\\nAssistant: ...')"
        )
    prompt = messages[:-1]
    return (
        prompt,
        _assistant(chosen[end:].strip()),
        _assistant(rejected[end:].strip()),
    )


def _weights(
    row: Mapping[str, object], field: str, source: str
) -> tuple[float, ...] | None:
    value = row.get(field)
    if value is None:
        return None
    if not isinstance(value, list):
        raise DataError(
            f"{source}: field '{field}' must be a list of numbers, "
            f"got {type(value).__name__}"
        )
    out = []
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise DataError(
                f"{source}: field '{field}[{i}]' must be a number, "
                f"got {type(item).__name__}"
            )
        if not math.isfinite(item):
            raise DataError(f"{source}: field '{field}[{i}]' is not finite ({item})")
        out.append(float(item))
    return tuple(out)


def _example_weight(row: Mapping[str, object], source: str) -> float | None:
    value = row.get("weight")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(
            f"{source}: field 'weight' must be a number, got {type(value).__name__}"
        )
    if not (math.isfinite(value) and value >= 0):
        raise DataError(
            f"{source}: field 'weight' must be finite and >= 0, got {value}"
        )
    return float(value)


__all__ = ["HH_ASSISTANT", "SHAREGPT_ROLES", "record_from_row"]
