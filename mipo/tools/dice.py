r"""DICE: self-rewarding rounds of DPO with the policy's implicit reward.

Chen et al., "Bootstrapping Language Models with DPO Implicit Rewards", arXiv
2406.09760 (``methods.md`` Section 12). The training loss is plain DPO (any
recipe); what DICE adds is the data. One round, for a policy :math:`\pi_\theta`
that was DPO-trained against :math:`\pi_{\mathrm{ref}}`:

1. sample :math:`K` candidates :math:`y^{(1..K)} \sim \pi_\theta(\cdot|x)` per
   prompt (:func:`sample_candidates`);
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
   final training set (:func:`replay`);
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
from typing import Any, final

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
) -> list[list[str]]:
    r"""Draw ``num_samples`` responses :math:`y \sim \pi_\theta(\cdot|x)` per prompt.

    Prompts are tokenised exactly as training tokenises them (chat template with
    the generation prompt for message lists, :func:`mipo.data.encode_record`),
    left-padded into batches of ``batch_size`` prompts, and sampled without
    gradient under a seeded RNG that does not disturb the caller's. Only
    temperature and nucleus (``top_p``) filtering apply (``top_k`` is off). A
    response is the decoded text before its first EOS; one that reached
    ``max_new_tokens`` is kept as it is (the release drops those; here the next
    round's tokenisation appends an EOS to it).

    Returns:
        ``candidates[i][k]``: the ``k``-th sample for ``prompts[i]``.
    """
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
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = _device(model)
    cuda = [device.index or 0] if device.type == "cuda" else []
    out: list[list[str]] = []
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
                do_sample=True,
                temperature=temperature,
                top_p=top_p,
                top_k=0,
                max_new_tokens=max_new_tokens,
                num_return_sequences=num_samples,
                pad_token_id=pad,
                eos_token_id=eos,
            )
            # generate repeats each prompt num_samples times, consecutively.
            new = generated[:, width:].tolist()
            for row in range(len(chunk)):
                samples = new[row * num_samples : (row + 1) * num_samples]
                out.append([_decode(tokenizer, tokens, eos) for tokens in samples])
    return out


def _decode(tokenizer: Any, tokens: list[int], eos: int) -> str:
    if eos in tokens:
        tokens = tokens[: tokens.index(eos)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


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
    scored: Sequence[ScoredPrompt], grid: Sequence[float] = DEFAULT_ALPHA_GRID
) -> float:
    r"""The :math:`\alpha` of ``grid`` whose pairs have the signed mean length gap
    closest to zero, :math:`\arg\min_\alpha |\mathrm{length\_gap}(\alpha)|`
    (the first such :math:`\alpha` in grid order on ties).

    The release scans ``arange(0, 1, 0.001)`` and stops once the gap grows again;
    this scans the whole grid.
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
    if not (math.isfinite(ratio) and 0.0 <= ratio < 1.0):
        raise ValueError(f"replay: ratio must be in [0, 1), got {ratio}")
    return round(ratio * num_new / (1.0 - ratio))


def _prompt_key(prompt: Text) -> str:
    return json.dumps(prompt, sort_keys=True)


def replay(
    new_pairs: Sequence[PreferenceRecord],
    offline_pairs: Sequence[PreferenceRecord],
    *,
    ratio: float,
    seed: int,
) -> list[PreferenceRecord]:
    r"""Experience replay: every generated pair plus :func:`offline_count`
    offline pairs, so offline pairs are a fraction :math:`\gamma` = ``ratio`` of
    the result (DICE's ``OFFLINE_DATA_RATIO``).

    The offline pairs are a seeded draw without replacement, in their file order,
    among those whose prompt no generated pair has (as the release does). The
    release instead fixes the total at the offline set's size; here every
    generated pair is kept.

    Raises:
        ValueError: ``ratio`` outside ``[0, 1)``, or too few eligible offline pairs.
    """
    wanted = offline_count(len(new_pairs), ratio)
    taken = {_prompt_key(pair.prompt) for pair in new_pairs}
    eligible = [p for p in offline_pairs if _prompt_key(p.prompt) not in taken]
    if wanted > len(eligible):
        raise ValueError(
            f"replay: ratio {ratio} with {len(new_pairs)} generated pairs needs "
            f"{wanted} offline pairs, but only {len(eligible)} of the "
            f"{len(offline_pairs)} offline pairs have a prompt not generated for"
        )
    keep = sorted(random.Random(seed).sample(range(len(eligible)), wanted))
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
    """Settings of :func:`run_dice` besides the recipe and its overrides.

    Args:
        prompts: the prompts file (:func:`load_prompts`).
        offline: an offline preference file for replay (needed when
            ``offline_ratio > 0``).
        score_reference: the model the starting policy was DPO-trained from; the
            round-0 implicit reward is measured against it.
        out: output directory (``round-k/`` per round, ``summary.json``).
        rounds: DICE rounds.
        samples: candidates per prompt, :math:`K`.
        offline_ratio: :math:`\\gamma`, the offline fraction of each training set.
        reference: ``"previous"`` (the only supported choice, see the module
            docstring).
        max_new_tokens: longest sampled response, in tokens.
        temperature: sampling temperature.
        top_p: nucleus sampling mass.
        alpha_grid: the grid :func:`choose_length_alpha` searches.
        batch_size: prompts per generation batch and responses per scoring batch.
    """

    prompts: str
    offline: str | None
    score_reference: str
    out: str
    rounds: int = 1
    samples: int = 8
    offline_ratio: float = 0.0
    reference: str = "previous"
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    alpha_grid: tuple[float, ...] = DEFAULT_ALPHA_GRID
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


RESERVED_OVERRIDES = ("train.dataset", "train.output_dir")
"""Overrides DICE sets itself in every round."""


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
    from mipo.training.cli import OverrideError, resolve
    from mipo.training.models import load_causal_lm, load_tokenizer, resolve_model_path
    from mipo.training.recipes import load_recipe
    from mipo.training.run_dir import latest_checkpoint
    from mipo.training.trainer import train

    overrides = dict(overrides or {})
    reserved = [key for key in RESERVED_OVERRIDES if key in overrides]
    if reserved:
        raise OverrideError(
            f"{', '.join(reserved)}: set by mipo.dice in every round; do not override"
        )
    config, _, _ = resolve(load_recipe(recipe), overrides)
    if config.lora_rank > 0 and settings.rounds > 1:
        raise OverrideError(
            "train.lora_rank > 0: a LoRA checkpoint holds only the adapter, and the "
            "next round needs a full model directory as train.model; use full "
            "fine-tuning for more than one round"
        )
    policy_path = resolve_model_path(config.model)
    score_reference = resolve_model_path(settings.score_reference)
    if Path(policy_path).resolve() == Path(score_reference).resolve():
        raise ValueError(
            f"--score-reference {settings.score_reference}: it is the starting "
            "policy itself, so every implicit reward would be 0; pass the model the "
            "policy was DPO-trained from"
        )
    prompts = load_prompts(settings.prompts)
    offline = load_records(settings.offline) if settings.offline is not None else []
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
        )
        reference = load_causal_lm(score_reference).to(device)
        scored = [
            ScoredPrompt(
                prompt=prompt,
                responses=tuple(texts),
                scores=tuple(
                    implicit_rewards(
                        policy,
                        reference,
                        tokenizer,
                        prompt,
                        texts,
                        batch_size=settings.batch_size,
                    )
                ),
            )
            for prompt, texts in zip(prompts, candidates, strict=True)
        ]
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
        alpha = choose_length_alpha(scored, settings.alpha_grid)
        new_pairs = build_pairs(scored, alpha=alpha)
        mixed = replay(
            new_pairs, offline, ratio=settings.offline_ratio, seed=config.seed + k
        )
        pairs_file = write_pairs(round_dir / "pairs.jsonl", mixed)
        print(
            f"dice round {k}: {len(prompts)} prompts x {settings.samples} samples, "
            f"alpha {alpha:g} (length gap {length_gap(scored, 0.0):.1f} -> "
            f"{length_gap(scored, alpha):.1f} chars), {len(new_pairs)} new + "
            f"{len(mixed) - len(new_pairs)} offline pairs -> {pairs_file}",
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
            "new_pairs": len(new_pairs),
            "skipped_prompts": len(prompts) - len(new_pairs),
            "offline_pairs": len(mixed) - len(new_pairs),
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
            f"--alpha-grid {text!r}: expected START:STOP:STEP (STEP > 0, STOP > "
            "START) or comma-separated numbers"
        ) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--samples", type=int, default=8, help="candidates/prompt")
    parser.add_argument("--offline-ratio", type=float, default=0.0, help="gamma")
    parser.add_argument("--reference", default="previous", help="only 'previous'")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument(
        "--alpha-grid", type=_alpha_grid, default=DEFAULT_ALPHA_GRID, metavar="GRID"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


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
    """Command-line entry point."""
    from mipo.training.cli import OverrideError

    args, extra = _parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = DiceSettings(
            prompts=args.prompts,
            offline=args.offline,
            score_reference=args.score_reference,
            out=args.out,
            rounds=args.rounds,
            samples=args.samples,
            offline_ratio=args.offline_ratio,
            reference=args.reference,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            alpha_grid=args.alpha_grid,
            batch_size=args.batch_size,
        )
        run_dice(args.recipe, settings, _overrides(extra), progress=not args.quiet)
    except (OverrideError, DataError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()


__all__ = [
    "DEFAULT_ALPHA_GRID",
    "DiceSettings",
    "ScoredPrompt",
    "build_pairs",
    "choose_length_alpha",
    "implicit_rewards",
    "length_gap",
    "load_prompts",
    "main",
    "offline_count",
    "record_row",
    "replay",
    "run_dice",
    "sample_candidates",
    "write_pairs",
]
