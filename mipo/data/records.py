"""The internal preference record every input format is converted to.

Whatever the file looked like (TRL standard or conversational, ShareGPT, HH
transcripts, Stack Exchange pairs), the rest of the pipeline sees one
:class:`PreferenceRecord`: a prompt x, a chosen response y_w and a rejected
response y_l, plus optional per-token and per-example weights.
"""

from dataclasses import dataclass
from typing import final

Message = dict[str, str]
"""One chat message: ``{"role": "user" | "assistant" | "system" | ..., "content": str}``."""
Text = str | list[Message]
"""A plain string (standard format) or a list of chat messages (conversational)."""


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class PreferenceRecord:
    """One preference pair (x, y_w, y_l) in a format-blind form.

    Args:
        prompt: the prompt x; a string (standard format, tokenised as is) or a
            list of role/content messages (conversational, rendered with the
            tokenizer's chat template).
        chosen: the preferred response y_w; a string, or the assistant message(s)
            that follow the prompt.
        rejected: the dispreferred response y_l, same kind as ``chosen``.
        chosen_token_weights: per-token weights of y_w (e.g. TIS-DPO's importance
            weights), aligned with the completion tokens of mipo's tokenisation,
            EOS included (a column one shorter gets EOS weight 0, see
            :mod:`mipo.data.tokenize`).
        rejected_token_weights: the same for y_l.
        chosen_kl_weights: per-token weights on the KL term of y_w (SparsePO).
        rejected_kl_weights: the same for y_l.
        example_weight: a per-pair weight from the data (the ``weight`` column).
        gold: the gold answer, for tasks with a programmatic reward
            (:mod:`mipo.data.builtin`).
        source: where the record came from: ``FILE:LINE`` for text files (the
            line the row starts on, 1-based; ``FILE:LINE:COLUMN`` when several
            rows of a JSON array share a line), ``FILE:ROW`` for Parquet and
            ``NAME[SPLIT]:ROW`` for data sets (rows numbered from 1), ``<rows>:ROW``
            for a Python list, ``builtin:NAME[INDEX]`` for the built-in task;
            every later error about this record quotes it.
    """

    prompt: Text
    chosen: Text
    rejected: Text
    chosen_token_weights: tuple[float, ...] | None = None
    rejected_token_weights: tuple[float, ...] | None = None
    chosen_kl_weights: tuple[float, ...] | None = None
    rejected_kl_weights: tuple[float, ...] | None = None
    example_weight: float | None = None
    gold: str | None = None
    source: str = "<unknown>"

    @property
    def conversational(self) -> bool:
        """True when prompt and responses are message lists (chat template applies)."""
        return isinstance(self.prompt, list)


__all__ = ["Message", "PreferenceRecord", "Text"]
