"""Row formats: one parsed row in, one :class:`PreferenceRecord` out.

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

Refused (a :class:`DataError`): a missing or mistyped field, an unknown message
role, two identical responses, two empty responses, and weights that are not
finite in float32 (the dtype they train in: ``1e308`` overflows to ``inf``).

Reported through ``warn`` (a :class:`DataWarning` per row; the loader merges them
into one line per kind): an empty or whitespace-only response, an HH turn marker
inside a response, and a missing or empty string prompt, which becomes ``" "`` so
that the first response token has a state to be predicted from.

Optional columns (:mod:`mipo.data.columns`): ``chosen_weight``/``rejected_weight``
(per-token weights), ``chosen_kl_weight``/``rejected_kl_weight`` (per-token KL
weights), ``weight`` (per-pair weight). ``null`` means absent.
"""

import math
import os
import re
from collections.abc import Callable, Mapping

from mipo.data.cells import TextCells, typed_cells
from mipo.data.columns import EXAMPLE_WEIGHT_COLUMN, WEIGHT_COLUMNS
from mipo.data.errors import DataError, DataWarning
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

CHAT_ROLES = frozenset(
    {"system", "developer", "user", "assistant", "tool", "function", "ipython"}
)
"""Roles a message list may use (those of common chat templates)."""

HH_ASSISTANT = "\n\nAssistant:"
HH_MARKERS = ("\n\nHuman:", HH_ASSISTANT)
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
FLOAT32_MAX = 3.4028234663852886e38
"""The largest finite float32; weights beyond it become ``inf`` in training."""

EMPTY_PROMPT = " "
"""What a missing or empty string prompt becomes (one token for most tokenizers)."""

_FORMATS_HINT = (
    "a row needs prompt/chosen/rejected, chosen/rejected, "
    "conversations/chosen/rejected or question/response_j/response_k "
    "(rename other columns with a column map, e.g. chosen=better,rejected=worse)"
)

Warn = Callable[[DataWarning], None]


def _ignore(_: DataWarning) -> None:
    return None


def record_from_row(
    row: object,
    *,
    source: str,
    column_map: Mapping[str, str] | None = None,
    warn: Warn | None = None,
) -> PreferenceRecord:
    """Convert one parsed row into a :class:`PreferenceRecord`.

    Args:
        row: the parsed row (a JSON object, a table row as a dict).
        source: where it came from, ``FILE:LINE``; every message starts with it.
        column_map: renames ``{column in the row: field mipo reads}`` first.
        warn: receives a :class:`DataWarning` for each suspicious but usable part.

    Raises:
        DataError: naming ``source`` and the field, for any malformed row.
    """
    warn = warn or _ignore
    if not isinstance(row, dict):
        raise DataError.at(
            source,
            f"expected an object (one row), got {_kind(row)}",
            fix=_FORMATS_HINT,
        )
    text_cells = isinstance(row, TextCells)
    row = _renamed(row, column_map, source)
    if text_cells:
        row = typed_cells(row, source)
    if "conversations" in row:
        prompt, chosen, rejected = _sharegpt(row, source)
    elif "prompt" not in row and {"question", "response_j", "response_k"} <= row.keys():
        prompt = [{"role": "user", "content": _string(row, "question", source)}]
        chosen = _assistant(_string(row, "response_j", source))
        rejected = _assistant(_string(row, "response_k", source))
    else:
        for field in ("chosen", "rejected"):
            if row.get(field) is None:
                raise DataError.at(
                    source,
                    f"missing (row keys: {_keys(row)})",
                    field=field,
                    fix=_FORMATS_HINT,
                )
        if "prompt" in row:
            prompt, chosen, rejected = _explicit(row, source, warn)
        else:
            prompt, chosen, rejected = _implicit(row, source, warn)
    _check_responses(chosen, rejected, source, warn)
    return PreferenceRecord(
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        **{
            name: _weights(row, column, source)
            for name, column in WEIGHT_COLUMNS.items()
        },
        example_weight=_example_weight(row, source),
        source=source,
    )


