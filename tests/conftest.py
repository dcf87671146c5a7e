"""Shared fixtures. Zoo weights come from the bundled files or a session cache (GEOMEXPL_CACHE)."""
from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(1)  # small ops: one thread is faster and robust to a busy machine


@pytest.fixture(scope="session")
def digits_test():
    from geomexpl import data

    return data.load("digits", "test")


@pytest.fixture(scope="session")
def vgg_digits():
    from geomexpl import nets

    return nets.pretrained("vgg", "digits", progress=False)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


from hypothesis import settings  # noqa: E402

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("default", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def run_theory_check(*args: str, timeout: int = 600):
    """``python -m theory_checks ARGS`` in a subprocess from the repository root (CompletedProcess)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "theory_checks", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=timeout)
