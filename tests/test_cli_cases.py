"""Bad input through the command line, as a new user would type it.

Every row runs one command of the ``mipo`` console in this process (a few run
as real subprocesses) on files the test writes, and checks the exit status, a
fragment of the message, that the message is one ``mipo: error:`` line with no
traceback, and that a refused run leaves no run directory behind. Most rows
stop before any model loads; the rows marked ``MODEL`` train the tiny random
Llama of ``tests/tiny.py`` for a step or three.
"""

import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tiny import build_tiny_model_dir

from mipo.tools.console import main as console
from mipo.training.run_dir import RunLock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def _rows(count: int = 12, **extra: object) -> list[dict]:
    return [
        {
            "prompt": f"{i} + 1 =",
            "chosen": f" {i + 1}",
            "rejected": f" {i + 2}0",
            **extra,
        }
        for i in range(count)
    ]


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def _with(rows: list[dict], index: int, **changes: object) -> list[dict]:
    rows = [dict(row) for row in rows]
    rows[index].update(changes)
    return [{k: v for k, v in row.items() if v is not DROP} for row in rows]


DROP = object()


def _token_weights(rows: list[dict], value: float = 1.0) -> list[dict]:
    """TIS-DPO columns: one weight per byte of the response, plus the EOS."""
    return [
        {
            **row,
            "chosen_weight": [value] * (len(row["chosen"].encode()) + 1),
            "rejected_weight": [value] * (len(row["rejected"].encode()) + 1),
        }
        for row in rows
    ]


def write_files(root: Path) -> None:
    """Every data, config and recipe file the rows name."""
    ok = _rows()
    texts = {
        "ok.jsonl": _jsonl(ok),
        "lines.json": _jsonl(ok),  # JSON Lines under a .json name
        "bad_line3.jsonl": _jsonl(ok[:2]) + '{"prompt": "x", "chosen": \n' + _jsonl(ok),
        "no_chosen.jsonl": _jsonl(_with(ok, 4, chosen=DROP)),
        "chosen_number.jsonl": _jsonl(_with(ok, 2, chosen=5)),
        "same.jsonl": _jsonl(_with(ok, 3, rejected=ok[3]["chosen"])),
        "both_empty.jsonl": _jsonl(_with(ok, 1, chosen="", rejected="")),
        "robot.jsonl": _jsonl(
            _with(
                ok,
                2,
                prompt=[{"role": "robot", "content": "hi"}],
                chosen=[{"role": "assistant", "content": "a"}],
                rejected=[{"role": "assistant", "content": "b"}],
            )
        ),
        "empty.jsonl": "",
        "blank_lines.jsonl": "\n\n\n",
        "wrapped.json": json.dumps({"train": ok}),
        "scalar.json": "42",
        "w_missing.jsonl": _jsonl(_with(_rows(weight=1.0), 5, weight=DROP)),
        "w_big.jsonl": _jsonl(_with(_rows(weight=1.0), 3, weight=1e308)),
        "w_nan.jsonl": _jsonl(_rows(weight=1.0)).replace(
            '"weight": 1.0}', '"weight": NaN}', 1
        ),
        "w_text.jsonl": _jsonl(_with(_rows(weight=1.0), 7, weight="heavy")),
        "tok_ok.jsonl": _jsonl(_token_weights(ok)),
        "tok_short.jsonl": _jsonl(_with(_token_weights(ok), 6, chosen_weight=[1.0])),
        "tok_inf.jsonl": _jsonl(_token_weights(ok)).replace("1.0", "1e39", 1),
        "tok_half.jsonl": _jsonl(_token_weights(ok)[:6] + ok[6:]),
        "dupes.jsonl": _jsonl(ok + ok[:3]),
        "one.jsonl": _jsonl(ok[:1]),
        "no_header.csv": "a,b\n1,2\n",
        "bad.yaml": "train:\n  max_steps: [1,\n",
        "list.yaml": "- train.max_steps: 2\n",
        "unknown.yaml": "train.learning_rat: 1.0e-6\n",
        "typed.yaml": "train:\n  seed: two\n",
        "trl_fp16.yaml": "learning_rate: 5.0e-7\nfp16: true\n",
        "trl_loss.yaml": "beta: 0.1\nloss_type: hinge\n",
        "trl_optim.yaml": "do_train: true\noptim: adafactor\n",
        "trl_split.yaml": "dataset_train_split: train\n",
        "trl_ok.yaml": (
            "do_train: true\nbf16: false\nuse_peft: true\nlora_r: 4\n"
            "precompute_ref_log_probs: true\noptim: adamw_torch\nloss_type: sigmoid\n"
            f"eval_strategy: steps\ndataset_name: {root / 'bom.jsonl'}\n"
        ),
        "bad.json": '{"train.max_steps": 2,,}',
        "recipe_syntax.py": "from mipo import Objective\nobjective = (\n",
        "recipe_empty.py": "x = 1\n",
        "recipe_raises.py": "import mipo\n\nobjective = 1 / 0\n",
    }
    for name, text in texts.items():
        (root / name).write_text(text)
    (root / "bom.jsonl").write_text(_jsonl(ok), encoding="utf-8-sig")
    (root / "latin1.jsonl").write_bytes(
        _jsonl(ok[:3]).encode() + b'{"prompt": "caf\xe9"}\n'
    )
    whole = gzip.compress(_jsonl(ok).encode())
    (root / "trunc.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    (root / "gz_bad_line.jsonl.gz").write_bytes(
        gzip.compress((_jsonl(ok[:1]) + "{oops\n").encode())
    )
    (root / "folder").mkdir()
    (root / "model_without_config").mkdir()


