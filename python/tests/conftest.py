"""Fixtures: the `cdm` binary of this checkout (CDM_BIN) and tiny runs it trains once a session."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CDM_BIN = os.environ.get("CDM_BIN", str(REPO / "target" / "debug" / "cdm"))
# One thread in both the binary and this process, so both compute in the same order.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def cli(*args, ok=True):
    """Runs `cdm ARGS` on the CPU; its stdout, or (returncode, stderr) when ok=False."""
    run = subprocess.run([CDM_BIN, *map(str, args)], capture_output=True, text=True, env=ENV)
    if ok:
        assert run.returncode == 0, run.stderr
        return run.stdout
    return run.returncode, run.stderr


def cli_json(*args):
    return json.loads(cli(*args, "--json").strip().splitlines()[-1])


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def points_run(tmp_path_factory):
    """A CDM on the 2-D Gaussian mixture, trained for a few steps."""
    out = tmp_path_factory.mktemp("runs") / "gmm2d"
    cli("train", "--data", "gmm2d", "--out", out, "--steps", "20", "--timesteps", "10", "--hidden", "16",
        "--blocks", "1", "--batch", "64", "--device", "cpu")
    return out


@pytest.fixture(scope="session")
def image_run(tmp_path_factory):
    """A class-conditional CDM on the 8x8 digits (tiny UNet, two steps)."""
    out = tmp_path_factory.mktemp("runs") / "digits"
    cli("train", "--data", "digits", "--conditional", "--out", out, "--steps", "2", "--batch", "4", "--channels",
        "8", "--timesteps", "10", "--device", "cpu")
    return out