def _kind(value: object) -> str:
    """A JSON-flavoured name of a value's type, for messages."""
    names = {
        type(None): "null",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        tuple: "a list",
        dict: "an object",
    }
    return names.get(type(value), type(value).__name__)


def _keys(row: Mapping[object, object]) -> str:
    return ", ".join(sorted(str(key) for key in row)) or "none"


def _renamed(
    row: dict[object, object], column_map: Mapping[str, str] | None, source: str
) -> dict[object, object]:
    if not column_map:
        return row
    out = dict(row)
    for old, new in column_map.items():
        if new in row and new not in column_map:
            raise DataError.at(
                source,
                f"the column map renames '{old}' to '{new}' but the row already has "
                f"a column '{new}'",
                field=new,
                fix=f"drop one of them or map '{new}' elsewhere",
            )
        if old not in row:
            raise DataError.at(
                source,
                f"the column map renames '{old}' to '{new}' but the row has no "
                f"column '{old}' (row keys: {_keys(row)})",
                field=old,
                fix="fix the column map's column name",
            )
        out.pop(old)
    for old, new in column_map.items():
        out[new] = row[old]
    return out


def _string(row: Mapping[object, object], field: str, source: str) -> str:
    if field not in row:
        raise DataError.at(
            source, f"missing (row keys: {_keys(row)})", field=field, fix=_FORMATS_HINT
        )
    value = row[field]
    if not isinstance(value, str):
        raise DataError.at(
            source,
            f"must be a string, got {_kind(value)}",
            field=field,
            fix="write the text as a string",
        )
    return value


def _assistant(text: str) -> list[Message]:
    return [{"role": "assistant", "content": text}]


def _messages(value: object, field: str, source: str) -> list[Message]:
    if not isinstance(value, list):
        raise DataError.at(
            source,
            f"must be a list of messages, got {_kind(value)}",
            field=field,
            fix='write [{"role": "user", "content": "..."}, ...]',
        )
    out: list[Message] = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise DataError.at(
                source,
                f"must be an object with 'role' and 'content', got {_kind(message)}",
                field=where,
                fix='write {"role": "user", "content": "..."}',
            )
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                got = _kind(message[key]) if key in message else "nothing"
                raise DataError.at(
                    source,
                    f"must be a string, got {got}",
                    field=f"{where}.{key}",
                    fix=f"give every message a string '{key}'",
                )
        role = message["role"]
        if role not in CHAT_ROLES:
            raise DataError.at(
                source,
                f"unknown role {role!r}",
                field=f"{where}.role",
                fix=f"use one of {', '.join(sorted(CHAT_ROLES))}",
            )
        out.append({"role": role, "content": message["content"]})
    return out


def _sharegpt_message(value: object, field: str, source: str) -> Message:
    if not isinstance(value, dict):
        raise DataError.at(
            source,
            f"must be an object with 'from' and 'value', got {_kind(value)}",
            field=field,
            fix='write {"from": "human", "value": "..."}',
        )
    for key in ("from", "value"):
        if not isinstance(value.get(key), str):
            got = _kind(value[key]) if key in value else "nothing"
            raise DataError.at(
                source,
                f"must be a string, got {got}",
                field=f"{field}.{key}",
                fix=f"give every turn a string '{key}'",
            )
    speaker = value["from"]
    if speaker not in SHAREGPT_ROLES:
        raise DataError.at(
            source,
            f"unknown speaker {speaker!r}",
            field=f"{field}.from",
            fix=f"use one of {', '.join(sorted(SHAREGPT_ROLES))}",
        )
    return {"role": SHAREGPT_ROLES[speaker], "content": value["value"]}


