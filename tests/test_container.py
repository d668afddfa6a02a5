"""`housing-mlops-container`, what the Docker image runs: the default run and serving the champion."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline import data, store
from pipeline.config import FEATURES
from pipeline.container import PREDICTIONS_FILE, parse

SEED_ROW = re.compile(r"^True: \d+\.\d\d \| Predicted: -?\d+\.\d\d \| Diff: \d+\.\d\d$", re.MULTILINE)


@pytest.mark.integration
def test_default_run_promotes_a_champion_and_prints_the_seed_table(container_run):
    rows = SEED_ROW.findall(container_run.stdout)
    assert len(rows) == 10
    # The first held-out row of the default split, as every seed project printed it.
    assert rows[0] == "True: 0.48 | Predicted: 0.72 | Diff: 0.24"
    assert "champion is now california-housing v" in container_run.stdout
    written = pd.read_csv(container_run.root / PREDICTIONS_FILE)
    assert len(written) == 4128


@pytest.mark.integration
def test_serve_answers_invocations_with_the_champion(container_run, tmp_path, california):
    port = store.free_port()
    script = Path(sys.executable).parent / "housing-mlops-container"
    log_file = tmp_path / "serve.log"
    rows = data.split(california, test_size=0.2, random_state=42).X_test.head(3)
    with log_file.open("wb") as out:
        # The venv is not on PATH (as in cron): `serve` must find its uvicorn by itself. TMPDIR: the
        # champion's local copy goes to this test's folder.
        env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
        env.update(PATH="/usr/bin:/bin", TMPDIR=str(tmp_path))
        command = [str(script), "--tracking-dir", str(container_run.root), "serve", "--host", "127.0.0.1"]
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        store.wait_until_up(f"http://127.0.0.1:{port}/ping", process, timeout=300, log_file=log_file)
        body = json.dumps({"dataframe_split": {"columns": list(FEATURES), "data": rows.to_numpy().tolist()}})
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body.encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
    finally:
        store.stop(process)
    served = np.asarray(answer["predictions"], dtype=float).ravel()
    written = pd.read_csv(container_run.root / PREDICTIONS_FILE)["prediction"].head(3).to_numpy()
    np.testing.assert_allclose(served, written, rtol=0, atol=1e-9)
    assert "Serving california-housing version" in log_file.read_text()


@pytest.mark.parametrize(
    ("argv", "command", "passed_on"),
    [
        (["run", "--bits", "4"], "run", ["--bits", "4"]),
        (["run", "--bits", "4", "--test-size", "0.3"], "run", ["--bits", "4", "--test-size", "0.3"]),
        (["--tracking-dir", "t", "run"], "run", []),
        ([], None, []),
        (["serve", "--port", "9000"], "serve", []),
    ],
)
def test_flags_after_run_go_to_the_pipeline(argv: list[str], command: str | None, passed_on: list[str]) -> None:
    args, pipeline_args = parse(argv)
    assert (args.command, pipeline_args) == (command, passed_on)


def test_serve_refuses_the_pipelines_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse(["serve", "--bits", "4"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bits 4" in capsys.readouterr().err
