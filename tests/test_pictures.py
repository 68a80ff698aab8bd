"""Token-weight pictures: HTML and PNG rendering, the generic weight lookup, and
the command line on a tiny random model."""

import json
import re
from pathlib import Path

import pytest
import torch
from builders import pair, side
from tiny import build_tiny_model_dir
from torch.testing import assert_close

from mipo import Objective
from mipo.primitives import (
    BatchTokenWeights,
    MeanOverResponse,
    ProductPrior,
    ReferencePrior,
    SequentialKLPenalty,
    TokenInterpolationPrior,
)
from mipo.tools.pictures import (
    html_page,
    main,
    prior_weighters,
    render_html,
    render_png,
    token_weights,
)


def test_render_html_colours_every_token_and_escapes() -> None:
    tokens = ["<b>", " a", "\n", "&"]
    weights = [0.0, 0.5, 1.0, 2.0]
    out = render_html(tokens, weights, title="pair 0 chosen")
    spans = re.findall(
        r'<span style="background:rgb\((\d+),(\d+),(\d+)\)" title="([^"]+)">', out
    )
    # four tokens plus five legend entries (the legend has no title attribute)
    assert [float(s[3]) for s in spans] == weights
    assert (
        "&lt;b&gt;" in out and "&amp;" in out and "<b>" not in out.replace("<h3>", "")
    )
    assert "\u21b5" in out  # newline made visible
    assert "pair 0 chosen" in out and "legend" in out
    # the lowest and the highest weight get the two ends of the colour map
    assert spans[0][:3] != spans[-1][:3]
    assert html_page([out]).startswith("<!DOCTYPE html>")


def test_render_html_uses_a_shared_scale() -> None:
    low = render_html(["x"], [1.0], vmin=0.0, vmax=2.0)
    same = render_html(["y"], [1.0], vmin=0.0, vmax=2.0)
    colour = re.compile(r"background:(rgb\([^)]*\))")
    assert colour.findall(low)[0] == colour.findall(same)[0]


def test_render_html_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 tokens but 1 weights"):
        render_html(["a", "b"], [1.0])


def test_render_png_writes_an_image(tmp_path: Path) -> None:
    from matplotlib.image import imread

    tokens = [f" tok{i}" for i in range(40)]
    rows = [("chosen", tokens, [i / 40 for i in range(40)]), ("rejected", ["a"], [1.0])]
    path = render_png(rows, tmp_path / "p.png")
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 300
    # coloured pixels exist (not a blank page)
    assert float(image[..., :3].std()) > 0.01


def test_token_weights_multiply_the_priors_weighters() -> None:
    mask = [[False, True, True]]
    chosen = side(
        [[-1.0, -2.0, -3.0]],
        mask,
        reference_logps=[[-1.0] * 3],
        token_weights=[[9.0, 0.5, 2.0]],
    )
    rejected = side(
        [[-1.0, -2.0, -3.0]],
        [[True, True, False]],
        reference_logps=[[-1.0] * 3],
        token_weights=[[1.0, 3.0, 9.0]],
    )
    batch = pair(chosen, rejected)
    data = BatchTokenWeights()
    kl = SequentialKLPenalty(kappa=0.5, direction="reverse", weights=data)
    prior = ProductPrior(base=TokenInterpolationPrior(weights=data), factors=(kl,))
    assert prior_weighters(prior) == (data,)  # the KL factor's weights are not walked
    assert prior_weighters(ReferencePrior()) == ()
    objective = Objective(prior=prior, weighter=MeanOverResponse(), beta=0.1)
    w_c, w_r = token_weights(objective, batch)
    assert_close(w_c, torch.tensor([[0.0, 0.25, 1.0]], dtype=torch.float64))
    assert_close(w_r, torch.tensor([[0.5, 1.5, 0.0]], dtype=torch.float64))


def test_command_line_on_a_tiny_model(tmp_path: Path) -> None:
    # 2048 is LlamaConfig's default, which this test was written against.
    model_dir = build_tiny_model_dir(tmp_path / "tiny", max_position_embeddings=2048)
    rows = [
        {"prompt": f"{i} + 1 =", "chosen": f" {i + 1}", "rejected": f" {i + 20}0"}
        for i in range(4)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "pics"
    main(
        [
            "recipes/otpo.py",
            "--data",
            str(data),
            "--pairs",
            "2",
            "--out",
            str(out),
            "--model",
            str(model_dir),
        ]
    )
    page = (out / "weights.html").read_text()
    assert page.count('<div class="tokens">') == 4  # 2 pairs x (chosen, rejected)
    sums = [float(s) for s in re.findall(r"sum ([0-9.]+)</h3>", page)]
    # OTPO's budget: chosen and rejected sums equal the shorter length
    for k in range(2):
        chosen_len = len(rows[k]["chosen"].encode()) + 1  # bytes + EOS
        rejected_len = len(rows[k]["rejected"].encode()) + 1
        budget = min(chosen_len, rejected_len)
        assert sums[2 * k] == pytest.approx(budget, abs=1e-3)
        assert sums[2 * k + 1] == pytest.approx(budget, abs=1e-3)
    assert (out / "pair-0.png").stat().st_size > 0
    assert (out / "pair-1.png").stat().st_size > 0


def test_a_recipe_with_a_service_draws_its_picture(tmp_path: Path) -> None:
    """The learned-prior recipe declares a model-side service (the fitted
    prior): the picture builds it like training does. Its weighter is the plain
    sum, so every response token weighs 1."""
    model_dir = build_tiny_model_dir(tmp_path / "tiny")
    rows = [
        {"prompt": f"{i} + 1 =", "chosen": f" {i + 1}", "rejected": f" {i + 20}0"}
        for i in range(2)
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "pics"
    main(
        [
            "mi_dpo_learned_prior",
            "--data",
            str(data),
            "--pairs",
            "2",
            "--out",
            str(out),
            "--model",
            str(model_dir),
        ]
    )
    sums = [
        float(s)
        for s in re.findall(r"sum ([0-9.]+)</h3>", (out / "weights.html").read_text())
    ]
    lengths = [
        len(rows[k][role].encode()) + 1
        for k in range(2)
        for role in ("chosen", "rejected")
    ]
    assert sums == pytest.approx(lengths)