def _sharegpt(
    row: Mapping[object, object], source: str
) -> tuple[list[Message], list[Message], list[Message]]:
    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise DataError.at(
            source,
            "must be a non-empty list of turns"
            + ("" if isinstance(turns, list) else f", got {_kind(turns)}"),
            field="conversations",
            fix='write [{"from": "human", "value": "..."}, ...]',
        )
    prompt = [
        _sharegpt_message(turn, f"conversations[{i}]", source)
        for i, turn in enumerate(turns)
    ]
    responses = []
    for field in ("chosen", "rejected"):
        if field not in row:
            raise DataError.at(
                source,
                f"missing (row keys: {_keys(row)})",
                field=field,
                fix='a ShareGPT row needs {"from": "gpt", "value": "..."} chosen and '
                "rejected turns",
            )
        message = _sharegpt_message(row[field], field, source)
        if message["role"] != "assistant":
            raise DataError.at(
                source,
                f"is a {message['role']} turn",
                field=f"{field}.from",
                fix="the responses must come from an assistant speaker (gpt, "
                "assistant, ...)",
            )
        responses.append([message])
    return prompt, responses[0], responses[1]


def _explicit(
    row: Mapping[object, object], source: str, warn: Warn
) -> tuple[Text, Text, Text]:
    if isinstance(row["prompt"], list):
        prompt = _messages(row["prompt"], "prompt", source)
        if not prompt:
            raise DataError.at(
                source,
                "is an empty message list",
                field="prompt",
                fix="give at least one message (a user turn)",
            )
        chosen = _messages(row["chosen"], "chosen", source)
        rejected = _messages(row["rejected"], "rejected", source)
        for field, messages in (("chosen", chosen), ("rejected", rejected)):
            if not messages:
                raise DataError.at(
                    source,
                    "is an empty message list",
                    field=field,
                    fix="give the response as an assistant message",
                )
        return prompt, chosen, rejected
    for field in ("chosen", "rejected"):
        if isinstance(row[field], list):
            raise DataError.at(
                source,
                "is a message list but 'prompt' is not",
                field=field,
                fix="use messages for all three (conversational) or strings for "
                "all three (standard)",
            )
    chosen_text = _string(row, "chosen", source)
    rejected_text = _string(row, "rejected", source)
    if row["prompt"] is None or row["prompt"] == "":
        warn(
            DataWarning.at(
                "empty-prompt",
                source,
                f"is {'null' if row['prompt'] is None else 'empty'}; using "
                f"{EMPTY_PROMPT!r} so the first response token has a token before it",
                field="prompt",
                fix="give the prompt text if the pair has one",
            )
        )
        return EMPTY_PROMPT, chosen_text, rejected_text
    return _string(row, "prompt", source), chosen_text, rejected_text


def _implicit(
    row: Mapping[object, object], source: str, warn: Warn
) -> tuple[Text, Text, Text]:
    if isinstance(row["chosen"], list) or isinstance(row["rejected"], list):
        chosen = _messages(row["chosen"], "chosen", source)
        rejected = _messages(row["rejected"], "rejected", source)
        shared = 0
        while (
            shared < min(len(chosen), len(rejected))
            and chosen[shared] == rejected[shared]
        ):
            shared += 1
        if chosen == rejected:
            _identical(source)
        if shared == 0:
            raise DataError.at(
                source,
                "'chosen' and 'rejected' share no leading message, so no implicit "
                "prompt can be extracted",
                field="chosen",
                fix="add a 'prompt' field",
            )
        if shared == len(chosen) or shared == len(rejected):
            raise DataError.at(
                source,
                "has no message after the shared prompt",
                field="chosen" if shared == len(chosen) else "rejected",
                fix="end both conversations with the assistant's reply",
            )
        return chosen[:shared], chosen[shared:], rejected[shared:]
    chosen_text = _string(row, "chosen", source)
    rejected_text = _string(row, "rejected", source)
    if chosen_text == rejected_text:
        _identical(source)
    if chosen_text.startswith("\n\nHuman:") and rejected_text.startswith("\n\nHuman:"):
        return _hh(chosen_text, rejected_text, source, warn)
    prefix = os.path.commonprefix([chosen_text, rejected_text])
    if not prefix:
        raise DataError.at(
            source,
            "'chosen' and 'rejected' share no common prefix, so no implicit prompt "
            "can be extracted",
            field="chosen",
            fix="add a 'prompt' field (an empty string if there is none)",
        )
    return prefix, chosen_text[len(prefix) :], rejected_text[len(prefix) :]


