r"""Token-weight pictures: response tokens coloured by the weight they get in the loss.

The weight of token $y_t$ is $w_t \prod_k v^{(k)}_t$: the objective's weighter
times every token weighter its prior carries (e.g. the $v_t$ of
:class:`~mipo.primitives.TokenInterpolationPrior`), found by walking the prior's
fields, never by method name. Usage::

    python -m mipo.pictures recipes/otpo.py --data pairs.jsonl --pairs 3 --out pics

writes ``pics/weights.html`` (spans with background colours and a legend) and
``pics/pair-<k>.png`` (matplotlib text rendering) for the chosen and the rejected
response of the first ``--pairs`` pairs. Weights come from the trainer's own
:class:`~mipo.training.batching.BatchBuilder` and the objective's services, so
they are what a training step sees. Given a run directory instead of a recipe,
the picture uses the run's objective (composed in Python or not) and its latest
checkpoint, services included.
"""

import argparse
import dataclasses
import html
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mipo.batch import PairBatch, Side
from mipo.objective import Objective
from mipo.primitives.prior import AbstractPrior
from mipo.primitives.weighter import AbstractTokenWeighter
from mipo.typing import TokenWeights

_COLORMAP = "coolwarm"
_CHARS_PER_LINE = 100


def prior_weighters(prior: AbstractPrior) -> tuple[AbstractTokenWeighter, ...]:
    """Every token weighter held by ``prior`` or by a prior nested in it (fields of
    dataclass priors); prior *factors* such as KL penalties are not walked, since
    their weights scale a penalty, not the log-ratio."""
    found: list[AbstractTokenWeighter] = []
    if not dataclasses.is_dataclass(prior):
        return ()
    for field in dataclasses.fields(prior):
        value = getattr(prior, field.name)
        if isinstance(value, AbstractTokenWeighter):
            found.append(value)
        elif isinstance(value, AbstractPrior):
            found.extend(prior_weighters(value))
    return tuple(found)


def token_weights(
    objective: Objective, batch: PairBatch
) -> tuple[TokenWeights, TokenWeights]:
    r"""$w_t \prod_k v^{(k)}_t$ for chosen and rejected, 0 off the response."""
    chosen, rejected = objective.weighter(batch)
    for weighter in prior_weighters(objective.prior):
        more_chosen, more_rejected = weighter(batch)
        chosen, rejected = chosen * more_chosen, rejected * more_rejected
    chosen = torch.where(batch.chosen.response_mask, chosen, torch.zeros_like(chosen))
    rejected = torch.where(
        batch.rejected.response_mask, rejected, torch.zeros_like(rejected)
    )
    return chosen.detach(), rejected.detach()


def _limits(
    weights: Sequence[float], vmin: float | None, vmax: float | None
) -> tuple[float, float]:
    low = min(weights, default=0.0) if vmin is None else vmin
    high = max(weights, default=1.0) if vmax is None else vmax
    if high <= low:
        high = low + 1.0
    return low, high


def _rgba(weight: float, low: float, high: float) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps[_COLORMAP]((weight - low) / (high - low))


def _visible(token: str) -> str:
    return token.replace("\n", "\u21b5").replace("\t", "\u21e5")


def render_html(
    tokens: Sequence[str],
    weights: Sequence[float],
    *,
    title: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
) -> str:
    """One ``<div>``: each token a ``<span>`` whose background encodes its weight
    (``title`` attribute: the value), followed by a colour legend."""
    if len(tokens) != len(weights):
        raise ValueError(
            f"render_html: {len(tokens)} tokens but {len(weights)} weights"
        )
    low, high = _limits(weights, vmin, vmax)
    spans = []
    for token, weight in zip(tokens, weights, strict=True):
        r, g, b, _ = _rgba(weight, low, high)
        colour = f"rgb({round(255 * r)},{round(255 * g)},{round(255 * b)})"
        spans.append(
            f'<span style="background:{colour}" title="{weight:.4f}">'
            f"{html.escape(_visible(token))}</span>"
        )
    legend = []
    for k in range(5):
        value = low + (high - low) * k / 4
        r, g, b, _ = _rgba(value, low, high)
        colour = f"rgb({round(255 * r)},{round(255 * g)},{round(255 * b)})"
        legend.append(
            f'<span style="background:{colour}">&nbsp;{value:.3g}&nbsp;</span>'
        )
    heading = f"<h3>{html.escape(title)}</h3>" if title else ""
    return (
        f'<div class="tokens">{heading}<p style="font-family:monospace;'
        f'white-space:pre-wrap">{"".join(spans)}</p>'
        f'<p class="legend">weight: {"".join(legend)}</p></div>'
    )


def html_page(sections: Sequence[str], *, title: str = "mipo token weights") -> str:
    """A complete HTML document around :func:`render_html` blocks."""
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title></head><body>\n{body}\n</body></html>\n"
    )