@dataclass(frozen=True)
class Env:
    data: Path
    model: Path
    runs: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("cli-cases")
    (root / "d").mkdir()
    write_files(root / "d")
    model = build_tiny_model_dir(root / "tiny")
    runs = root / "saved"
    _saved_runs(model, root / "d", runs)
    return Env(data=root / "d", model=model, runs=runs)


def _saved_runs(model: Path, data: Path, out: Path) -> None:
    """``model_only``: one step saved with save_only_model; ``no_checkpoint``: a
    run directory whose checkpoints were deleted; ``full``: a resumable run."""
    from mipo.training.trainer import train

    base = {
        **TINY_KEYS,
        "train.model": str(model),
        "train.dataset": str(data / "ok.jsonl"),
    }
    for name, extra in (
        ("model_only", {"train.save_only_model": True}),
        ("no_checkpoint", {}),
        ("full", {}),
    ):
        result = train(
            "dpo",
            {**base, **extra, "train.output_dir": str(out / name)},
            progress=False,
        )
        result.run_dir.rename(out / f"{name}-run")
    for path in (out / "no_checkpoint-run").glob("checkpoint-*"):
        shutil.rmtree(path)


TINY_KEYS = {
    "train.max_steps": 1,
    "train.batch_size": 2,
    "train.eval_max_examples": 2,
    "train.eval_max_new_tokens": 2,
    "train.max_length": 64,
    "train.max_prompt_length": 32,
    "train.report_to": "none",
}
TINY = [f"--{key}={value}" for key, value in TINY_KEYS.items()]
"""Settings that keep a tiny-model row to a second or two."""

MODEL = "model"
"""Rows that load the tiny model (the rest stop before it)."""

RAW = "raw"
"""Rows whose command line is given as is (no tiny-model settings appended)."""

