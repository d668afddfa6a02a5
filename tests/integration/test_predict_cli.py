"""`python -m pipeline predict` end to end, and against an unreachable tracking server."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import registry
from pipeline.config import MODEL_NAME


def read_output(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def imported_modules(stderr: str) -> set[str]:
    """The top-level packages a `python -X importtime` run imported, from its stderr."""
    lines = [line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    return {name.split(".")[0] for name in lines}


@pytest.mark.integration
def test_cli_end_to_end_and_unreachable_server(scoring: str, python: str, tmp_path: Path) -> None:
    # A new experiment: MLflow, imported after the logging set-up (predict reads first), would say
    # it creates it at INFO, which stays hidden as in every step.
    result = subprocess.run(
        [python, "-X", "importtime", "-m", "pipeline", "predict", "--output", "p.csv", "--experiment-name", "first"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if not line.startswith("import time:")] == []
    assert MlflowClient().get_experiment_by_name("first") is not None
    champion = registry.version_by_alias("champion")
    logged = MlflowClient().get_run(champion.run_id).data.metrics
    assert f"Model: models:/{MODEL_NAME}@champion (version {champion.version})\n" in result.stdout
    assert (
        f"Model Performance:\nR² Score: {logged['test_r2']:.4f}\nMean Squared Error: {logged['test_mse']:.4f}\n"
        in result.stdout
    )
    assert len(re.findall(r"^True: \d+\.\d\d \| Predicted: -?\d+\.\d\d \| Diff: \d+\.\d\d$", result.stdout, re.M)) == 10
    assert "\r" not in result.stderr  # no progress bar when stderr is not a terminal
    # The quantized champion is scored without skops (the float model's format), which takes long to import.
    assert "skops" not in imported_modules(result.stderr)
    assert len(read_output(tmp_path / "p.csv")) == 4128

    uri = f"http://127.0.0.1:{closed_port()}"
    refused = f"error: tracking server {uri} is unreachable ([Errno 111] Connection refused); start it or set "
    refused += "MLFLOW_TRACKING_URI"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    result = subprocess.run(
        [python, "-m", "pipeline", "predict", "--output", "q.csv"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        # MLflow alone retries a refused connection with backoff for minutes.
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [refused]
    assert not (tmp_path / "q.csv").exists()
    # Every step asks first, not only predict.
    result = subprocess.run(
        [python, "-m", "pipeline", "train"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr.strip().splitlines()) == (2, [refused])
