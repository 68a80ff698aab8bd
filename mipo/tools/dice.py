r"""DICE: self-rewarding rounds of DPO with the policy's implicit reward.

Chen et al., "Bootstrapping Language Models with DPO Implicit Rewards", arXiv
2406.09760; released code sail-sg/dice @ ``865aa6d`` (``scripts/run_dice``,
``scripts/data_script``). The training loss is plain DPO (any recipe); what DICE
adds is the data. One round, for a policy :math:`\pi_\theta` that was
DPO-trained against :math:`\pi_{\mathrm{ref}}`:

1. sample :math:`K` candidates :math:`y^{(1..K)} \sim \pi_\theta(\cdot|x)` per
   prompt (:func:`sample_candidates`), and keep those that stopped by
   themselves and fall within the length bounds; prompts left with too few
   candidates are dropped (:func:`keep_candidates`, :func:`score_candidates`);
2. score each with the DPO implicit reward, :math:`\beta`-free (the released
   ``generate_dpo_scores.py`` subtracts the summed log-probs):

   .. math::

       r(x, y) = \sum_{t \in y} \big(\log \pi_\theta(y_t|s_t)
                 - \log \pi_{\mathrm{ref}}(y_t|s_t)\big)

   over every response token, EOS included (:func:`implicit_rewards`);
3. regularise the length, :math:`r_\alpha(x, y) = r(x, y) - \alpha\,|y|_{\mathrm{chars}}`,
   with :math:`\alpha` from a grid chosen to make the **signed** mean length gap
   :math:`\frac{1}{N}\sum_i (|y_w^i| - |y_l^i|)` of the constructed pairs closest
   to zero (:func:`choose_length_alpha`; the released ``optimize_alpha`` minimises
   the absolute value of the signed mean, not the mean absolute gap);
4. pair :math:`y_w = \arg\max_k r_\alpha`, :math:`y_l = \arg\min_k r_\alpha`
   (:func:`build_pairs`);
5. mix in offline pairs by experience replay, a fraction :math:`\gamma` of the
   final training set (:func:`replay`; the release fixes the total at the
   offline set's size, ``total="offline"``);
6. train the policy with DPO on the result; the trained model is the next
   round's policy, and the model it started from is the next round's
   :math:`\pi_{\mathrm{ref}}` for scoring.

Reference of later rounds. In the release (``scripts/run_dice/pipeline.sh``) round
2 trains from the round-1 model with no separate ``ref_model`` (LLaMA-Factory
then uses a copy of the starting model), and scores with the round-1 model
against the round-0 model: the reference is always the *previous* iterate. That
is what :func:`run_dice` does (``reference="previous"``), because mipo's trainer
takes its reference from ``train.model``; ``"initial"`` (keep the first model as
the reference) would need the trainer to load a reference from a second path and
is refused.

Presets. The defaults suit a short run; :data:`RELEASE_SETTINGS` and
:data:`RELEASE_TRAIN_OVERRIDES` (``--preset release``) are the released
pipeline's values. Every remaining difference from the release is listed in
``docs/guides/dice.md`` (section "Fidelity to the release").

Command line::

    python -m mipo.dice recipes/dpo.py --prompts prompts.jsonl \
        --offline pairs.jsonl --score-reference SFT_MODEL --rounds 2 \
        --samples 8 --offline-ratio 0.25 --out runs/dice [--train.FIELD=VALUE ...]
"""

import argparse
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, final

import numpy as np
import torch
from torch import nn

from mipo.data.collate import collate
from mipo.data.errors import DataError
from mipo.data.load import load_records
from mipo.data.records import Message, PreferenceRecord, Text
from mipo.data.tokenize import EncodedPair, encode_record
from mipo.training.logps import final_hidden_states, token_stats

_NO_TRUNCATION = 1 << 30
"""A ``max_length`` no sample reaches: candidates are scored whole."""
DEFAULT_ALPHA_GRID = tuple(i / 1000 for i in range(1000))
"""``np.arange(0.0, 1.0, 0.001)``: the released ``alpha_range`` default."""


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class ScoredPrompt:
    """One prompt with its sampled candidates and their implicit rewards.

    Args:
        prompt: the prompt :math:`x` (a string, or chat messages).
        responses: the candidate texts :math:`y^{(k)}`.
        scores: :math:`r(x, y^{(k)})`, one per response.
    """

    prompt: Text
    responses: tuple[str, ...]
    scores: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.responses:
            raise ValueError("ScoredPrompt: no responses")
        if len(self.responses) != len(self.scores):
            raise ValueError(
                f"ScoredPrompt: {len(self.responses)} responses but "
                f"{len(self.scores)} scores"
            )
        bad = [i for i, s in enumerate(self.scores) if not math.isfinite(s)]
        if bad:
            raise ValueError(f"ScoredPrompt: non-finite scores at candidates {bad}")


def _response(prompt: Text, text: str) -> Text:
    """The response in the prompt's kind: a string, or one assistant message."""
    if isinstance(prompt, list):
        return [{"role": "assistant", "content": text}]
    return text


def _encode(tokenizer: Any, prompt: Text, text: str) -> EncodedPair:
    # encode_record is the tokenisation training uses: r(x, y) then sums over the
    # same tokens as the DPO loss's log-ratios (before max_length truncation).
    response = _response(prompt, text)
    record = PreferenceRecord(
        prompt=prompt, chosen=response, rejected=response, source="dice candidate"
    )
    return encode_record(
        record,
        tokenizer,
        max_length=_NO_TRUNCATION,
        max_prompt_length=_NO_TRUNCATION - 1,
    )


