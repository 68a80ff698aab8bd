"""mipo.compare on the tiny model: every output, resuming a killed compare, the CLI."""

import json
import os
from pathlib import Path

import pytest
from tiny import build_tiny_model_dir

import mipo.tools.compare as compare_module
from mipo.tools.compare import compare, main, parse_arguments
from mipo.training.recipes import load_recipe, recipe_from

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def budget(model: Path) -> dict[str, object]:
    return {
        "train.model": str(model),
        "train.max_steps": 2,
        "train.max_examples": 40,
        "train.batch_size": 2,
        "train.eval_max_examples": 4,
        "train.eval_max_new_tokens": 3,
        "train.learning_rate": 1e-3,
        "train.warmup_steps": 1,
    }


def test_compare_writes_every_output(tiny_model: Path, tmp_path: Path) -> None:
    simpo = load_recipe("simpo")
    python_made = recipe_from(simpo.objective, simpo.train, name="simpo_python")
    result = compare(
        ["dpo", python_made], overrides=budget(tiny_model), evals=2, out_dir=tmp_path,
        progress=False,
    )  # fmt: skip
    for name in ("compare.json", "compare.md", "frontier.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert [m["method"] for m in saved["methods"]] == ["dpo", "simpo_python"]
    assert saved["has_gold"] and saved["budget"]["max_steps"] == 2
    for method in result["methods"]:
        gold = method["gold_reward"]
        assert gold["low"] <= gold["mean"] <= gold["high"] and gold["n"] == 4
        assert method["gold_gain"]["n"] == 4
        accuracy = method["reward_accuracy"]
        assert 0.0 <= accuracy["low"] <= accuracy["mean"] <= accuracy["high"] <= 1.0
        assert [p["step"] for p in method["curve"]] == [0, 1, 2]
        assert method["step_seconds"]["mean"] > 0
        assert method["tokens_per_second"]["mean"] > 0
        assert method["answer_chars"]["mean"] >= 0  # read next to the gold reward
    dpo, simpo_row = result["methods"]
    assert dpo["kl_per_token"]["mean"] >= 0.0
    assert simpo_row["kl_per_token"] is None  # reference-free: no KL to report
    report = (tmp_path / "compare.md").read_text()
    assert "| dpo |" in report and "| simpo_python |" in report
    assert "| gold reward [95% CI] | answer chars | gold gain" in report
    without = {
        **result,
        "methods": [{**m, "answer_chars": None} for m in result["methods"]],
    }
    from mipo.tools.compare_report import table

    assert "answer chars" not in table(without)  # runs that did not log it
    assert "frontier.png" in report
    assert result["runs"] == 2 and result["train_seconds"] > 0
    _check_page(result, tmp_path / "docs")


def _check_page(result: dict, docs: Path) -> None:
    """``update_page`` rewrites only the text between the markers, copies the
    figures beside the page, and states the prompts per seed and the time."""
    from mipo.tools.compare_report import BEGIN, END, update_page

    docs.mkdir()
    page = docs / "which.md"
    page.write_text(
        f"# Title\n\nintro\n\n{BEGIN}\nold table\n{END}\n\n## Reading\nkept\n"
    )
    update_page(result, page)
    text = page.read_text()
    assert text.startswith("# Title\n\nintro\n\n" + BEGIN)
    assert text.endswith(END + "\n\n## Reading\nkept\n")
    assert "old table" not in text and "| dpo |" in text
    assert "held-out prompts: 4 per seed)" in text
    assert "min of training steps over 2 runs" in text
    for name in ("frontier.png", "curves.png"):
        assert (docs / "images" / "which" / name).stat().st_size > 0
    two_seeds = {**result, "budget": {**result["budget"], "seeds": [0, 1]}}
    two_seeds["methods"] = [{**result["methods"][0], "gold_reward": {"n": 240}}]
    from mipo.tools.compare_report import _held_out

    assert (
        _held_out(two_seeds)
        == "held-out prompts: 120 per seed, 240 pooled over 2 seeds"
    )


def test_a_killed_compare_continues_where_it_stopped(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = compare_module._train_one
    calls: list[str] = []

    def dies_on_the_second(recipe, overrides, root, progress):  # noqa: ANN001, ANN202
        calls.append(recipe.name)
        if len(calls) == 2:
            from mipo.training.trainer import train

            train(
                recipe, overrides, stop_after=1, progress=False
            )  # killed after step 1
            raise KeyboardInterrupt
        return real(recipe, overrides, root, progress)

    monkeypatch.setattr(compare_module, "_train_one", dies_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        compare(["dpo", "ipo"], overrides=budget(tiny_model), evals=2, out_dir=tmp_path,
                progress=False)  # fmt: skip
    first = next((tmp_path / "runs" / "dpo" / "seed0").glob("*/metrics.jsonl"))
    before = first.read_text()
    partial = next((tmp_path / "runs" / "ipo" / "seed0").glob("*/checkpoint-1"))
    assert not (partial.parent / "eval.json").exists()

    resumed: list[str] = []

    def records(recipe, overrides, root, progress):  # noqa: ANN001, ANN202
        resumed.append(recipe.name)
        return real(recipe, overrides, root, progress)

    monkeypatch.setattr(compare_module, "_train_one", records)
    result = compare(["dpo", "ipo"], overrides=budget(tiny_model), evals=2,
                     out_dir=tmp_path, progress=False)  # fmt: skip
    assert first.read_text() == before  # the finished run was read back, not retrained
    runs = list((tmp_path / "runs" / "ipo" / "seed0").iterdir())
    assert runs == [partial.parent]  # the killed run was resumed in place
    assert (partial.parent / "checkpoint-2").is_dir()
    lines = (partial.parent / "metrics.jsonl").read_text().splitlines()
    steps = [r["step"] for r in map(json.loads, lines) if "loss" in r]
    assert steps[-1] == 2
    assert [m["method"] for m in result["methods"]] == ["dpo", "ipo"]


def test_the_command_line_parses_and_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    options = parse_arguments(
        ["dpo", "simpo", "--seeds", "0,1", "--evals=4", "--out", str(tmp_path),
         "--train.max_steps=3", "--gold", "m:f"]
    )  # fmt: skip
    assert options["recipes"] == ["dpo", "simpo"]
    assert options["seeds"] == [0, 1] and options["evals"] == 4
    assert options["overrides"] == {"train.max_steps": "3"}
    assert options["gold"] == "m:f" and options["out_dir"] == str(tmp_path)
    for argv, message in (
        (["dpo", "--seeds", "a"], "--seeds"),
        (["dpo", "--bogus"], "unknown option"),
        (["--evals", "2"], "no recipe"),
    ):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("mipo: error:") and message in err
        assert "Traceback" not in err


def test_unequal_pairs_per_step_are_said() -> None:
    """OTPO's recipe accumulates 16 micro-batches: with only the batch size in the
    budget it would see 16 times DPO's pairs per step, and compare says so; the
    "Which method works here?" budget pins both."""
    from mipo.tools.compare import (
        WHICH_METHOD_BUDGET,
        WHICH_METHOD_RECIPES,
        budget_warning,
        pairs_per_step,
    )
    from mipo.training.recipes import load_recipe

    recipes = [load_recipe("dpo"), load_recipe("otpo")]
    sizes = pairs_per_step(recipes, {"train.batch_size": 2})
    assert sizes == {"dpo": 2, "otpo": 32}
    warning = budget_warning(sizes)
    assert warning is not None and "dpo 2, otpo 32" in warning
    assert budget_warning({"dpo": 8, "simpo": 8}) is None
    which = pairs_per_step(
        [load_recipe(n) for n in WHICH_METHOD_RECIPES], WHICH_METHOD_BUDGET
    )
    assert set(which.values()) == {8}
