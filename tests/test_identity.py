"""Numerical identity of the trainer: every recipe's 3-step run on a tiny random
Llama logs the metrics, evaluation and final weights recorded in
``tests/data/identity_baseline.json`` (fp32, CPU, one thread).

The baseline was first written before the trainer was split into services, a
fit loop and one batch builder (``tests/identity_runs.py --write`` rewrites it
when a change is meant to move the numbers). Allowed difference on any number:
1e-7 absolute on the machine that wrote the baseline (same CPU fingerprint:
the runs are bit-identical there); on another machine, whose float32 kernels
round differently (about 3e-6 relative was seen between two x86_64 CPUs), 1e-5
relative to ``max(1, |value|)``. A change in the maths moves the numbers far
more. Anything structural (a missing metric, a changed string) fails everywhere.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from identity_runs import (
    BASELINE,
    build_inputs,
    differences,
    machine_fingerprint,
    run_one,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SAVED = json.loads(BASELINE.read_text())
SAME_MACHINE = SAVED.get("machine") == machine_fingerprint()
TOLERANCE = 1e-7 if SAME_MACHINE else 1e-5
"""Absolute on the baseline's machine; relative to max(1, |value|) elsewhere."""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_inputs(tmp_path_factory.mktemp("identity"))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SAVED["runs"]))
def test_three_steps_match_the_baseline(
    name: str, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    if torch.__version__ != SAVED["torch"]:
        pytest.skip(f"baseline written with torch {SAVED['torch']}")
    model, data = inputs
    want = SAVED["runs"][name]
    if "error" in want:  # the baseline run failed: it must fail the same way
        with pytest.raises(Exception) as error:
            run_one(name, model, data, tmp_path)
        assert f"{type(error.value).__name__}: {error.value}" == want["error"]
        return
    got = run_one(name, model, data, tmp_path)
    diffs = differences(SAVED["runs"][name], got, scaled=not SAME_MACHINE)
    worst = max(diffs, key=lambda item: item[1], default=("", 0.0))
    assert worst[1] <= TOLERANCE, f"{name}: {worst[0]} differs by {worst[1]}"
    assert got["metrics"], "a run that logs nothing proves nothing"
