"""An installed mipo ships the recipes as package data (``mipo/_recipes``), and
they are the same files as the repository's ``recipes/``."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mipo.training.recipes import discover, recipes_dir

REPO = Path(__file__).resolve().parent.parent


def test_source_checkout_resolves_bare_names_to_the_recipes_folder() -> None:
    assert recipes_dir() == REPO / "recipes"
    assert {r.path for r in discover()} == set((REPO / "recipes").glob("[!_]*.py"))


@pytest.mark.slow
def test_wheel_ships_the_same_recipe_files(tmp_path: Path) -> None:
    """Build the wheel (hatchling, no network beyond the build backend) and
    compare every shipped recipe with the repository's, byte for byte."""
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(f"cannot build the wheel here: {built.stderr.strip()[-300:]}")
    (wheel,) = tmp_path.glob("mipo-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {
            Path(name).name: archive.read(name)
            for name in archive.namelist()
            if name.startswith("mipo/_recipes/") and name.endswith(".py")
        }
    expected = {p.name: p.read_bytes() for p in (REPO / "recipes").glob("*.py")}
    assert shipped == expected
