"""The ``mipo`` console command and the refusal of a one-process "multi-process"
launch."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mipo.tools.console import COMMANDS, main, usage
from mipo.training.launch import launch_problem, torchrun_command

ROOT = Path(__file__).resolve().parent.parent

EXPECTED_USAGE = {
    "train": "usage: python -m mipo.train RECIPE.py",
    "eval": "usage: python -m mipo.eval RUN_DIR",
    "compare": "usage: python -m mipo.compare RECIPE",
    "weights": "estimate",
    "pictures": "--data DATA",
    "dice": "--prompts PROMPTS",
    "docs": "--serve",
    "methods": "--check",
}


def test_script_is_declared() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mipo"] == "mipo.tools.console:main"
    assert scripts["mipo-train"] == "mipo.train:main"


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    main(["--help"])
    out = capsys.readouterr().out
    assert out.strip() == usage()
    for name in COMMANDS:
        assert f"  {name} " in out


@pytest.mark.parametrize("name", sorted(EXPECTED_USAGE))
def test_each_subcommand_help(name: str, capsys: pytest.CaptureFixture) -> None:
    assert set(EXPECTED_USAGE) == set(COMMANDS)
    try:
        main([name, "--help"])
    except SystemExit as exit_info:  # argparse exits 0 after --help
        assert exit_info.code in (0, None)
    out = capsys.readouterr().out
    assert EXPECTED_USAGE[name] in out


def test_unknown_command_fails_in_one_line(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["trian"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("mipo: error: unknown command 'trian'; did you mean 'train'?")
    assert err.count("\n") == 1


@pytest.mark.parametrize("module", ["mipo.tools.console", "mipo"])
def test_module_runs_as_a_script(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "eval", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert "usage: python -m mipo.eval RUN_DIR" in done.stdout


ACCELERATE_CPU = {
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "ACCELERATE_USE_CPU": "True",
}


def test_accelerate_cpu_launch_is_refused_with_torchrun() -> None:
    argv = ["recipes/dpo.py", "--train.max_steps=2"]
    problem = launch_problem(argv, ACCELERATE_CPU)
    assert problem is not None and "\n" not in problem
    assert (
        "`torchrun --nproc_per_node 2 -m mipo.train recipes/dpo.py "
        "--train.max_steps=2`" in problem
    )


@pytest.mark.parametrize(
    "environ",
    [
        {},  # plain python -m mipo.train
        {"ACCELERATE_USE_CPU": "True"},  # accelerate launch --cpu, one process
        ACCELERATE_CPU | {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},
        {"MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2", "RANK": "1"},  # torchrun
        {"MASTER_ADDR": "127.0.0.1", "ACCELERATE_USE_CPU": "False"},
    ],
)
def test_real_launches_pass(environ: dict[str, str]) -> None:
    assert launch_problem(["recipes/dpo.py"], environ) is None


def test_train_main_refuses(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from mipo.training.trainer import main as train_main

    for key, value in ACCELERATE_CPU.items():
        monkeypatch.setenv(key, value)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        train_main(["recipes/dpo.py"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert torchrun_command(["recipes/dpo.py"], "2") in err
