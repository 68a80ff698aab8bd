"""What a TRL user expects: TRL's TensorBoard tags, ``report_to``, screen-sized
plots with evaluation points, TRL's flat config keys, "did you mean",
gradient checkpointing, the LoRA knobs, a separate eval file and a column map."""

import json
import os
from pathlib import Path

import pytest
from tiny import build_tiny_model_dir

from mipo.training.cli import OverrideError, parse_command_line, split_overrides
from mipo.training.config import TrainConfig
from mipo.training.recipes import load_recipe
from mipo.training.reporting import parse_report_to, scalars, tag, write_plots
from mipo.training.trainer import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"))


def base(model: Path, out: Path, steps: int = 2) -> dict[str, object]:
    return {
        "train.model": str(model),
        "train.output_dir": str(out),
        "train.max_steps": steps,
        "train.max_examples": 40,
        "train.batch_size": 2,
        "train.eval_max_examples": 4,
        "train.eval_max_new_tokens": 3,
    }


def tensorboard_tags(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {
        name: [(e.step, e.value) for e in events.Scalars(name)]
        for name in events.Tags()["scalars"]
    }


def test_tags_follow_trl() -> None:
    assert tag("rewards/chosen") == "train/rewards/chosen"
    assert tag("loss") == "train/loss"
    assert tag("eval/rewards/accuracies") == "eval/rewards/accuracies"
    assert scalars({"step": 3, "loss": 0.5, "eval/loss": 0.4, "note": "x"}) == {
        "train/loss": 0.5,
        "eval/loss": 0.4,
    }


def test_report_to_names_and_errors() -> None:
    assert parse_report_to("tensorboard") == ("tensorboard",)
    assert parse_report_to("none") == ()
    assert parse_report_to("") == ()
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'"):
        parse_report_to("tensorbord")
    missing = [
        name
        for name in ("wandb", "mlflow", "trackio")
        if __import__("importlib").util.find_spec(name) is None
    ]
    for name in missing:
        with pytest.raises(ImportError, match=f"'{name}' is not installed"):
            TrainConfig(report_to=f"tensorboard,{name}")


def test_run_logs_trl_tags_and_plots(tiny_model: Path, tmp_path: Path) -> None:
    """Training records reach TensorBoard as ``train/...``, the in-run and the
    final evaluation as ``eval/...``; metrics.jsonl keeps mipo's keys; plots are
    1000 x 600 and carry the evaluation points."""
    from PIL import Image

    overrides = base(tiny_model, tmp_path, steps=4) | {"train.eval_steps": 2}
    result = train("recipes/dpo.py", overrides, progress=False)
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    train_records = [r for r in records if "loss" in r]
    assert {"rewards/chosen", "num_tokens"} <= set(train_records[0])
    assert not any(k.startswith("train/") for r in records for k in r)
    tags = tensorboard_tags(result.run_dir)
    assert [s for s, _ in tags["train/loss"]] == [1, 2, 3, 4]
    assert tags["train/loss"][0][1] == pytest.approx(train_records[0]["loss"])
    assert "train/rewards/chosen" in tags and "train/num_tokens" in tags
    assert "loss" not in tags and "rewards/chosen" not in tags
    # the evaluation at step 2 and the final one at step 4
    assert [s for s, _ in tags["eval/rewards/accuracies"]] == [2, 4]
    final = json.loads((result.run_dir / "eval.json").read_text())
    assert tags["eval/loss"][-1][1] == pytest.approx(final["eval/loss"], rel=1e-6)
    for name in ("loss", "rewards", "accuracies", "margins"):
        with Image.open(result.run_dir / "plots" / f"{name}.png") as image:
            assert image.size == (1000, 600)


def test_plots_overlay_eval_points(tmp_path: Path) -> None:
    """An eval point changes the picture (it is drawn), and a title is set."""
    records = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records) + "\n"
    )
    (plain,) = [p for p in write_plots(tmp_path, "dpo run") if p.stem == "loss"]
    before = plain.read_bytes()
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write(json.dumps({"step": 3, "eval/loss": 0.2}) + "\n")
    write_plots(tmp_path, "dpo run")
    assert plain.read_bytes() != before


def test_flat_trl_keys_in_config_file(tmp_path: Path) -> None:
    config = tmp_path / "trl.yaml"
    config.write_text(
        "learning_rate: 1.0e-6\nbeta: 0.3\nper_device_train_batch_size: 8\n"
        "num_train_epochs: 2\ntrain:\n  max_steps: 5\n"
    )
    command = parse_command_line(["recipes/dpo.py", "--config", str(config)])
    recipe = load_recipe("recipes/dpo.py")
    train_changes, objective_kwargs = split_overrides(recipe, command.overrides)
    assert train_changes == {
        "learning_rate": 1e-6,
        "batch_size": 8,
        "epochs": 2.0,
        "max_steps": 5,
    }
    assert objective_kwargs == {"beta": 0.3}