def render_png(
    rows: Sequence[tuple[str, Sequence[str], Sequence[float]]],
    path: str | Path,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Path:
    """Draw ``(title, tokens, weights)`` rows as coloured monospace text with a
    colour bar; one shared colour scale. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    every = [w for _, _, weights in rows for w in weights]
    low, high = _limits(every, vmin, vmax)
    lines: list[tuple[str, list[tuple[int, str, float]]]] = []
    for title, tokens, weights in rows:
        if len(tokens) != len(weights):
            raise ValueError(f"render_png: row {title!r}: tokens and weights differ")
        lines.append((title, []))
        lines.append(("", []))  # tokens start on their own line
        column = 0
        for token, weight in zip(tokens, weights, strict=True):
            text = _visible(token)
            if column + len(text) > _CHARS_PER_LINE and column > 0:
                lines.append(("", []))
                column = 0
            lines[-1][1].append((column, text, weight))
            column += len(text)
    height = 1.2 + 0.28 * len(lines)
    figure = plt.figure(figsize=(_CHARS_PER_LINE * 0.075 + 0.5, height))
    char_width = 0.075 / figure.get_figwidth()
    line_height = 0.28 / height
    for index, (title, pieces) in enumerate(lines):
        y = 1 - (index + 1) * line_height
        if title:
            figure.text(0.01, y, title, fontsize=9, fontweight="bold")
            continue
        for column, text, weight in pieces:
            figure.text(
                0.01 + column * char_width,
                y,
                text,
                family="monospace",
                fontsize=8.5,
                bbox={"facecolor": _rgba(weight, low, high), "pad": 0.5, "lw": 0},
            )
    axis = figure.add_axes((0.1, 0.5 / height, 0.8, 0.12 / height))
    figure.colorbar(
        ScalarMappable(Normalize(low, high), _COLORMAP),
        cax=axis,
        orientation="horizontal",
        label="token weight",
    )
    out = Path(path)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def _side_rows(
    tokenizer: Any, labels: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor
) -> tuple[list[str], list[float]]:
    """Tokens and weights of one response; ``labels`` unshifted, the rest shifted."""
    ids = labels[1:][mask].tolist()
    return [tokenizer.decode([i]) for i in ids], weights[mask].tolist()


def main(argv: list[str] | None = None) -> None:
    """``python -m mipo.pictures RECIPE_OR_RUN --data FILE --pairs N --out DIR``
    (errors in the common style of :mod:`mipo.training.command`)."""
    from mipo.training.command import run_command

    run_command(_main, sys.argv[1:] if argv is None else argv)


def _main(argv: list[str]) -> None:
    from mipo.training.command import ArgumentParser, fail

    parser = ArgumentParser(prog="python -m mipo.pictures")
    parser.add_argument(
        "recipe", help="recipe file, shipped recipe name, or a run directory"
    )
    parser.add_argument("--data", required=True, help="dataset file or builtin:...")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--model", default=None, help="overrides the recipe's model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-length", type=int, default=None, help="overrides train.max_length"
    )
    args = parser.parse_args(argv)
    if args.pairs < 1:
        fail(f"--pairs: must be >= 1, got {args.pairs}")
    if args.max_length is not None and args.max_length < 2:
        fail(f"--max-length: must be >= 2, got {args.max_length}")
    _check_data(args)
    source = _source(args)
    draw(source, args)


def _check_data(args: argparse.Namespace) -> None:
    """Refuse bad data (and, for a recipe, missing weight columns) before any
    model loads."""
    from mipo.data.validate import validate_dataset
    from mipo.training.recipes import load_recipe
    from mipo.training.setup import config_services, data_needs

    needs: frozenset[Any] = frozenset()
    if not (Path(args.recipe) / "config.json").is_file():
        recipe = load_recipe(args.recipe)
        specs = config_services(recipe.train, recipe.objective)
        needs = data_needs(recipe.objective, specs)
    validate_dataset(
        args.data,
        needs=needs,
        max_examples=args.pairs,
        seed=args.seed,
        warn=lambda _warning: None,
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Source:
    """What a picture is drawn from: an objective, its settings, models and
    services (fresh for a recipe, restored for a run directory)."""

    name: str
    objective: Objective
    config: Any
    models: Any
    services: tuple[Any, ...]
    tokenizer: Any


def _source(args: argparse.Namespace) -> _Source:
    from mipo.training.recipes import load_recipe
    from mipo.training.setup import load_saved_run

    torch.manual_seed(args.seed)
    if (Path(args.recipe) / "config.json").is_file():
        saved = load_saved_run(Path(args.recipe))
        services = tuple(
            s for s in saved.services if s.spec in saved.objective.services
        )
        return _Source(
            name=saved.recipe.name,
            objective=saved.objective,
            config=saved.config,
            models=saved.models,
            services=services,
            tokenizer=saved.tokenizer,
        )
    recipe = load_recipe(args.recipe)
    config = recipe.train
    if args.model is not None:
        config = dataclasses.replace(config, model=args.model)
    if args.max_length is not None:
        config = dataclasses.replace(
            config,
            max_length=args.max_length,
            max_prompt_length=min(config.max_prompt_length, args.max_length // 2),
        )
    return _fresh(recipe.name, recipe.objective, config)


def _fresh(name: str, objective: Objective, config: Any) -> _Source:
    """Models and services of ``objective`` at the start of training."""
    from mipo.training.models import default_device, load_models
    from mipo.training.services import Models, ServiceSetup, build_services

    device = default_device()  # the accelerator when there is one
    policy, reference, tokenizer, model_path = load_models(
        config, objective.needs, device=device
    )
    policy.eval()
    policy.to(device)
    if reference is not None:
        reference.to(device)
    models = Models(
        policy=policy,
        reference=reference,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    setup = ServiceSetup(
        config=config, models=models, device=device, model_path=model_path
    )
    services = build_services(objective.services, setup)
    return _Source(
        name=name,
        objective=objective,
        config=config,
        models=models,
        services=services,
        tokenizer=tokenizer,
    )


def draw(source: _Source, args: argparse.Namespace) -> None:
    """Build one batch of ``args.pairs`` pairs through the trainer's batch builder
    and write the HTML page and one PNG per pair."""
    from mipo.data.collate import collate
    from mipo.data.load import load_records
    from mipo.data.tokenize import encode_record
    from mipo.training.batching import BatchBuilder
    from mipo.training.precision import autocast
    from mipo.training.services import evaluating

    config, tokenizer = source.config, source.tokenizer
    records = load_records(args.data, max_examples=args.pairs, seed=args.seed)
    encoded = [
        encode_record(
            record,
            tokenizer,
            max_length=config.max_length,
            max_prompt_length=config.max_prompt_length,
        )
        for record in records[: args.pairs]
    ]
    tensors = collate(encoded, pad_token_id=tokenizer.pad_token_id)
    builder = BatchBuilder(
        needs=source.objective.needs,
        services=source.services,
        chunk_size=config.logps_chunk_size or None,
    )
    device = next(source.models.policy.parameters()).device
    # no graph for the policy forward (attribution enables its own gradient);
    # the models' device and the run's precision, as in training
    with torch.no_grad(), evaluating(source.services):
        with autocast(config.precision, device):
            batch = builder(source.models, tensors.to(device))
        chosen, rejected = token_weights(source.objective, batch)
    batch, chosen, rejected = _to_cpu(batch, chosen, rejected)
    _write(source, args, encoded, tensors, batch, (chosen, rejected))


def _to_cpu(batch: PairBatch, chosen: Any, rejected: Any) -> tuple[PairBatch, Any, Any]:
    """The response masks and weights the pictures read, on the host."""
    cpu = torch.device("cpu")
    sides = {
        role: Side(
            policy_logps=getattr(batch, role).policy_logps.to(cpu),
            response_mask=getattr(batch, role).response_mask.to(cpu),
        )
        for role in ("chosen", "rejected")
    }
    return PairBatch(**sides), chosen.to(cpu), rejected.to(cpu)


def _write(
    source: _Source,
    args: argparse.Namespace,
    encoded: Sequence[Any],
    tensors: Any,
    batch: PairBatch,
    weights: tuple[TokenWeights, TokenWeights],
) -> None:
    chosen, rejected = weights
    tokenizer = source.tokenizer
    every = torch.cat(
        [chosen[batch.chosen.response_mask], rejected[batch.rejected.response_mask]]
    )
    vmin, vmax = float(every.min()), float(every.max())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for k, pair in enumerate(encoded):
        rows = []
        for role, side, values_k, seqs in (
            ("chosen", batch.chosen, chosen, tensors.chosen),
            ("rejected", batch.rejected, rejected, tensors.rejected),
        ):
            tokens, values = _side_rows(
                tokenizer, seqs.labels[k], values_k[k], side.response_mask[k]
            )
            title = f"pair {k} ({pair.source}), {role}: sum {sum(values):.3f}"
            rows.append((title, tokens, values))
            sections.append(
                render_html(tokens, values, title=title, vmin=vmin, vmax=vmax)
            )
        render_png(rows, out / f"pair-{k}.png", vmin=vmin, vmax=vmax)
    (out / "weights.html").write_text(
        html_page(sections, title=f"{source.name}: token weights"), encoding="utf-8"
    )
    print(f"wrote {out / 'weights.html'} and {len(encoded)} PNG files")


if __name__ == "__main__":
    main()