# (id, command line, exit status, message fragment, flags); in the command
# line {D} is the data folder, {M} the tiny model, {O} the output folder and {R}
# the saved runs; "train" rows get {M}, {O} and TINY appended (unless RAW).
# fmt: off
CASES: list[tuple[str, str, int, str, str]] = [
    # --- settings and the command line ---
    ("no-recipe", "train", 2, "no recipe given", ""),
    ("recipe-missing", "train recipes/nope.py", 2, "recipe 'recipes/nope.py' not found; shipped recipes: aot", ""),
    ("recipe-bare-name-missing", "train dpoo", 2, "recipe 'dpoo' not found", ""),
    ("recipe-syntax", "train {D}/recipe_syntax.py", 2, "recipe_syntax.py:2:", ""),
    ("recipe-incomplete", "train {D}/recipe_empty.py", 2, "recipe_empty.py: must define `objective` (a Objective instance)", ""),
    ("recipe-raises", "train {D}/recipe_raises.py", 2, "recipe_raises.py:3: the recipe raised ZeroDivisionError", ""),
    ("two-recipes", "train dpo simpo", 2, "unexpected argument 'simpo'", ""),
    ("unknown-key", "train dpo --train.learning_rat=1e-6", 2, "--train.learning_rat: unknown key for recipe 'dpo'; did you mean --train.learning_rate", ""),
    ("unknown-objective-key", "train dpo --objective.bta=0.2", 2, "did you mean --objective.beta", ""),
    ("unknown-group", "train dpo --model.beta=1", 2, "--model.beta: unknown key", ""),
    ("flat-trl-unknown", "train dpo --learning_rat=1e-6", 2, "--learning_rat: unknown key", ""),
    ("key-without-value", "train dpo --train.max_steps", 2, "--train.max_steps: expects a value", ""),
    ("max-grad-norm-nan", "train dpo --train.max_grad_norm=nan", 2, "--train.max_grad_norm: must be a finite number, got nan; use 0 to turn clipping off", ""),
    ("max-grad-norm-inf", "train dpo --train.max_grad_norm=inf", 2, "--train.max_grad_norm: must be a finite number, got inf", ""),
    ("lr-zero", "train dpo --train.learning_rate=0", 2, "--train.learning_rate: must be > 0, got 0.0", ""),
    ("lr-negative", "train dpo --train.learning_rate=-1e-5", 2, "--train.learning_rate: must be > 0", ""),
    ("lr-text", "train dpo --train.learning_rate=fast", 2, "--train.learning_rate='fast': expected a float", ""),
    ("lr-nan", "train dpo --train.learning_rate=nan", 2, "--train.learning_rate: must be a finite number", ""),
    ("batch-zero", "train dpo --train.batch_size=0", 2, "--train.batch_size: must be > 0", ""),
    ("batch-fraction", "train dpo --train.batch_size=2.5", 2, "--train.batch_size='2.5': expected an int", ""),
    ("epochs-inf", "train dpo --train.epochs=inf", 2, "--train.epochs: must be a finite number", ""),
    ("weight-decay-nan", "train dpo --train.weight_decay=nan", 2, "--train.weight_decay: must be a finite number", ""),
    ("lora-alpha-nan", "train dpo --train.lora_alpha=nan", 2, "--train.lora_alpha: must be a finite number", ""),
    ("warmup-ratio", "train dpo --train.warmup_ratio=1.5", 2, "--train.warmup_ratio: must be in [0, 1)", ""),
    ("eval-fraction", "train dpo --train.eval_fraction=1", 2, "--train.eval_fraction: must be in [0, 1)", ""),
    ("prompt-longer", "train dpo --train.max_prompt_length=500", 2, "--train.max_prompt_length: must be > 0 and < max_length", ""),
    ("optimizer", "train dpo --train.optimizer=sgd", 2, "--train.optimizer='sgd': expected one of 'adamw', 'rmsprop'", ""),
    ("precision", "train dpo --train.precision=fp16", 2, "--train.precision='fp16': expected one of 'fp32', 'bf16'", ""),
    ("bool", "train dpo --train.swap_pairs=maybe", 2, "--train.swap_pairs='maybe': expected a bool", ""),
    ("adapter-off-no-lora", "train dpo --train.reference=adapter_off", 2, "--train.reference='adapter_off' needs lora_rank > 0", ""),
    ("precomputed-kl", "train tdpo --train.reference=precomputed", 2, "--train.reference='precomputed': the objective needs", ""),
    ("dropout", "train dpo --train.lora_dropout=1.5", 2, "--train.lora_alpha / lora_dropout", ""),
    ("mixup", "train dpo --train.ref_model_mixup_alpha=2", 2, "--train.ref_model_mixup_alpha: must be in [0, 1]", ""),
    ("save-limit", "train dpo --train.save_total_limit=-1", 2, "--train.save_total_limit: must be >= 0", ""),
    ("bad-steps", "train dpo --train.max_bad_steps=0", 2, "--train.max_bad_steps: must be > 0", ""),
    ("tracker", "train dpo --train.report_to=tensorbored", 2, "--train.report_to: unknown tracker 'tensorbored'", ""),
    ("tracker-missing", "train dpo --train.report_to=wandb", 2, "--train.report_to: 'wandb' is not installed", ""),
    ("objective-beta-text", "train dpo --objective.beta=big", 2, "--objective.beta='big': expected a float", ""),
    ("objective-prior-name", "train dpo --objective.prior=Nope()", 2, "--objective.prior: 'Nope()': unknown name 'Nope'", ""),
    ("objective-prior-kind", "train dpo --objective.prior=RankTransform()", 2, "expected AbstractPrior, got RankTransform", ""),
    ("preset-unknown", "train ti_dpo --preset fast", 2, "--preset fast: recipe 'ti_dpo' has no such preset (presets: paper, released)", ""),
    ("preset-no-recipe", "train --preset paper", 2, "--preset: needs a recipe", ""),
    ("gold-import", "train dpo --train.gold=surely_not_a_module:f", 2, "cannot import 'surely_not_a_module'", ""),
    ("config-missing", "train dpo --config {D}/nope.yaml", 2, "--config: {D}/nope.yaml does not exist", ""),
    ("config-folder", "train dpo --config {D}/folder", 2, "--config: {D}/folder is a folder", ""),
    ("config-bad-yaml", "train dpo --config {D}/bad.yaml", 2, "{D}/bad.yaml:3: not valid YAML", ""),
    ("config-list", "train dpo --config {D}/list.yaml", 2, "{D}/list.yaml: expected a mapping of dotted keys", ""),
    ("config-unknown", "train dpo --config {D}/unknown.yaml", 2, "{D}/unknown.yaml:1: --train.learning_rat: unknown key for recipe 'dpo'; did you mean --train.learning_rate", ""),
    ("config-typed", "train dpo --config {D}/typed.yaml", 2, "{D}/typed.yaml:2: --train.seed='two': expected an int", ""),
    ("config-trl-fp16", "train dpo --config {D}/trl_fp16.yaml", 2, "{D}/trl_fp16.yaml:2: --fp16: not supported (float16 needs loss scaling); use bf16: true", ""),
    ("config-trl-loss-type", "train dpo --config {D}/trl_loss.yaml", 2, "{D}/trl_loss.yaml:2: --loss_type: 'hinge' is recipes/slic.py in mipo, but this run's recipe is 'dpo'", ""),
    ("config-trl-optim", "train dpo --config {D}/trl_optim.yaml", 2, "{D}/trl_optim.yaml:2: --optim: 'adafactor' is not available in mipo", ""),
    ("config-trl-split", "train dpo --config {D}/trl_split.yaml", 2, "{D}/trl_split.yaml:1: --dataset_train_split: needs dataset_name", ""),
    ("config-trl-trains", "train dpo --config {D}/trl_ok.yaml", 0, "mipo: warning: {D}/trl_ok.yaml:1: --do_train ignored: mipo always trains", MODEL),
    ("trl-flag-value", "train dpo --bf16=maybe", 2, "--bf16: expected true or false, got 'maybe'", ""),
    ("trl-loss-type-flag", "train simpo --loss_type=sigmoid", 2, "--loss_type: 'sigmoid' is recipes/dpo.py in mipo, but this run's recipe is 'simpo'", ""),
    ("config-bad-json", "train dpo --config {D}/bad.json", 2, "{D}/bad.json:1: not valid JSON", ""),
    ("config-no-value", "train dpo --config", 2, "--config: expects a value", RAW),
    ("resume-missing", "train --resume {D}/no_run", 2, "{D}/no_run: not a run directory (does not exist)", ""),
    ("resume-not-a-run", "train --resume {D}/folder", 2, "{D}/folder: not a run directory (has no config.json)", ""),
    ("resume-no-checkpoint", "train --resume {R}/no_checkpoint-run", 2, "no checkpoint-N directory to resume from", ""),
    ("resume-model-only", "train --resume {R}/model_only-run", 2, "was saved with --train.save_only_model=true and holds no optimiser state", ""),
    ("model-missing", "train dpo --train.model={D}/no_model", 2, "--train.model={D}/no_model: no such directory", ""),
    ("model-no-config", "train dpo --train.model={D}/model_without_config", 2, "has no config.json", ""),
    ("model-hub-offline", "train dpo --train.model=someone/some-model", 2, "--train.model='someone/some-model': not a local directory nor in the Hugging Face cache, and HF_HUB_OFFLINE is set", ""),
    # --- data: refused before the model loads and before a run directory ---
    ("data-missing", "train dpo --train.dataset={D}/nope.jsonl", 2, "{D}/nope.jsonl", ""),
    ("data-folder", "train dpo --train.dataset={D}/folder", 2, "{D}/folder: is a folder, not a data file", ""),
    ("data-truncated-gz", "train dpo --train.dataset={D}/trunc.jsonl.gz", 2, "{D}/trunc.jsonl.gz: truncated or corrupt gzip data", ""),
    ("data-gzip-inside-bad", "train dpo --train.dataset={D}/gz_bad_line.jsonl.gz", 2, "{D}/gz_bad_line.jsonl.gz:2", ""),
    ("data-latin1", "train dpo --train.dataset={D}/latin1.jsonl", 2, "{D}/latin1.jsonl:4", ""),
    ("data-syntax", "train dpo --train.dataset={D}/bad_line3.jsonl", 2, "{D}/bad_line3.jsonl:3", ""),
    ("data-no-chosen", "train dpo --train.dataset={D}/no_chosen.jsonl", 2, "{D}/no_chosen.jsonl:5: field 'chosen': missing", ""),
    ("data-chosen-number", "train dpo --train.dataset={D}/chosen_number.jsonl", 2, "{D}/chosen_number.jsonl:3: field 'chosen'", ""),
    ("data-chosen-equals-rejected", "train dpo --train.dataset={D}/same.jsonl", 2, "{D}/same.jsonl:4", ""),
    ("data-both-empty", "train dpo --train.dataset={D}/both_empty.jsonl", 2, "{D}/both_empty.jsonl:2", ""),
    ("data-role-robot", "train dpo --train.dataset={D}/robot.jsonl", 2, "{D}/robot.jsonl:3: field 'prompt[0].role'", ""),
    ("data-empty", "train dpo --train.dataset={D}/empty.jsonl", 2, "{D}/empty.jsonl", ""),
    ("data-blank-lines", "train dpo --train.dataset={D}/blank_lines.jsonl", 2, "{D}/blank_lines.jsonl", ""),
    ("data-wrapped", "train dpo --train.dataset={D}/wrapped.json", 2, "'train'", ""),
    ("data-scalar", "train dpo --train.dataset={D}/scalar.json", 2, "{D}/scalar.json", ""),
    ("data-csv-columns", "train dpo --train.dataset={D}/no_header.csv", 2, "{D}/no_header.csv:2", ""),
    ("weight-missing-one-row", "train dpo --train.dataset={D}/w_missing.jsonl", 2, "{D}/w_missing.jsonl:6: field 'weight': missing on this row, but 11 of 12 rows have it", ""),
    ("weight-1e308", "train dpo --train.dataset={D}/w_big.jsonl", 2, "{D}/w_big.jsonl:4: field 'weight': is 1e+308, not finite in float32", ""),
    ("weight-nan", "train dpo --train.dataset={D}/w_nan.jsonl", 2, "{D}/w_nan.jsonl:1: field 'weight'", ""),
    ("weight-text", "train dpo --train.dataset={D}/w_text.jsonl", 2, "{D}/w_text.jsonl:8: field 'weight'", ""),
    ("tis-dpo-no-weights", "train tis_dpo --train.dataset={D}/ok.jsonl", 2, "{D}/ok.jsonl:1: field 'chosen_weight': missing on 12 of 12 rows, and the objective reads it (token_weights comes from 'chosen_weight'/'rejected_weight'); add 'chosen_weight' and 'rejected_weight' to every row", ""),
    ("tis-dpo-half-weights", "train tis_dpo --train.dataset={D}/tok_half.jsonl", 2, "{D}/tok_half.jsonl:7: field 'chosen_weight': missing on this row", ""),
    ("tis-dpo-short-weights", "train tis_dpo --train.dataset={D}/tok_short.jsonl", 2, "{D}/tok_short.jsonl:7: field 'chosen_weight'", ""),
    ("tis-dpo-inf-weight", "train tis_dpo --train.dataset={D}/tok_inf.jsonl", 2, "{D}/tok_inf.jsonl:1: field 'chosen_weight", ""),
    ("eval-dataset-bad", "train dpo --train.dataset={D}/ok.jsonl --train.eval_dataset={D}/bad_line3.jsonl", 2, "{D}/bad_line3.jsonl:3", ""),
    ("column-map-syntax", "train dpo --train.column_map=chosen", 2, "column map: entry 'chosen' is not FIELD=COLUMN", ""),
    ("column-map-field", "train dpo --train.column_map=answer=a", 2, "'answer' is not a field mipo reads", ""),
    ("column-map-builtin", "train dpo --train.column_map=chosen=a", 2, "a column map does not apply to built-in tasks", ""),
    ("no-training-pairs", "train dpo --train.dataset={D}/one.jsonl --train.eval_fraction=0.5", 2, "--train.eval_fraction=0.5: {D}/one.jsonl has 1 pairs, which leaves none for training", ""),
    ("builtin-unknown", "train dpo --train.dataset=builtin:nope", 2, "builtin:nope", ""),
    ("hub-offline", "train dpo --train.dataset=someone/some-data", 2, "someone/some-data", ""),
    # --- rows that need the tiny model ---
    ("lora-bad-targets", "train dpo --train.lora_rank=2 --train.lora_target_modules=nope_proj", 2, "--train.lora_target_modules='nope_proj'", MODEL),
    ("beta-1e30-not-silent", "train dpo --objective.beta=1e30 --train.max_steps=4 --train.eval_fraction=0", 1, "3 consecutive steps had a non-finite loss or gradient norm", MODEL),
    ("bom-accepted", "train dpo --train.dataset={D}/bom.jsonl", 0, "", MODEL),
    ("jsonl-named-json-accepted", "train dpo --train.dataset={D}/lines.json", 0, "", MODEL),
    ("duplicates-warned", "train dpo --train.dataset={D}/dupes.jsonl", 0, "mipo: warning: {D}/dupes.jsonl:13", MODEL),
    # --- the other entry points ---
    ("eval-no-args", "eval", 2, "expected one run directory, got none", ""),
    ("eval-two-args", "eval a b", 2, "expected one run directory, got ['a', 'b']", ""),
    ("eval-not-a-run", "eval {D}/folder", 2, "{D}/folder: not a run directory (has no config.json)", ""),
    ("eval-missing", "eval {D}/no_run", 2, "{D}/no_run: not a run directory (does not exist)", ""),
    ("eval-gold-import", "eval {R}/model_only-run --gold=surely_not_a_module:f", 2, "cannot import 'surely_not_a_module'", ""),
    ("eval-gold-missing-function", "eval {R}/model_only-run --gold=json:no_such_function", 2, "no_such_function", ""),
    ("weights-no-command", "weights", 2, "the following arguments are required: command; see python -m mipo.weights --help", ""),
    ("weights-no-data", "weights estimate --out {O}/w.jsonl --model {M}", 2, "the following arguments are required: --data", ""),
    ("weights-both-models", "weights estimate --data {D}/ok.jsonl --out {O}/w.jsonl --model {M} --positive {M}", 2, "give either --model (one model) or --positive and --negative", ""),
    ("weights-no-model", "weights estimate --data {D}/ok.jsonl --out {O}/w.jsonl", 2, "give --model, or both --positive and --negative", ""),
    ("weights-same-prompts", "weights estimate --data {D}/ok.jsonl --out {O}/w.jsonl --model {M}", 2, "one model with identical prompts gives all-zero scores", ""),
    ("weights-eos", "weights estimate --data {D}/ok.jsonl --out {O}/w.jsonl --model {M} --positive-system harmless --eos-weight heavy", 2, "--eos-weight: expected a number or 'scored', got 'heavy'", ""),
    ("weights-batch", "weights estimate --data {D}/ok.jsonl --out {O}/w.jsonl --model {M} --positive-system harmless --batch-size x", 2, "--batch-size: invalid int value: 'x'", ""),
    ("weights-bad-data", "weights estimate --data {D}/trunc.jsonl.gz --out {O}/w.jsonl --model {M} --positive-system harmless", 2, "{D}/trunc.jsonl.gz: truncated or corrupt gzip data", ""),
    ("weights-model-missing", "weights estimate --data {D}/ok.jsonl --out {O}/w.jsonl --model {D}/no_model --positive-system harmless", 2, "--model {D}/no_model: not a model directory", ""),
    ("pictures-no-data", "pictures dpo --out {O}/p", 2, "the following arguments are required: --data", ""),
    ("pictures-pairs", "pictures dpo --data {D}/ok.jsonl --out {O}/p --pairs 0", 2, "--pairs: must be >= 1, got 0", ""),
    ("pictures-pairs-text", "pictures dpo --data {D}/ok.jsonl --out {O}/p --pairs three", 2, "--pairs: invalid int value: 'three'", ""),
    ("pictures-recipe", "pictures nope --data {D}/ok.jsonl --out {O}/p", 2, "recipe 'nope' not found", ""),
    ("pictures-bad-data", "pictures dpo --data {D}/bad_line3.jsonl --out {O}/p", 2, "{D}/bad_line3.jsonl:3", ""),
    ("pictures-tis-no-weights", "pictures tis_dpo --data {D}/ok.jsonl --out {O}/p", 2, "field 'chosen_weight': missing on 3 of 3 rows", ""),
    ("dice-no-args", "dice", 2, "the following arguments are required: recipe, --prompts, --score-reference, --out", ""),
    ("dice-alpha-grid", "dice dpo --prompts p.jsonl --score-reference {M} --out {O}/x --alpha-grid 1:0:1", 2, "--alpha-grid: '1:0:1': expected START:STOP:STEP", ""),
    ("dice-preset", "dice dpo --prompts p.jsonl --score-reference {M} --out {O}/x --preset fast", 2, "--preset: invalid choice: 'fast'", ""),
    ("dice-stray-argument", "dice dpo --prompts p.jsonl --score-reference {M} --out {O}/x stray", 2, "unexpected argument 'stray'", ""),
    ("dice-reserved", "dice dpo --prompts p.jsonl --score-reference {M} --out {O}/x --train.dataset=x.jsonl", 2, "--train.dataset: set by mipo.dice in every round; leave it out", ""),
    ("dice-self-reference", "dice dpo --prompts {D}/ok.jsonl --score-reference {M} --out {O}/x --train.model={M}", 2, "every implicit reward would be 0", ""),
    # the inputs are read before any model path is resolved (here neither exists)
    ("dice-prompts-missing", "dice dpo --prompts {D}/nope.jsonl --score-reference {D}/no_model --out {O}/x --train.model={D}/no_model", 2, "{D}/nope.jsonl: no such prompts file", ""),
    ("dice-prompts-bad-line", "dice dpo --prompts {D}/bad_line3.jsonl --score-reference {D}/no_model --out {O}/x --train.model={D}/no_model", 2, "{D}/bad_line3.jsonl:3: invalid JSON", ""),
    ("dice-offline-bad-line", "dice dpo --prompts {D}/ok.jsonl --offline {D}/bad_line3.jsonl --offline-ratio 0.5 --score-reference {D}/no_model --out {O}/x --train.model={D}/no_model", 2, "{D}/bad_line3.jsonl:3", ""),
    ("compare-no-recipe", "compare --evals 2", 2, "no recipe given", ""),
    ("compare-seeds", "compare dpo --seeds a", 2, "--seeds: expected integers like 0,1, got 'a'", ""),
    ("compare-evals", "compare dpo --evals 0", 2, "--evals: expected an integer >= 1, got '0'", ""),
    ("compare-option", "compare dpo --bogus", 2, "--bogus: unknown option", ""),
    ("compare-recipe", "compare dpo nope", 2, "recipe 'nope' not found", ""),
    ("compare-key", "compare dpo --train.learning_rat=1", 2, "did you mean --train.learning_rate", ""),
    ("docs-port", "docs --port 70000", 2, "--port: must be in 0..65535, got 70000", ""),
    ("docs-port-text", "docs --port http", 2, "--port: invalid int value: 'http'", ""),
    ("docs-unknown", "docs --bogus", 2, "unrecognized arguments: --bogus", ""),
    ("methods-unknown", "methods --bogus", 2, "unrecognized arguments: --bogus", ""),
    ("console-unknown", "trian", 2, "unknown command 'trian'; did you mean 'train'?", ""),
]
# fmt: on