def test_unknown_key_suggests_the_closest() -> None:
    recipe = load_recipe("recipes/dpo.py")
    with pytest.raises(OverrideError, match=r"did you mean --train.learning_rate\b"):
        split_overrides(recipe, {"train.learnig_rate": "1"})
    with pytest.raises(OverrideError, match=r"did you mean --objective.beta\b"):
        split_overrides(recipe, {"bta": "1"})
    with pytest.raises(OverrideError) as error:
        split_overrides(recipe, {"zzzzzz": "1"})
    assert "did you mean" not in str(error.value)
    assert "\n" not in str(error.value)


def test_gradient_checkpointing_equals_plain_run(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Same losses and final eval with activations recomputed; the reference is
    not checkpointed (it never runs a backward)."""
    plain = train("recipes/dpo.py", base(tiny_model, tmp_path / "a", 3), progress=False)
    overrides = base(tiny_model, tmp_path / "b", 3) | {
        "train.gradient_checkpointing": True
    }
    checkpointed = train("recipes/dpo.py", overrides, progress=False)

    def losses(run_dir: Path) -> list[float]:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if "loss" in r]

    assert len(losses(plain.run_dir)) == 3
    assert losses(checkpointed.run_dir) == pytest.approx(
        losses(plain.run_dir), rel=1e-5, abs=1e-7
    )
    assert losses(plain.run_dir)[-1] != losses(plain.run_dir)[0]  # it trained
    assert checkpointed.eval["eval/loss"] == pytest.approx(
        plain.eval["eval/loss"], rel=1e-5
    )


def test_gradient_checkpointing_only_on_policy(tiny_model: Path) -> None:
    from mipo.training.models import load_models
    from mipo.training.recipes import load_recipe as load

    objective = load("recipes/dpo.py").objective
    config = TrainConfig(model=str(tiny_model), gradient_checkpointing=True)
    policy, reference, _, _ = load_models(config, objective.needs)
    assert policy.is_gradient_checkpointing
    assert reference is not None and not reference.model.is_gradient_checkpointing


def test_lora_knobs(tiny_model: Path) -> None:
    from mipo.training.models import load_models
    from mipo.training.recipes import load_recipe as load

    objective = load("recipes/dpo.py").objective
    config = TrainConfig(
        model=str(tiny_model),
        lora_rank=4,
        lora_alpha=16.0,
        lora_dropout=0.1,
        lora_target_modules="q_proj,v_proj",
    )
    policy, _, _, _ = load_models(config, objective.needs)
    lora = policy.peft_config["default"]
    assert lora.lora_alpha == 16 and lora.lora_dropout == 0.1
    assert set(lora.target_modules) == {"q_proj", "v_proj"}
    wrapped = {
        n.split(".lora_A")[0].rsplit(".", 1)[-1]
        for n, _ in policy.named_parameters()
        if "lora_A" in n
    }
    assert wrapped == {"q_proj", "v_proj"}
    scaling = next(
        m.scaling["default"] for m in policy.modules() if hasattr(m, "lora_A")
    )
    assert scaling == pytest.approx(16 / 4)
    default = TrainConfig(model=str(tiny_model), lora_rank=4)
    policy, _, _, _ = load_models(default, objective.needs)
    assert policy.peft_config["default"].lora_alpha == 8  # twice the rank


def write_pairs(path: Path, rows: int, offset: int) -> Path:
    with path.open("w") as handle:
        for i in range(offset, offset + rows):
            row = {"prompt": f"{i}+1=", "better": f"{i + 1}", "worse": f"{i + 2}"}
            handle.write(json.dumps(row) + "\n")
    return path


def test_eval_dataset_and_column_map(tmp_path: Path) -> None:
    from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
    from mipo.training.loaders import load_run_data

    train_file = write_pairs(tmp_path / "train.jsonl", 12, 0)
    eval_file = write_pairs(tmp_path / "eval.jsonl", 5, 100)
    config = TrainConfig(
        dataset=str(train_file),
        eval_dataset=str(eval_file),
        column_map="chosen=better,rejected=worse",
        max_examples=0,
        eval_max_examples=0,
    )
    data = load_run_data(config, tiny_chat_tokenizer())
    assert len(data.train) == 12  # no split of the training file
    assert len(data.eval) == len(data.eval_records) == 5
    assert [r.prompt for r in data.eval_records][:2] == ["100+1=", "101+1="]
    assert data.eval_records[0].chosen == "101"
    assert data.eval_records[0].rejected == "102"
    assert str(eval_file) in data.eval_records[0].source


def test_gradient_checkpointing_with_lora_adapter_off(
    tiny_model: Path, tmp_path: Path
) -> None:
    """LoRA on frozen embeddings still gets gradients (non-reentrant
    checkpointing), and the adapter-off reference is unchanged."""
    lora = {
        "train.lora_rank": 4,
        "train.reference": "adapter_off",
        "train.learning_rate": 1e-3,
    }

    def losses(flag: bool, out: str) -> list[float]:
        overrides = base(tiny_model, tmp_path / out, 3) | lora
        overrides["train.gradient_checkpointing"] = flag
        result = train("recipes/dpo.py", overrides, progress=False)
        lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if "loss" in r]

    plain, checkpointed = losses(False, "a"), losses(True, "b")
    assert plain[-1] != plain[0]
    assert checkpointed == pytest.approx(plain, rel=1e-5, abs=1e-7)
