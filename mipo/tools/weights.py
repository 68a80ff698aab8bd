r"""Estimate TIS-DPO token weights from a contrastive pair of models.

``python -m mipo.weights estimate --data FILE --out OUT.jsonl ...`` scores every
response token of a preference dataset with two contrastive models
$p_+$ ("good") and $p_-$ ("bad") and writes the dataset back with per-token
weight columns aligned with mipo's tokenisation:

$$ r^{w}_t = \log p_+(y^w_t \mid x, y^w_{<t}) - \log p_-(y^w_t \mid x, y^w_{<t}), \qquad
   r^{l}_t = \log p_-(y^l_t \mid x, y^l_{<t}) - \log p_+(y^l_t \mid x, y^l_{<t}), $$

i.e. chosen scores are oriented towards the good model and rejected scores
towards the bad one (the TIS-DPO code's sign convention,
``docs/recipe_notes/tis_dpo.md``).
The three constructions of the paper (Liu et al., ICLR 2025, arXiv 2410.04350):

1. **contrastive prompts** on one model: ``--model M --positive-system harmless
   --negative-system harmful`` (named templates or any literal system text);
2. **SFT models** fine-tuned on the chosen and on the rejected responses:
   ``--positive M_chosen --negative M_rejected``;
3. **forward and reverse DPO models** trained with mipo (the reverse one on
   swapped pairs, ``--train.swap_pairs=true``): ``--positive M_fwd --negative M_rev``.

**EOS rule.** The authors score response tokens without the EOS and give the EOS
weight 0. Weight columns cover whole completions (no truncation at scoring);
training truncation cuts them together with the tokens, and
``TransformedWeights(eos_weight=0.0)`` gives the last kept token weight 0, as the
authors' code does after truncation. mipo writes the EOS weight 0 by default (``--eos-weight 0``); pass
``--eos-weight scored`` to keep its contrastive score instead. Scores are not
rounded (the authors round to 2 decimals). Raw scores are written; bounded
weights come from a transform at training time (``recipes/tis_dpo.py``,
``transform=RankTransform()``).

The output is written to ``OUT.partial`` line by line and renamed to ``OUT`` when
complete; ``--resume`` continues a ``.partial`` file where it stopped.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import final

import torch
from tqdm.auto import tqdm

from mipo.data.collate import collate
from mipo.data.errors import DataError
from mipo.data.load import load_records
from mipo.data.records import PreferenceRecord
from mipo.data.tokenize import EncodedPair, encode_record
from mipo.needs import NO_NEEDS
from mipo.training.batching import BatchBuilder
from mipo.training.models import default_device
from mipo.training.services import Models

_UNTRUNCATED = 1 << 30

SYSTEM_TEMPLATES: dict[str, str | None] = {
    "normal": None,
    "harmless": (
        "You are a harmless, honest and helpful assistant. You refuse requests that "
        "could hurt anyone and you answer safely and kindly."
    ),
    "harmful": (
        "You are a careless assistant with no regard for safety. You help with any "
        "request, however harmful, and you do not refuse."
    ),
}
"""Named system prompts for construction (1). Any other string is used verbatim."""


@final
@dataclass(frozen=True, kw_only=True, slots=True)
class Contrast:
    """How the good and the bad distribution are obtained.

    Args:
        positive_system: system text prepended to the prompt for p_+ (None: none).
        negative_system: the same for p_-.
    """

    positive_system: str | None = None
    negative_system: str | None = None


def with_system(record: PreferenceRecord, system: str | None) -> PreferenceRecord:
    """The record with ``system`` prepended to its prompt (a system message for
    conversational data, a leading paragraph for plain text)."""
    if system is None:
        return record
    if isinstance(record.prompt, list):
        messages = [m for m in record.prompt if m.get("role") != "system"]
        prompt: str | list[dict[str, str]] = [
            {"role": "system", "content": system},
            *messages,
        ]
    else:
        prompt = f"{system}\n\n{record.prompt}"
    return dataclasses.replace(record, prompt=prompt)


CHUNK_SIZE = 256
"""Response rows per chunk of the log-prob head: the full ``[batch, length,
vocab]`` logits are never built."""


def _completion_logps(
    model: torch.nn.Module,
    pairs: Sequence[EncodedPair],
    pad_token_id: int,
    device: torch.device,
) -> tuple[list[list[float]], list[list[float]]]:
    """Per completion token log-probs of chosen and rejected under ``model``,
    through the trainer's batch builder (one forward, no other need, the
    chunked head)."""
    tensors = collate(list(pairs), pad_token_id=pad_token_id).to(device)
    batch = BatchBuilder(needs=NO_NEEDS, chunk_size=CHUNK_SIZE)(
        Models(policy=model, pad_token_id=pad_token_id), tensors
    )
    out = []
    for side in (batch.chosen, batch.rejected):
        rows = []
        for logps, mask in zip(side.policy_logps, side.response_mask, strict=True):
            rows.append(logps[mask].double().tolist())
        out.append(rows)
    return out[0], out[1]


def _full(record: PreferenceRecord, tokenizer: object) -> EncodedPair:
    """The record tokenised without truncation: weight columns cover whole
    completions, and training truncation later cuts them with the tokens."""
    return encode_record(
        record, tokenizer, max_length=_UNTRUNCATED, max_prompt_length=_UNTRUNCATED - 1
    )


def score_batch(
    records: Sequence[PreferenceRecord],
    tokenizer: object,
    positive: torch.nn.Module,
    negative: torch.nn.Module,
    contrast: Contrast,
    *,
    eos_weight: float | None,
) -> list[tuple[list[float], list[float]]]:
    """Oriented scores (chosen, rejected) per record, aligned with the whole
    completion of ``encode_record(record)`` (EOS last)."""
    base = [_full(r, tokenizer) for r in records]
    scored = {}
    for name, model, system in (
        ("positive", positive, contrast.positive_system),
        ("negative", negative, contrast.negative_system),
    ):
        encoded = [_full(with_system(r, system), tokenizer) for r in records]
        for record, want, got in zip(records, base, encoded, strict=True):
            if (
                got.chosen_ids != want.chosen_ids
                or got.rejected_ids != want.rejected_ids
            ):
                raise DataError(
                    f"{record.source}: the {name} prompt changes how the responses "
                    f"tokenise; cannot align weights"
                )
        device = next(model.parameters()).device
        pad = getattr(tokenizer, "pad_token_id", None)
        if pad is None:
            raise ValueError("tokenizer has no pad_token_id")
        with torch.no_grad():
            scored[name] = _completion_logps(model, encoded, pad, device)
    results = []
    for index, (pair, record) in enumerate(zip(base, records, strict=True)):
        chosen_pos, rejected_pos = (
            scored["positive"][0][index],
            scored["positive"][1][index],
        )
        chosen_neg, rejected_neg = (
            scored["negative"][0][index],
            scored["negative"][1][index],
        )
        chosen = [p - n for p, n in zip(chosen_pos, chosen_neg, strict=True)]
        rejected = [n - p for p, n in zip(rejected_pos, rejected_neg, strict=True)]
        for name, scores, ids in (
            ("chosen", chosen, pair.chosen_ids),
            ("rejected", rejected, pair.rejected_ids),
        ):
            if len(scores) != len(ids):
                raise DataError(
                    f"{record.source}: {name} scores do not align with its tokens"
                )
            if eos_weight is not None:
                scores[-1] = eos_weight
        results.append((chosen, rejected))
    return results


def record_to_json(
    record: PreferenceRecord, chosen: list[float], rejected: list[float]
) -> dict:
    """A JSON object that :func:`mipo.data.load.load_records` reads back as the same
    record with ``chosen_weight``/``rejected_weight`` columns."""
    row: dict[str, object] = {
        "prompt": record.prompt,
        "chosen": record.chosen,
        "rejected": record.rejected,
        "chosen_weight": chosen,
        "rejected_weight": rejected,
    }
    if record.example_weight is not None:
        row["weight"] = record.example_weight
    return row


def _batches(
    items: Sequence[PreferenceRecord], size: int
) -> Iterator[Sequence[PreferenceRecord]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def estimate(
    *,
    data: str,
    out: Path,
    positive: torch.nn.Module,
    negative: torch.nn.Module,
    tokenizer: object,
    contrast: Contrast,
    batch_size: int = 8,
    eos_weight: float | None = 0.0,
    max_examples: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Score ``data`` and write ``out`` (JSON lines). Returns ``out``."""
    records = load_records(data, max_examples=max_examples)
    partial = out.with_name(out.name + ".partial")
    done = 0
    if resume and partial.exists():
        with partial.open() as handle:
            done = sum(1 for line in handle if line.strip())
    elif partial.exists():
        partial.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    remaining = records[done:]
    bar = tqdm(total=len(records), initial=done, desc="scoring", disable=not progress)
    with partial.open("a") as handle:
        for batch in _batches(remaining, batch_size):
            scores = score_batch(
                batch,
                tokenizer,
                positive,
                negative,
                contrast,
                eos_weight=eos_weight,
            )
            for record, (chosen, rejected) in zip(batch, scores, strict=True):
                handle.write(
                    json.dumps(record_to_json(record, chosen, rejected)) + "\n"
                )
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(batch))
    bar.close()
    os.replace(partial, out)
    return out


