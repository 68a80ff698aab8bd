"""The single-process side of multi-process training: refusals that name the
setting, the collectives being the identity in one process, the split of work
over processes (reference cache, gold prompts) covering everything exactly once,
and the learned prior's shared fit computing the same objective. Two real
processes are in ``tests/test_distributed.py``."""

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tiny import tiny_llama

from mipo.data.tiny_tokenizer import tiny_chat_tokenizer
from mipo.recipes import load_recipe
from mipo.training.config import TrainConfig
from mipo.training.distributed import (
    any_process,
    average_gradients,
    gather_lists,
    rank_share,
    sum_reducer,
)
from mipo.training.loaders import load_run_data
from mipo.training.services.learned_prior import LogitBiasPrior
from mipo.training.services.reference_cache import compute_reference_logps

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class FakeAccelerator:
    num_processes: int = 1
    process_index: int = 0
    device: torch.device = torch.device("cpu")


def test_fsdp2_in_one_process_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiny import build_tiny_model_dir

    from mipo.training.trainer import main

    model = build_tiny_model_dir(tmp_path / "model")
    capsys.readouterr()  # the model's own save progress bars
    with pytest.raises(SystemExit) as stop:
        main(
            [
                "recipes/dpo.py",
                f"--train.model={model}",
                f"--train.output_dir={tmp_path / 'runs'}",
                "--train.sharding=fsdp2",
            ]
        )
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # refused before any model is loaded
    assert err[0].startswith("mipo: error: --train.sharding='fsdp2': needs several")
    assert "torchrun --nproc_per_node N" in err[0]
    assert not (tmp_path / "runs").exists()  # nothing written


def test_sync_ref_model_under_fsdp2_is_refused_before_loading() -> None:
    from mipo.training.setup import check_run

    config = TrainConfig(sharding="fsdp2", sync_ref_model=True, model="/nowhere")
    with pytest.raises(ValueError, match=r"TrainConfig.sync_ref_model: not supported"):
        check_run(config, load_recipe("dpo").objective)


def test_an_unknown_sharding_is_refused_by_name() -> None:
    from mipo.training.cli import parse_command_line, resolve
    from mipo.training.recipes import load_recipe as load

    command = parse_command_line(["recipes/dpo.py", "--train.sharding=zero3"])
    with pytest.raises(ValueError, match="sharding"):
        resolve(load(command.recipe), command.overrides)


def test_accelerates_fsdp_config_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from mipo.training.setup import _accelerator

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match=r"--train.sharding=fsdp2"):
        _accelerator(TrainConfig())


def test_eval_refuses_a_checkpoint_holding_only_shards(tmp_path: Path) -> None:
    from mipo.training.setup import _check_consolidated

    checkpoint = tmp_path / "checkpoint-2"
    (checkpoint / "distributed").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds only sharded weights"):
        _check_consolidated(checkpoint)
    (checkpoint / "config.json").write_text("{}")
    _check_consolidated(checkpoint)  # the consolidated export is there: fine


