"""Shared test configuration: Hypothesis profiles, dtype tolerances, data paths."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# The suite runs as two pytest-xdist workers on two cores, and most tensors are tiny:
# one intra-op thread per worker avoids oversubscription (a 4x8x11 log_softmax takes
# ~8 ms with two threads here and microseconds with one).
torch.set_num_threads(1)

settings.register_profile(
    "dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# Tolerances per dtype for properties that compare two computations of one value.
TOLERANCES: dict[torch.dtype, dict[str, float]] = {
    torch.float64: {"rtol": 1e-9, "atol": 1e-10},
    torch.float32: {"rtol": 1e-5, "atol": 1e-6},
    torch.bfloat16: {"rtol": 2e-2, "atol": 2e-2},
}

REPO_ROOT = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """``$MIPO_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("MIPO_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set MIPO_SHARED_DATA)")
    return path