def _argv(line: str, env: Env, out: Path, flags: str = "") -> list[str]:
    """The command line of a row, its placeholders filled in."""
    subs = {
        "{D}": str(env.data),
        "{M}": str(env.model),
        "{O}": str(out),
        "{R}": str(env.runs),
    }
    argv = []
    for arg in shlex.split(line):
        for key, value in subs.items():
            arg = arg.replace(key, value)
        argv.append(arg)
    if argv[0] == "train" and "--resume" not in argv and flags != RAW:
        given = {arg.partition("=")[0] for arg in argv}
        extra = [f"--train.model={env.model}", f"--train.output_dir={out}", *TINY]
        argv += [arg for arg in extra if arg.partition("=")[0] not in given]
    return argv


def _fragment(text: str, env: Env) -> str:
    return text.replace("{D}", str(env.data))


def test_the_table_covers_the_issue() -> None:
    assert len(CASES) >= 90
    assert len({case[0] for case in CASES}) == len(CASES)
    commands = {case[1].split()[0] for case in CASES}
    assert {
        "train",
        "eval",
        "weights",
        "pictures",
        "dice",
        "compare",
        "docs",
        "methods",
    } <= commands


@pytest.mark.parametrize(
    ("line", "status", "fragment", "flags"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_cli_case(
    line: str,
    status: int,
    fragment: str,
    flags: str,
    env: Env,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MIPO_DEBUG", raising=False)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        console(_argv(line, env, out, flags))
        raise SystemExit(0)
    captured = capsys.readouterr()
    assert (stop.value.code or 0) == status, captured.err
    assert "Traceback" not in captured.err + captured.out
    errors = [
        line for line in captured.err.splitlines() if line.startswith("mipo: error:")
    ]
    if status == 0:
        assert errors == []
        assert _fragment(fragment, env) in captured.err
        # the run, and the precomputed reference's cache where a row asks for one
        (run_dir,) = [p for p in out.iterdir() if p.name != ".reference_cache"]
        assert (run_dir / "checkpoint-1").is_dir()
        return
    (line,) = errors
    assert _fragment(fragment, env) in line
    if status == 2:  # refused: nothing was written
        assert not out.exists() or not any(out.iterdir())
    if flags == MODEL and status == 1:  # a run-time stop keeps its log, no checkpoint
        (run_dir,) = out.iterdir()
        assert not list(run_dir.glob("checkpoint-*"))
        assert "skipped" in (run_dir / "metrics.jsonl").read_text()
        RunLock(run_dir).release()  # the failed run let its lock go


def test_resuming_with_another_process_count_is_refused(env: Env) -> None:
    """The data position and each process's random state are per process: a
    one-process checkpoint resumed by two processes would not continue the run,
    so it is refused before any model loads, with the command that would."""
    from mipo.errors import ConfigError
    from mipo.training.checkpoint import check_resumable

    checkpoint = env.runs / "full-run" / "checkpoint-1"
    check_resumable(checkpoint, 1)
    with pytest.raises(ConfigError) as error:
        check_resumable(checkpoint, 2)
    assert "written by 1 process(es) and this launch has 2" in str(error.value)
    assert str(error.value).endswith("python -m mipo.train --resume RUN")
    with pytest.raises(ConfigError, match="holds whole weights and optimiser state"):
        check_resumable(checkpoint, 1, sharded_now=True)  # resumed with fsdp2


def test_eval_checks_its_gold_reward_before_loading_the_model(
    env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import mipo.training.setup as setup

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the model was loaded before --gold was checked")

    monkeypatch.setattr(setup, "load_models", refuse)
    run = env.runs / "model_only-run"
    before = (run / "eval.json").read_bytes()
    with pytest.raises(SystemExit) as stop:
        console(["eval", str(run), "--gold=surely_not_a_module:f"])
    assert stop.value.code == 2
    assert "cannot import 'surely_not_a_module'" in capsys.readouterr().err
    assert (run / "eval.json").read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "status", "fragment"),
    [
        (
            ["-m", "mipo.train", "recipes/nope.py"],
            2,
            "recipe 'recipes/nope.py' not found",
        ),
        (["-m", "mipo.tools.console", "eval"], 2, "expected one run directory"),
        (
            ["-m", "mipo.train", "dpo", "--train.max_grad_norm=nan"],
            2,
            "--train.max_grad_norm",
        ),
    ],
)
def test_real_processes_exit_with_one_line(
    argv: list[str], status: int, fragment: str
) -> None:
    """The exit status a shell sees, and no traceback, in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MIPO_DEBUG", None)
    done = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )
    assert done.returncode == status
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("mipo: error:") and fragment in line


def test_debug_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--debug`` (anywhere, also before the subcommand) and ``MIPO_DEBUG=1``
    let the exception through with its traceback."""
    from mipo.errors import ConfigError

    monkeypatch.delenv("MIPO_DEBUG", raising=False)
    for argv in (
        ["train", "dpo", "--debug", "--train.batch_size=0"],
        ["--debug", "eval"],
    ):
        with pytest.raises(ConfigError):
            console(argv)
    monkeypatch.setenv("MIPO_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="recipe 'nope' not found"):
        console(["train", "nope"])
    monkeypatch.setenv("MIPO_DEBUG", "0")
    with pytest.raises(SystemExit) as stop:
        console(["train", "nope"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("mipo: error: recipe 'nope'")


def test_exit_codes_of_error_kinds() -> None:
    """Usage, data and config errors exit 2; run-time failures 1; a bug 1 with
    the hint to rerun with --debug; Ctrl-C 130."""
    from mipo.errors import (
        DataError,
        NonFiniteLossError,
        TrainingInterrupted,
        TrainingStopped,
    )
    from mipo.training.command import error_line, exit_code, mark_run_time

    assert exit_code(DataError("x", file="a.jsonl", line=3, field="chosen")) == 2
    assert exit_code(FileNotFoundError(2, "No such file or directory", "x")) == 2
    assert exit_code(TrainingStopped("stopped")) == 1
    assert exit_code(NonFiniteLossError("nan")) == 1
    assert exit_code(OSError(28, "No space left on device", "/runs")) == 1
    assert exit_code(TrainingInterrupted("SIGINT at step 1")) == 130
    assert exit_code(KeyboardInterrupt()) == 130
    assert exit_code(KeyError("k")) == 1
    during = ValueError("a bad batch at step 3")
    mark_run_time(during)  # raised once training started: results may exist
    assert exit_code(during) == 1
    assert error_line(during) == "mipo: error: a bad batch at step 3"
    assert error_line(OSError(28, "No space left on device", "/runs")) == (
        "mipo: error: /runs: No space left on device"
    )
    assert "rerun with --debug" in error_line(KeyError("k"))
    assert (
        error_line(ValueError("TrainConfig.seed: bad"))
        == "mipo: error: --train.seed: bad"
    )
    assert error_line(KeyboardInterrupt()).startswith("mipo: interrupted:")


def test_suspicious_data_is_warned_once_per_kind(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Usable but suspicious rows train, with one ``mipo: warning:`` line per
    kind naming the first row."""
    rows = _rows()
    rows[2]["chosen"] = "   "  # whitespace only
    rows[4] = {  # an HH transcript with a turn marker inside the response
        "chosen": "\n\nHuman: hi\n\nAssistant: a\n\nHuman: more?",
        "rejected": "\n\nHuman: hi\n\nAssistant: b",
    }
    rows[6]["prompt"] = ""  # an empty prompt
    path = tmp_path / "odd.jsonl"
    path.write_text(_jsonl(rows + rows[:1]))  # and a duplicate pair
    console(_argv(f"train dpo --train.dataset={path}", env, tmp_path / "out"))
    warnings = [x for x in capsys.readouterr().err.splitlines() if "mipo: warning" in x]
    assert len(warnings) == 4, warnings
    for fragment in (
        f"{path}:3: field 'chosen'",
        f"{path}:5",
        f"{path}:7",
        f"{path}:13",
    ):
        assert sum(fragment in line for line in warnings) == 1, fragment


def test_a_hub_model_in_the_local_cache_loads_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline, a hub name resolves to its cached snapshot (a directory), so the
    model loads without transformers' network retries."""
    from huggingface_hub import constants

    from mipo.training.models import resolve_model_path

    snapshot = tmp_path / "models--someone--cached" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--someone--cached" / "refs").mkdir()
    (tmp_path / "models--someone--cached" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("someone/cached") == str(snapshot)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("mipo.data.datasets_io.hub_reachable", lambda: False)
    assert resolve_model_path("someone/cached") == str(snapshot)
    monkeypatch.setattr("mipo.data.datasets_io.hub_reachable", lambda: True)
    assert resolve_model_path("someone/cached") == "someone/cached"