def _hh(chosen: str, rejected: str, source: str, warn: Warn) -> tuple[Text, Text, Text]:
    """Split two HH transcripts at the last shared ``"\\n\\nAssistant:"``."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError.at(
            source,
            "'chosen' and 'rejected' share no '\\n\\nAssistant:' turn, so the HH "
            "prompt cannot be extracted",
            field="chosen",
            fix="start both transcripts with the same '\\n\\nHuman: ...\\n\\n"
            "Assistant:' dialogue",
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
        raise DataError.at(
            source,
            "is not an HH transcript",
            field="chosen",
            fix="write '\\n\\nHuman: ...\\n\\nAssistant: ...' turns",
        )
    for field, text in (("chosen", chosen[end:]), ("rejected", rejected[end:])):
        marker = next((m for m in HH_MARKERS if m in text), None)
        if marker is not None:
            warn(
                DataWarning.at(
                    "hh-marker",
                    source,
                    f"the reply contains the turn marker {marker!r}; the text after "
                    "it stays part of this one assistant reply",
                    field=field,
                    fix="cut the transcript there if the extra turns are leftovers",
                )
            )
    prompt = messages[:-1]
    return (
        prompt,
        _assistant(chosen[end:].strip()),
        _assistant(rejected[end:].strip()),
    )


def _identical(source: str) -> None:
    raise DataError.at(
        source,
        "is identical to 'chosen'",
        field="rejected",
        fix="a pair needs two different responses; fix or drop the row",
    )


def _text_of(response: Text) -> str:
    if isinstance(response, str):
        return response
    return "".join(message["content"] for message in response)


def _check_responses(chosen: Text, rejected: Text, source: str, warn: Warn) -> None:
    blank = [
        field
        for field, response in (("chosen", chosen), ("rejected", rejected))
        if not _text_of(response).strip()
    ]
    if len(blank) == 2:
        raise DataError.at(
            source,
            "both responses are empty or whitespace only",
            field="chosen",
            fix="a pair needs at least one response with text; fix or drop the row",
        )
    if chosen == rejected:
        _identical(source)
    for field in blank:
        warn(
            DataWarning.at(
                "blank-response",
                source,
                "the response is empty or whitespace only; it trains as the "
                "end-of-sequence token alone",
                field=field,
                fix="fix or drop the row if that is not intended",
            )
        )


def _finite_float(value: object, field: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError.at(
            source,
            f"must be a number, got {_kind(value)}",
            field=field,
            fix="write weights as numbers",
        )
    try:
        number = float(value)
    except OverflowError:  # an int beyond float64
        number = math.inf
    if not (math.isfinite(number) and abs(number) <= FLOAT32_MAX):
        raise DataError.at(
            source,
            f"is {value!r}, not finite in float32 (the largest is about 3.4e38)",
            field=field,
            fix="use finite weights of moderate size",
        )
    return number


def _weights(
    row: Mapping[object, object], field: str, source: str
) -> tuple[float, ...] | None:
    value = row.get(field)
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, list):
        value = value.tolist()  # numpy / torch / arrow arrays from a data set
    if not isinstance(value, list | tuple):
        raise DataError.at(
            source,
            f"must be a list of numbers, got {_kind(value)}",
            field=field,
            fix="write one number per response token, e.g. [1.0, 0.5]",
        )
    return tuple(
        _finite_float(item, f"{field}[{i}]", source) for i, item in enumerate(value)
    )


def _example_weight(row: Mapping[object, object], source: str) -> float | None:
    value = row.get(EXAMPLE_WEIGHT_COLUMN)
    if value is None:
        return None
    number = _finite_float(value, EXAMPLE_WEIGHT_COLUMN, source)
    if number < 0:
        raise DataError.at(
            source,
            f"must be >= 0, got {value!r}",
            field=EXAMPLE_WEIGHT_COLUMN,
            fix="use a non-negative per-pair weight",
        )
    return number


__all__ = [
    "CHAT_ROLES",
    "EMPTY_PROMPT",
    "FLOAT32_MAX",
    "HH_ASSISTANT",
    "SHAREGPT_ROLES",
    "record_from_row",
]