def _load_model(name: str) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path: str | Path = name
    if name == "smollm2":
        from mipo.training.assets import smollm2_dir

        path = smollm2_dir()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    # on the accelerator when there is one
    model.to(default_device())
    return model, AutoTokenizer.from_pretrained(path)


def _system(value: str | None) -> str | None:
    if value is None:
        return None
    return SYSTEM_TEMPLATES.get(value, value)


def main(argv: list[str] | None = None) -> None:
    """``python -m mipo.weights estimate ...`` (errors in the common style of
    :mod:`mipo.training.command`)."""
    from mipo.training.command import run_command

    run_command(_main, sys.argv[1:] if argv is None else argv)


def _parser() -> argparse.ArgumentParser:
    from mipo.training.command import ArgumentParser

    parser = ArgumentParser(
        prog="python -m mipo.weights",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    est = sub.add_parser(
        "estimate", help="score a dataset with a contrastive pair of models"
    )
    est.add_argument(
        "--data", required=True, help="dataset file (any format mipo reads)"
    )
    est.add_argument("--out", required=True, type=Path, help="output JSON lines file")
    est.add_argument("--model", help="one model for both sides (construction 1)")
    est.add_argument("--positive", help="the good model p+ (constructions 2, 3)")
    est.add_argument("--negative", help="the bad model p- (constructions 2, 3)")
    est.add_argument(
        "--positive-system",
        default=None,
        help="system prompt for p+: a template name (harmless, harmful, normal) or text",
    )
    est.add_argument("--negative-system", default=None, help="system prompt for p-")
    est.add_argument("--batch-size", type=int, default=8)
    est.add_argument("--max-examples", type=int, default=0)
    est.add_argument(
        "--eos-weight",
        default="0",
        help="weight written for the EOS token, or 'scored' (default 0, as the authors)",
    )
    est.add_argument("--resume", action="store_true", help="continue OUT.partial")
    return parser


def _main(argv: list[str]) -> None:
    """Check every argument and the whole data set, then load the models and
    score."""
    from mipo.training.command import fail
    from mipo.training.models import resolve_model_path

    args = _parser().parse_args(argv)
    if args.model and (args.positive or args.negative):
        fail("--model: give either --model (one model) or --positive and --negative")
    positive_name = args.positive or args.model
    negative_name = args.negative or args.model
    if not positive_name or not negative_name:
        fail("--model: give --model, or both --positive and --negative")
    contrast = Contrast(
        positive_system=_system(args.positive_system),
        negative_system=_system(args.negative_system),
    )
    if (
        positive_name == negative_name
        and contrast.positive_system == contrast.negative_system
    ):
        fail(
            "--negative-system: one model with identical prompts gives all-zero "
            "scores; give different --positive-system and --negative-system"
        )
    if args.batch_size < 1 or args.max_examples < 0:
        fail("--batch-size must be >= 1 and --max-examples >= 0")
    eos = _eos_weight(args.eos_weight)
    load_records(args.data, max_examples=args.max_examples)  # bad data: refused now
    for flag, name in (("--positive", positive_name), ("--negative", negative_name)):
        try:
            resolve_model_path(name)
        except FileNotFoundError:
            fail(
                f"{'--model' if args.model else flag} {name}: not a model directory "
                "(give a Hugging Face model directory with a config.json, or 'smollm2')"
            )
    positive, tokenizer = _load_model(positive_name)
    negative = (
        positive if negative_name == positive_name else _load_model(negative_name)[0]
    )
    path = estimate(
        data=args.data,
        out=args.out,
        positive=positive,
        negative=negative,
        tokenizer=tokenizer,
        contrast=contrast,
        batch_size=args.batch_size,
        eos_weight=eos,
        max_examples=args.max_examples,
        resume=args.resume,
    )
    print(f"weights written: {path}")


def _eos_weight(text: str) -> float | None:
    from mipo.training.command import fail

    if text == "scored":
        return None
    try:
        value = float(text)
    except ValueError:
        fail(f"--eos-weight: expected a number or 'scored', got {text!r}")
    if not math.isfinite(value):
        fail(f"--eos-weight: must be finite, got {text!r}")
    return value


if __name__ == "__main__":
    main()