@contextlib.contextmanager
def _eval_mode(*models: nn.Module) -> Iterator[None]:
    modes = [model.training for model in models]
    for model in models:
        model.eval()
    try:
        yield
    finally:
        for model, mode in zip(models, modes, strict=True):
            model.train(mode)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    """One sampled response.

    Args:
        text: the decoded response before its first stop token.
        truncated: it reached ``max_new_tokens`` without a stop token (the
            release's ``finish_reason == "length"``).
    """

    text: str
    truncated: bool


def stop_token_ids(model: nn.Module, tokenizer: Any) -> tuple[int, ...]:
    """The ids that end a turn: the tokenizer's EOS and every id of the model's
    ``generation_config.eos_token_id`` (Llama-3-Instruct lists both
    ``<|end_of_text|>`` and ``<|eot_id|>``, as the release's stop ids do)."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    for value in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    if not ids:
        raise ValueError("sample_candidates: the tokenizer and model name no EOS id")
    return tuple(ids)


def sample_candidates(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Text],
    *,
    num_samples: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    strip: bool = False,
) -> list[list[Candidate]]:
    r"""Draw ``num_samples`` responses :math:`y \sim \pi_\theta(\cdot|x)` per prompt.

    Prompts are tokenised exactly as training tokenises them (chat template with
    the generation prompt for message lists, :func:`mipo.data.encode_record`),
    left-padded into batches of ``batch_size`` prompts, and sampled without
    gradient under a seeded RNG that does not disturb the caller's. Only
    temperature and nucleus (``top_p``) filtering apply (``top_k`` off, no
    repetition penalty; the checkpoint's own generation settings are not read).
    Sampling stops at any of :func:`stop_token_ids`. A response is the decoded
    text before its first stop token, stripped of surrounding whitespace when
    ``strip`` (as the release does); :attr:`Candidate.truncated` marks one that
    reached ``max_new_tokens`` first.

    Returns:
        ``candidates[i][k]``: the ``k``-th sample for ``prompts[i]``.
    """
    from transformers import GenerationConfig

    if num_samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(
            "sample_candidates: num_samples, max_new_tokens and batch_size must be "
            f">= 1, got {num_samples}, {max_new_tokens}, {batch_size}"
        )
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"sample_candidates: temperature must be > 0, got {temperature}"
        )
    if not 0 < top_p <= 1:
        raise ValueError(f"sample_candidates: top_p must be in (0, 1], got {top_p}")
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_samples,
        pad_token_id=pad,
        eos_token_id=list(stops),
    )
    device = _device(model)
    cuda = [device.index or 0] if device.type == "cuda" else []
    out: list[list[Candidate]] = []
    with torch.random.fork_rng(devices=cuda), torch.no_grad(), _eval_mode(model):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids = [_encode(tokenizer, prompt, "").prompt_ids for prompt in chunk]
            width = max(len(row) for row in ids)
            input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
            for row, prompt_ids in enumerate(ids):
                input_ids[row, width - len(prompt_ids) :] = torch.tensor(prompt_ids)
                attention_mask[row, width - len(prompt_ids) :] = 1
            generated = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                generation_config=config,
            )
            # generate repeats each prompt num_samples times, consecutively.
            new = generated[:, width:].tolist()
            for row in range(len(chunk)):
                samples = new[row * num_samples : (row + 1) * num_samples]
                out.append([_decode(tokenizer, t, stops, strip) for t in samples])
    return out


def _decode(
    tokenizer: Any, tokens: list[int], stops: Sequence[int], strip: bool
) -> Candidate:
    end = next((i for i, token in enumerate(tokens) if token in stops), None)
    text = tokenizer.decode(tokens[:end], skip_special_tokens=True)
    return Candidate(text=text.strip() if strip else text, truncated=end is None)


def keep_candidates(
    candidates: Sequence[Candidate],
    *,
    drop_truncated: bool = True,
    min_chars: int = 0,
    max_chars: int | None = None,
) -> list[str]:
    """The texts of the candidates the release would score: not truncated (when
    ``drop_truncated``) and ``min_chars <= len(text) <= max_chars`` characters.
    The release keeps ``3 < len < 6700``, i.e. ``min_chars=4, max_chars=6699``
    (``filt_invalid_pairs`` in ``generate_dpo_scores.py``)."""
    return [
        c.text
        for c in candidates
        if not (drop_truncated and c.truncated)
        and len(c.text) >= min_chars
        and (max_chars is None or len(c.text) <= max_chars)
    ]


def implicit_rewards(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: Any,
    prompt: Text,
    responses: Sequence[str],
    *,
    batch_size: int = 8,
    chunk_size: int | None = None,
) -> list[float]:
    r"""DICE's score :math:`r(x, y) = \sum_{t \in y} (\log \pi_\theta(y_t|s_t) -
    \log \pi_{\mathrm{ref}}(y_t|s_t))` of each response (arXiv 2406.09760, Eq. 2
    without :math:`\beta`, as in the released scoring script).

    Responses are tokenised as training tokenises them (EOS appended and counted,
    no truncation), right-padded in batches of ``batch_size`` and run through
    :func:`mipo.training.logps.final_hidden_states` and :func:`mipo.training.logps.token_stats`
    without gradient. Both models must sit on one device and use ``tokenizer``'s
    vocabulary.
    """
    if batch_size < 1:
        raise ValueError(f"implicit_rewards: batch_size must be >= 1, got {batch_size}")
    pad = tokenizer.pad_token_id
    pad = tokenizer.eos_token_id if pad is None else pad
    device = _device(policy)
    encoded = [_encode(tokenizer, prompt, text) for text in responses]
    scores: list[float] = []
    with torch.no_grad(), _eval_mode(policy, reference):
        for start in range(0, len(encoded), batch_size):
            side = collate(encoded[start : start + batch_size], pad_token_id=pad)
            side = side.chosen.to(device)
            stats = token_stats(
                final_hidden_states(policy, side.input_ids, side.attention_mask),
                policy.get_output_embeddings(),
                side.labels,
                reference_hidden=final_hidden_states(
                    reference, side.input_ids, side.attention_mask
                ),
                reference_head=reference.get_output_embeddings(),
                chunk_size=chunk_size,
            )
            assert stats.reference_logps is not None  # asked for by reference_hidden
            ratio = (stats.policy_logps - stats.reference_logps).double()
            summed = (ratio * stats.response_mask).sum(dim=-1)
            scores.extend(float(value) for value in summed)
    return scores


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class _Table:
    """Scores, lengths and text ids of every candidate, padded to ``[P, K]``, so
    a grid of alphas costs a few array operations each (10k prompts x 16
    samples x 1000 alphas in Python loops would take minutes)."""

    scores: np.ndarray  # [P, K] float64, 0 on padding
    lengths: np.ndarray  # [P, K] len_chars, 0 on padding
    text_ids: np.ndarray  # [P, K] equal ids <=> equal texts within a prompt
    padding: np.ndarray  # [P, K] True on padding


def _table(scored: Sequence[ScoredPrompt]) -> _Table:
    width = max((len(item.responses) for item in scored), default=1)
    shape = (len(scored), width)
    table = _Table(
        scores=np.zeros(shape),
        lengths=np.zeros(shape),
        text_ids=np.full(shape, -1, dtype=np.int64),
        padding=np.ones(shape, dtype=bool),
    )
    for row, item in enumerate(scored):
        k = len(item.responses)
        ids: dict[str, int] = {}
        table.scores[row, :k] = item.scores
        table.lengths[row, :k] = [len(text) for text in item.responses]
        table.text_ids[row, :k] = [ids.setdefault(t, len(ids)) for t in item.responses]
        table.padding[row, :k] = False
    return table


def _pick(table: _Table, alpha: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per prompt: argmax and argmin of r - alpha * len_chars (first index on
    ties, as ``np.argmax``), and whether the two are different texts."""
    regularised = table.scores - alpha * table.lengths
    chosen = np.where(table.padding, -np.inf, regularised).argmax(axis=1)
    rejected = np.where(table.padding, np.inf, regularised).argmin(axis=1)
    rows = np.arange(len(chosen))
    kept = table.text_ids[rows, chosen] != table.text_ids[rows, rejected]
    return chosen, rejected, kept


def _gap(table: _Table, alpha: float) -> float:
    chosen, rejected, kept = _pick(table, alpha)
    if not kept.any():
        return math.nan
    rows = np.arange(len(chosen))
    gaps = table.lengths[rows, chosen] - table.lengths[rows, rejected]
    return float(gaps[kept].mean())


def length_gap(scored: Sequence[ScoredPrompt], alpha: float) -> float:
    r"""Signed mean length gap :math:`\frac{1}{N}\sum_i (|y_w^i| - |y_l^i|)`, in
    characters, of the pairs :func:`build_pairs` makes at ``alpha`` (NaN when it
    makes none)."""
    return _gap(_table(scored), alpha)


def choose_length_alpha(
    scored: Sequence[ScoredPrompt],
    grid: Sequence[float] = DEFAULT_ALPHA_GRID,
    *,
    stop_early: bool = False,
) -> float:
    r"""The :math:`\alpha` of ``grid`` whose pairs have the signed mean length gap
    closest to zero, :math:`\arg\min_\alpha |\mathrm{length\_gap}(\alpha)|`
    (the first such :math:`\alpha` in grid order on ties).

    ``stop_early=False`` scans the whole grid. ``stop_early=True`` is the
    release's scan (``optimize_alpha``): it stops at the first :math:`\alpha`
    whose :math:`|\mathrm{gap}|` exceeds the smallest one so far, so it returns
    the first local minimum along the grid.
    """
    if not grid:
        raise ValueError("choose_length_alpha: empty grid")
    bad = [alpha for alpha in grid if not math.isfinite(alpha)]
    if bad:
        raise ValueError(f"choose_length_alpha: non-finite grid values {bad}")
    table = _table(scored)
    best, best_gap = None, math.inf
    for alpha in grid:
        gap = abs(_gap(table, alpha))
        if gap < best_gap:  # NaN (no pair) never wins
            best, best_gap = alpha, gap
        elif stop_early and gap > best_gap:
            break
    if best is None:
        raise ValueError(
            "choose_length_alpha: no prompt gives a pair (every prompt's best and "
            "worst candidates are the same text, e.g. identical samples, or all "
            "scores tied because the policy equals its reference)"
        )
    return best


def build_pairs(
    scored: Sequence[ScoredPrompt], *, alpha: float
) -> list[PreferenceRecord]:
    r"""One pair per prompt: :math:`y_w = \arg\max_k r_\alpha(x, y^{(k)})`,
    :math:`y_l = \arg\min_k r_\alpha(x, y^{(k)})` with
    :math:`r_\alpha = r - \alpha |y|_{\mathrm{chars}}` (first index on ties).

    A prompt is skipped when its chosen and rejected texts are equal (all its
    candidates identical, or all regularised scores tied).
    """
    chosen, rejected, kept = _pick(_table(scored), alpha)
    return [
        PreferenceRecord(
            prompt=item.prompt,
            chosen=_response(item.prompt, item.responses[chosen[index]]),
            rejected=_response(item.prompt, item.responses[rejected[index]]),
            source=f"dice prompt {index}",
        )
        for index, item in enumerate(scored)
        if kept[index]
    ]


def offline_count(num_new: int, ratio: float) -> int:
    r"""Offline pairs to add to ``num_new`` generated ones so that they make a
    fraction :math:`\gamma` = ``ratio`` of the final set:
    :math:`n_{\mathrm{off}} = \mathrm{round}(\gamma\, n_{\mathrm{new}} / (1 - \gamma))`
    (exact whenever that is an integer)."""
    _check_ratio(ratio)
    return round(ratio * num_new / (1.0 - ratio))


def _check_ratio(ratio: float) -> None:
    if not (math.isfinite(ratio) and 0.0 <= ratio < 1.0):
        raise ValueError(f"replay: ratio must be in [0, 1), got {ratio}")


def release_counts(num_new: int, num_offline: int, ratio: float) -> tuple[int, int]:
    r"""The release's mix (``create_mix_paired_set``): the total is the offline
    set's size :math:`N`, so
    :math:`n_{\mathrm{gen}} = \min(\lfloor N (1 - \gamma)\rfloor, n_{\mathrm{new}})`
    generated pairs and
    :math:`n_{\mathrm{off}} = \lfloor \gamma\, n_{\mathrm{gen}} / (1 - \gamma)\rfloor`
    offline pairs (float64 products, truncated as ``int()`` does)."""
    _check_ratio(ratio)
    generated = min(int(num_offline * (1 - ratio)), num_new)
    return generated, int(ratio * generated / (1 - ratio))


def _prompt_key(prompt: Text) -> str:
    return json.dumps(prompt, sort_keys=True)


ReplayTotal = Literal["generated", "offline"]


def replay(
    new_pairs: Sequence[PreferenceRecord],
    offline_pairs: Sequence[PreferenceRecord],
    *,
    ratio: float,
    seed: int,
    total: ReplayTotal = "generated",
) -> list[PreferenceRecord]:
    r"""Experience replay: offline pairs make a fraction :math:`\gamma` = ``ratio``
    of the result (DICE's ``OFFLINE_DATA_RATIO``).

    ``total="generated"`` keeps every generated pair and adds
    :func:`offline_count` offline ones. ``total="offline"`` is the release's rule
    (:func:`release_counts`): a seeded subset of the generated pairs, so that the
    result has about as many pairs as the offline set; with the same prompt pool
    for sampling and replay (as in the release) the prompts left out of that
    subset are the ones replayed. At ``ratio = 0`` both keep exactly the
    generated pairs (the release then trains on its generated set alone).

    The offline pairs are a seeded draw without replacement, in their file order,
    among those whose prompt no kept generated pair has (as the release does);
    kept generated pairs stay in their order.

    Raises:
        ValueError: ``ratio`` outside ``[0, 1)``, or too few eligible offline pairs.
    """
    _check_ratio(ratio)
    if ratio == 0.0:
        return list(new_pairs)
    rng = random.Random(seed)
    if total == "offline":
        keep_new, wanted = release_counts(len(new_pairs), len(offline_pairs), ratio)
        chosen = sorted(rng.sample(range(len(new_pairs)), keep_new))
        new_pairs = [new_pairs[i] for i in chosen]
    elif total == "generated":
        wanted = offline_count(len(new_pairs), ratio)
    else:
        raise ValueError(
            f"replay: total must be 'generated' or 'offline', got {total!r}"
        )
    taken = {_prompt_key(pair.prompt) for pair in new_pairs}
    eligible = [p for p in offline_pairs if _prompt_key(p.prompt) not in taken]
    if wanted > len(eligible):
        hint = (
            "; when the offline pairs share the sampling prompts, pass "
            "--replay-total offline (the release's rule: it keeps only part of the "
            "generated pairs, so the other prompts' offline pairs can be replayed), "
            "or give offline pairs with other prompts"
            if total == "generated"
            else ""
        )
        raise ValueError(
            f"replay: ratio {ratio} with {len(new_pairs)} generated pairs needs "
            f"{wanted} offline pairs, but only {len(eligible)} of the "
            f"{len(offline_pairs)} offline pairs have a prompt not generated for{hint}"
        )
    keep = sorted(rng.sample(range(len(eligible)), wanted))
    return [*new_pairs, *(eligible[i] for i in keep)]


_WEIGHT_KEYS = {
    "chosen_token_weights": "chosen_weight",
    "rejected_token_weights": "rejected_weight",
    "chosen_kl_weights": "chosen_kl_weight",
    "rejected_kl_weights": "rejected_kl_weight",
}


def record_row(record: PreferenceRecord) -> dict[str, Any]:
    """A TRL-format row (explicit prompt; conversational or standard, as the
    record is) that :func:`mipo.data.load_records` reads back to ``record``."""
    row: dict[str, Any] = {
        "prompt": record.prompt,
        "chosen": record.chosen,
        "rejected": record.rejected,
    }
    for name, key in _WEIGHT_KEYS.items():
        values = getattr(record, name)
        if values is not None:
            row[key] = list(values)
    if record.example_weight is not None:
        row["weight"] = record.example_weight
    return row


def write_pairs(path: str | Path, records: Sequence[PreferenceRecord]) -> Path:
    """Write ``records`` as JSON lines (:func:`record_row`) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record_row(record), ensure_ascii=False) + "\n")
    return path


def load_prompts(path: str | Path) -> list[list[Message]]:
    """Prompts from a ``.json`` array or ``.jsonl`` file of objects with a
    ``prompt`` field: a string (becomes one user message) or a message list.
    Preference files qualify (their other fields are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such prompts file")
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[str, object]]
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path}:{number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise DataError(
                    f"{path}:{number}: invalid JSON ({error.msg})"
                ) from None
    elif path.suffix == ".json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path}: invalid JSON ({error.msg}, line {error.lineno})"
            ) from None
        if not isinstance(document, list):
            raise DataError(f"{path}: a .json prompts file must hold a JSON array")
        rows = [(f"{path}[{i}]", row) for i, row in enumerate(document)]
    else:
        raise DataError(f"{path}: prompts must be a .json or .jsonl file")
    prompts = [_prompt_of(row, source) for source, row in rows]
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def _prompt_of(row: object, source: str) -> list[Message]:
    if not isinstance(row, dict) or "prompt" not in row:
        raise DataError(f"{source}: expected an object with a 'prompt' field")
    value = row["prompt"]
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(
        f"{source}: field 'prompt' must be a string or a non-empty list of "
        "{'role', 'content'} messages"
    )


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class DiceSettings:
    r"""Settings of :func:`run_dice` besides the recipe and its overrides.

    The defaults are mipo's small-run choices; :data:`RELEASE_SETTINGS` holds the
    release's values (``--preset release``).

    Args:
        prompts: the prompts file (:func:`load_prompts`).
        offline: an offline preference file for replay (needed when
            ``offline_ratio > 0``).
        score_reference: the model the starting policy was DPO-trained from; the
            round-0 implicit reward is measured against it.
        out: output directory (``round-k/`` per round, ``summary.json``).
        rounds: DICE rounds.
        samples: candidates per prompt, :math:`K`.
        offline_ratio: :math:`\gamma`, the offline fraction of each training set.
        replay_total: ``"generated"`` (keep every generated pair) or
            ``"offline"`` (the release: the total is the offline set's size);
            see :func:`replay`.
        reference: ``"previous"`` (the only supported choice, see the module
            docstring).
        max_new_tokens: longest sampled response, in tokens.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        strip: strip whitespace around each sampled text (the release does).
        drop_truncated: drop samples that reached ``max_new_tokens`` without a
            stop token (else they are scored with an EOS the model never made).
        min_chars, max_chars: keep responses of ``min_chars`` to ``max_chars``
            characters (``None``: no upper bound).
        min_candidates: drop prompts with fewer kept candidates than this.
        alpha_grid: the grid :func:`choose_length_alpha` searches.
        alpha_stop_early: stop the scan at the first local minimum (the release).
        batch_size: prompts per generation batch and responses per scoring batch.
    """

    prompts: str
    offline: str | None
    score_reference: str
    out: str
    rounds: int = 1
    samples: int = 8
    offline_ratio: float = 0.0
    replay_total: ReplayTotal = "generated"
    reference: str = "previous"
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    strip: bool = False
    drop_truncated: bool = True
    min_chars: int = 0
    max_chars: int | None = None
    min_candidates: int = 2
    alpha_grid: tuple[float, ...] = DEFAULT_ALPHA_GRID
    alpha_stop_early: bool = False
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.reference != "previous":
            raise ValueError(
                f"--reference {self.reference!r}: only 'previous' is supported. The "
                "trainer copies its reference from train.model, the round's starting "
                "policy; keeping the initial model as reference needs a trainer "
                "option to load the reference from another path"
            )
        if self.rounds < 1 or self.samples < 2:
            raise ValueError(
                f"DICE needs rounds >= 1 and samples >= 2, got rounds={self.rounds}, "
                f"samples={self.samples}"
            )
        offline_count(0, self.offline_ratio)  # validates the ratio
        if self.offline_ratio > 0 and self.offline is None:
            raise ValueError("--offline-ratio > 0 needs an --offline file")
        if self.replay_total not in ("generated", "offline"):
            raise ValueError(
                f"--replay-total {self.replay_total!r}: expected 'generated' or "
                "'offline'"
            )
        if self.min_candidates < 2 or self.min_chars < 0:
            raise ValueError(
                f"--min-candidates must be >= 2 and --min-chars >= 0, got "
                f"{self.min_candidates} and {self.min_chars}"
            )
        if self.max_chars is not None and self.max_chars < self.min_chars:
            raise ValueError(
                f"--max-chars {self.max_chars} is below --min-chars {self.min_chars}"
            )


RELEASE_SETTINGS: dict[str, Any] = {
    "rounds": 2,  # scripts/run_dice/iter.sh
    "samples": 16,  # pipeline.sh: 2 x 8 runs of one sample per prompt
    "max_new_tokens": 2048,  # generate_responses.py max_token
    "temperature": 0.7,  # configs/gen.py DEFAULT (Zephyr; Llama-3: 0.9)
    "top_p": 0.9,  # configs/gen.py DEFAULT (Llama-3: 1.0)
    "strip": True,  # output.outputs[0].text.strip()
    "drop_truncated": True,  # filt_invalid_pairs: stop_reason != "length"
    "min_chars": 4,  # filt_invalid_pairs: len > 3
    "max_chars": 6699,  # filt_invalid_pairs: len < 6700
    "min_candidates": 8,  # pipeline.sh --n_least_score 8
    "offline_ratio": 0.5,  # iter.sh OFFLINE_DATA_RATIO
    "replay_total": "offline",  # create_mix_paired_set: n_total = len(offline)
    "alpha_stop_early": True,  # optimize_alpha breaks once the gap grows
}
"""The released pipeline's data settings (sail-sg/dice @ ``865aa6d``), for
``DiceSettings(**RELEASE_SETTINGS, ...)`` or ``--preset release``. Stop ids:
:func:`stop_token_ids` in every setting."""

RELEASE_TRAIN_OVERRIDES: dict[str, Any] = {
    "objective.beta": 0.1,  # pipeline.sh DPO_BETA
    "train.optimizer": "adamw",  # LLaMA-Factory / HF Trainer default
    "train.learning_rate": 5e-7,
    # lr_scheduler_type constant: the HF "constant" schedule ignores the
    # release's --warmup_steps 50, so the rate is 5e-7 from the first step
    "train.lr_schedule": "constant",
    "train.warmup_steps": 0,
    "train.warmup_ratio": 0.0,
    "train.max_steps": 300,
    # 1 per device x 4 accumulation x 8 GPUs = 32 pairs per step
    "train.batch_size": 4,
    "train.gradient_accumulation_steps": 8,
    "train.max_grad_norm": 1.0,  # HF Trainer default
    "train.max_length": 4096,  # --cutoff_len 4096
    "train.max_prompt_length": 2048,  # LLaMA-Factory splits cutoff_len by ratio
    "train.max_examples": 0,
    "train.eval_fraction": 0.0576,  # --val_size 576 of a 10,000-pair set
}
"""The release's per-round DPO training (``pipeline.sh`` step 2), as
``--train.*`` / ``--objective.*`` overrides under the user's own; for a recipe
with a ``beta`` factory argument (``recipes/dpo.py``)."""


def score_candidates(
    policy: nn.Module,
    reference: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Text],
    candidates: Sequence[Sequence[Candidate]],
    settings: DiceSettings,
) -> tuple[list[ScoredPrompt], dict[str, int]]:
    """Filter each prompt's candidates (:func:`keep_candidates` with the
    settings' bounds), drop prompts left with fewer than
    ``settings.min_candidates``, and score the rest with :func:`implicit_rewards`.
    Also returns the counts of what was dropped."""
    counts = {"truncated_samples": 0, "length_filtered": 0, "dropped_prompts": 0}
    scored: list[ScoredPrompt] = []
    for prompt, samples in zip(prompts, candidates, strict=True):
        complete = keep_candidates(
            samples, drop_truncated=settings.drop_truncated, max_chars=None
        )
        texts = keep_candidates(
            samples,
            drop_truncated=settings.drop_truncated,
            min_chars=settings.min_chars,
            max_chars=settings.max_chars,
        )
        counts["truncated_samples"] += sum(c.truncated for c in samples)
        counts["length_filtered"] += len(complete) - len(texts)
        if len(texts) < settings.min_candidates:
            counts["dropped_prompts"] += 1
            continue
        rewards = implicit_rewards(
            policy, reference, tokenizer, prompt, texts, batch_size=settings.batch_size
        )
        scored.append(
            ScoredPrompt(prompt=prompt, responses=tuple(texts), scores=tuple(rewards))
        )
    return scored, counts


RESERVED_OVERRIDES = ("train.dataset", "train.output_dir")
"""Overrides DICE sets itself in every round."""


@dataclass(frozen=True, slots=True)
class _Inputs:
    config: Any
    prompts: list[list[Message]]
    offline: list[PreferenceRecord]
    policy_path: str
    score_reference: str


def _read_inputs(
    recipe: str | Path, settings: DiceSettings, overrides: dict[str, Any]
) -> _Inputs:
    """Every input of :func:`run_dice` checked, cheapest first: the overrides,
    the recipe, the prompts and offline files, and only then the model paths
    (which may convert a model); nothing is written and no model is loaded."""
    from mipo.training.cli import OverrideError, resolve
    from mipo.training.models import resolve_model_path
    from mipo.training.recipes import load_recipe

    reserved = [key for key in RESERVED_OVERRIDES if key in overrides]
    if reserved:
        raise OverrideError(
            f"{', '.join('--' + key for key in reserved)}: set by mipo.dice in every "
            "round; leave it out"
        )
    config, _, _ = resolve(load_recipe(recipe), overrides)
    if config.lora_rank > 0 and settings.rounds > 1:
        raise OverrideError(
            "train.lora_rank > 0: a LoRA checkpoint holds only the adapter, and the "
            "next round needs a full model directory as train.model; use full "
            "fine-tuning for more than one round"
        )
    prompts = load_prompts(settings.prompts)
    offline = load_records(settings.offline) if settings.offline is not None else []
    policy_path = resolve_model_path(config.model)
    score_reference = resolve_model_path(settings.score_reference)
    if Path(policy_path).resolve() == Path(score_reference).resolve():
        raise ValueError(
            f"--score-reference {settings.score_reference}: it is the starting "
            "policy itself, so every implicit reward would be 0; pass the model the "
            "policy was DPO-trained from"
        )
    return _Inputs(config, prompts, offline, policy_path, score_reference)


def run_dice(
    recipe: str | Path,
    settings: DiceSettings,
    overrides: dict[str, Any] | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``settings.rounds`` rounds of sample -> score -> pair -> train.

    Round ``k`` samples with its policy (round 0: the recipe's ``train.model``;
    later: the previous round's final checkpoint), scores against its scoring
    reference (round 0: ``settings.score_reference``; later: the previous round's
    starting policy, the reference that round trained against), writes
    ``out/round-k/candidates.jsonl`` and ``out/round-k/pairs.jsonl``, and trains
    ``recipe`` on the pairs from the policy with ``overrides``. Returns the
    summary also written to ``out/summary.json``.
    """
    from mipo.training.models import load_causal_lm, load_tokenizer
    from mipo.training.run_dir import latest_checkpoint
    from mipo.training.trainer import train

    overrides = dict(overrides or {})
    inputs = _read_inputs(recipe, settings, overrides)
    config, prompts, offline = inputs.config, inputs.prompts, inputs.offline
    policy_path, score_reference = inputs.policy_path, inputs.score_reference
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rounds: list[dict[str, Any]] = []
    for k in range(settings.rounds):
        began = time.perf_counter()
        round_dir = out / f"round-{k}"
        tokenizer = load_tokenizer(policy_path)
        policy = load_causal_lm(policy_path).to(device)
        candidates = sample_candidates(
            policy,
            tokenizer,
            prompts,
            num_samples=settings.samples,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            seed=config.seed + k,
            batch_size=settings.batch_size,
            strip=settings.strip,
        )
        reference = load_causal_lm(score_reference).to(device)
        scored, counts = score_candidates(
            policy, reference, tokenizer, prompts, candidates, settings
        )
        del policy, reference
        round_dir.mkdir(parents=True, exist_ok=True)
        with (round_dir / "candidates.jsonl").open("w", encoding="utf-8") as handle:
            for item in scored:
                row = {
                    "prompt": item.prompt,
                    "responses": list(item.responses),
                    "scores": list(item.scores),
                }
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        if not scored:
            raise ValueError(
                f"dice round {k}: no prompt kept {settings.min_candidates} candidates "
                f"after the filters ({counts}); loosen --min-candidates, --min-chars, "
                "--max-chars or raise --max-new-tokens"
            )
        alpha = choose_length_alpha(
            scored, settings.alpha_grid, stop_early=settings.alpha_stop_early
        )
        new_pairs = build_pairs(scored, alpha=alpha)
        mixed = replay(
            new_pairs,
            offline,
            ratio=settings.offline_ratio,
            seed=config.seed + k,
            total=settings.replay_total,
        )
        generated = {id(pair) for pair in new_pairs}
        kept_new = sum(id(pair) in generated for pair in mixed)
        pairs_file = write_pairs(round_dir / "pairs.jsonl", mixed)
        print(
            f"dice round {k}: {len(prompts)} prompts x {settings.samples} samples, "
            f"alpha {alpha:g} (length gap {length_gap(scored, 0.0):.1f} -> "
            f"{length_gap(scored, alpha):.1f} chars), {len(new_pairs)} new pairs "
            f"({kept_new} kept) + {len(mixed) - kept_new} offline -> {pairs_file}",
            flush=True,
        )
        result = train(
            recipe,
            {
                **overrides,
                "train.model": policy_path,
                "train.dataset": str(pairs_file),
                "train.output_dir": str(round_dir),
            },
            progress=progress,
        )
        checkpoint = latest_checkpoint(result.run_dir)
        summary = {
            "round": k,
            "policy": policy_path,
            "score_reference": score_reference,
            "prompts": len(prompts),
            "samples": settings.samples,
            "alpha": alpha,
            "length_gap_alpha0": length_gap(scored, 0.0),
            "length_gap": length_gap(scored, alpha),
            **counts,
            "new_pairs": len(new_pairs),
            "kept_new_pairs": kept_new,
            "skipped_prompts": len(prompts) - len(new_pairs),
            "offline_pairs": len(mixed) - kept_new,
            "pairs_file": str(pairs_file),
            "run_dir": str(result.run_dir),
            "checkpoint": str(checkpoint),
            "train_steps": result.step,
            "train_loss": result.metrics.get("loss"),
            "seconds": time.perf_counter() - began,
        }
        (round_dir / "round.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(
            f"dice round {k}: trained {result.step} steps, loss "
            f"{summary['train_loss']}, checkpoint {checkpoint}",
            flush=True,
        )
        rounds.append(summary)
        # The trained model samples next; the model it started from (its DPO
        # reference) is the next scoring reference (reference="previous").
        score_reference, policy_path = policy_path, str(checkpoint)
    report = {
        "recipe": str(recipe),
        "reference": settings.reference,
        "offline_ratio": settings.offline_ratio,
        "replay_total": settings.replay_total,
        "final_checkpoint": policy_path,
        "rounds": rounds,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"dice: summary {out / 'summary.json'}", flush=True)
    return report


def _alpha_grid(text: str) -> tuple[float, ...]:
    """``START:STOP:STEP`` (``arange``, STOP excluded) or comma-separated values."""
    try:
        if ":" in text:
            start, stop, step = (float(part) for part in text.split(":"))
            if step <= 0 or stop <= start:
                raise ValueError
            count = math.ceil((stop - start) / step - 1e-9)
            return tuple(start + i * step for i in range(count))
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected START:STOP:STEP (STEP > 0, STOP > "
            "START) or comma-separated numbers"
        ) from None


_SETTING_FLAGS: tuple[tuple[str, Any, str], ...] = (
    # (flag, type, help); default None = the preset's value, else DiceSettings'
    ("--rounds", int, "DICE rounds"),
    ("--samples", int, "candidates per prompt"),
    ("--offline-ratio", float, "gamma, the offline share of each training set"),
    ("--replay-total", str, "'generated' (keep all) or 'offline' (the release)"),
    ("--reference", str, "only 'previous'"),
    ("--max-new-tokens", int, "longest sample, in tokens"),
    ("--temperature", float, "sampling temperature"),
    ("--top-p", float, "nucleus mass"),
    ("--min-chars", int, "shortest kept response, in characters"),
    ("--max-chars", int, "longest kept response, in characters"),
    ("--min-candidates", int, "drop prompts with fewer kept candidates"),
    ("--alpha-grid", _alpha_grid, "START:STOP:STEP or a,b,c"),
    ("--batch-size", int, "prompts per generation batch"),
)
_SWITCHES = (
    ("strip", "strip whitespace around each sample"),
    ("drop-truncated", "drop samples that hit --max-new-tokens"),
    ("alpha-stop-early", "stop the alpha scan at its first local minimum"),
)


def _parser() -> argparse.ArgumentParser:
    from mipo.training.command import ArgumentParser

    parser = ArgumentParser(
        prog="python -m mipo.dice",
        description="DICE rounds (arXiv 2406.09760): sample with the policy, rank "
        "by its DPO implicit reward, build length-controlled pairs, mix offline "
        "pairs, train RECIPE on them; repeat. Extra --train.FIELD=VALUE and "
        "--objective.NAME=VALUE are passed to every round's training.",
    )
    parser.add_argument("recipe", help="recipe path or shipped name (e.g. dpo)")
    parser.add_argument("--prompts", required=True, help=".json/.jsonl prompts")
    parser.add_argument("--offline", help="offline preference file for replay")
    parser.add_argument(
        "--score-reference",
        required=True,
        help="model the starting policy was DPO-trained from (round-0 reference)",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--preset",
        choices=("mipo", "release"),
        default="mipo",
        help="'release': the released pipeline's data settings and per-round "
        "training (RELEASE_SETTINGS, RELEASE_TRAIN_OVERRIDES); flags override it",
    )
    for flag, kind, text in _SETTING_FLAGS:
        parser.add_argument(flag, type=kind, default=None, help=text)
    for name, text in _SWITCHES:
        parser.add_argument(
            f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=text
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _settings(args: argparse.Namespace) -> DiceSettings:
    """The preset's values under the flags that were given."""
    chosen = dict(RELEASE_SETTINGS) if args.preset == "release" else {}
    names = [flag[2:].replace("-", "_") for flag, _, _ in _SETTING_FLAGS]
    names += [name.replace("-", "_") for name, _ in _SWITCHES]
    chosen.update({n: getattr(args, n) for n in names if getattr(args, n) is not None})
    return DiceSettings(
        prompts=args.prompts,
        offline=args.offline,
        score_reference=args.score_reference,
        out=args.out,
        **chosen,
    )


def _overrides(extra: list[str]) -> dict[str, str]:
    from mipo.training.cli import OverrideError

    overrides: dict[str, str] = {}
    args = list(extra)
    while args:
        arg = args.pop(0)
        key, eq, value = arg.removeprefix("--").partition("=")
        if not arg.startswith(("--train.", "--objective.")):
            raise OverrideError(
                f"unexpected argument {arg!r}; training overrides look like "
                "--train.learning_rate=1e-6 or --objective.beta=0.2"
            )
        if not eq:
            if not args or args[0].startswith("--"):
                raise OverrideError(f"--{key}: expects a value (--{key}=VALUE)")
            value = args.pop(0)
        overrides[key] = value
    return overrides


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point (errors in the common style of
    :mod:`mipo.training.command`)."""
    from mipo.training.command import run_command

    run_command(_main, sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> None:
    args, extra = _parser().parse_known_args(argv)
    settings = _settings(args)
    preset = RELEASE_TRAIN_OVERRIDES if args.preset == "release" else {}
    overrides = {**preset, **_overrides(extra)}
    run_dice(args.recipe, settings, overrides, progress=not args.quiet)


if __name__ == "__main__":
    main()


__all__ = [
    "DEFAULT_ALPHA_GRID",
    "RELEASE_SETTINGS",
    "RELEASE_TRAIN_OVERRIDES",
    "Candidate",
    "DiceSettings",
    "ScoredPrompt",
    "build_pairs",
    "choose_length_alpha",
    "implicit_rewards",
    "keep_candidates",
    "length_gap",
    "load_prompts",
    "main",
    "offline_count",
    "record_row",
    "release_counts",
    "replay",
    "run_dice",
    "sample_candidates",
    "score_candidates",
    "stop_token_ids",
    "write_pairs",
]