def test_collectives_are_the_identity_in_one_process() -> None:
    one = FakeAccelerator()
    assert any_process(one, True) is True and any_process(one, False) is False
    assert any_process(None, True) is True
    assert sum_reducer(one) is None
    assert gather_lists(one, [3, 1]) == [3, 1]
    parameter = torch.nn.Parameter(torch.ones(3))
    parameter.grad = torch.tensor([1.0, 2.0, 3.0])
    average_gradients(one, [parameter])
    assert parameter.grad.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("count", [0, 1, 4, 5, 7])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_rank_shares_cover_every_item_once_in_equal_blocks(
    count: int, world: int
) -> None:
    blocks = [rank_share(count, FakeAccelerator(world, rank)) for rank in range(world)]
    assert [i for block, _ in blocks for i in block] == list(range(count))
    (share,) = {share for _, share in blocks}
    assert share == -(-count // world)
    assert all(len(block) <= share for block, _ in blocks)


def test_reference_cache_parts_are_disjoint_and_make_the_whole(tmp_path: Path) -> None:
    rows = [
        f'{{"prompt": "{i}+1=", "chosen": "{i + 1}", "rejected": "{i + 2}"}}'
        for i in range(7)
    ]
    data_file = tmp_path / "pairs.jsonl"
    data_file.write_text("\n".join(rows) + "\n")
    config = TrainConfig(dataset=str(data_file), max_examples=0, eval_fraction=0.3)
    data = load_run_data(config, tiny_chat_tokenizer())
    model = tiny_llama(0)

    def part(k: int, n: int) -> dict:
        return compute_reference_logps(
            model,
            data,
            batch_size=2,
            pad_token_id=2,
            device=torch.device("cpu"),
            chunk_size=None,
            part=(k, n),
        )

    whole, first, second = part(0, 1), part(0, 2), part(1, 2)
    assert not first.keys() & second.keys()
    assert first.keys() | second.keys() == whole.keys()
    assert len(whole) == len(data.train) + len(data.eval)
    for index, (chosen, rejected) in {**first, **second}.items():
        assert torch.equal(chosen, whole[index][0])
        assert torch.equal(rejected, whole[index][1])


def test_the_prior_fit_over_processes_is_the_same_objective() -> None:
    """With a sum over one process, the shared fit (gradient sums and token
    counts) takes the steps of the plain mean fit."""
    torch.manual_seed(0)
    logits = torch.randn(40, 11)
    tokens = torch.randint(0, 11, (40,))
    plain, shared = LogitBiasPrior(11), LogitBiasPrior(11)
    a = plain.fit(logits, tokens, steps=5, learning_rate=1.0)
    b = shared.fit(logits, tokens, steps=5, learning_rate=1.0, reduce=lambda t: t)
    torch.testing.assert_close(shared.bias, plain.bias, rtol=1e-6, atol=1e-7)
    assert b == pytest.approx(a, rel=1e-6)
    assert a[1] < a[0]  # the fit lowered the negative log-likelihood


@pytest.mark.parametrize(
    ("rank", "answered", "kept"),
    [(0, ["0", "1", "2"], [0.0, 1.0, 2.0]), (1, ["3", "4", "4"], [3.0, 4.0])],
)
def test_each_process_answers_an_equal_padded_block_of_gold_prompts(
    monkeypatch: pytest.MonkeyPatch, rank: int, answered: list[str], kept: list[float]
) -> None:
    """Five prompts over two processes: blocks of three (the second padded with
    the last prompt, whose extra score is dropped), so both run the same number
    of generation batches."""
    from mipo.training import distributed, gold

    records = [type("R", (), {"prompt": f"{i}"})() for i in range(5)]
    seen: list[list[str]] = []

    def fake_scores(policy, tokenizer, chunk, reward, lengths, **_):  # noqa: ANN001, ANN003, ARG001
        seen.append([r.prompt for r in chunk])
        lengths += [10 + int(r.prompt) for r in chunk]
        return [float(r.prompt) for r in chunk]

    monkeypatch.setattr(gold, "gold_scores", fake_scores)
    monkeypatch.setattr(distributed, "gather_lists", lambda _acc, values: values)
    scores = gold.shared_gold_scores(
        torch.nn.Identity(),
        None,
        records,
        lambda _prompt, _answer: 0.0,
        device=torch.device("cpu"),
        max_new_tokens=1,
        accelerator=FakeAccelerator(2, rank),
        lengths=(lengths := []),
    )
    assert seen == [answered]
    assert scores == kept
    assert lengths == [10 + int(score) for score in kept]  # the padding's dropped too


def test_one_process_answers_every_gold_prompt_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mipo.training import gold

    records = [type("R", (), {"prompt": f"{i}"})() for i in range(5)]

    def fake_scores(*args, lengths, **_):  # noqa: ANN002, ANN003, ANN202
        lengths += [len(r.prompt) for r in args[2]]
        return [float(r.prompt) for r in args[2]]

    monkeypatch.setattr(gold, "gold_scores", fake_scores)
    scores = gold.shared_gold_scores(
        torch.nn.Identity(),
        None,
        records,
        lambda _prompt, _answer: 0.0,
        device=torch.device("cpu"),
        max_new_tokens=1,
    )
    assert scores == [0.0, 1.0, 2.0, 3.0, 4.0]


LEAVES_AT_EXIT = """
import atexit, sys
import torch.distributed as dist
from mipo.training.config import TrainConfig
from mipo.training.setup import _accelerator

# registered first, so it runs last: after mipo's hook
atexit.register(lambda: print("initialised at exit:", dist.is_initialized()))
dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
_accelerator(TrainConfig())
print("initialised after setup:", dist.is_initialized())
"""


def test_the_process_group_is_destroyed_before_the_process_exits() -> None:
    """A gloo process exiting with its group alive can abort in C++ teardown
    (SIGABRT) while its peer still runs, failing a finished torchrun job; the
    accelerator's setup registers the group's destruction at exit."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", LEAVES_AT_EXIT],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-2:] == [
        "initialised after setup: True",
        "initialised at exit: False",
    ]
