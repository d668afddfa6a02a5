"""`housing-mlops-container`, what the Docker image runs: the default run, serving the champion
(on 127.0.0.1 unless told otherwise), and MLflow's telemetry off in the image and in CI."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import data, store
from pipeline.config import FEATURES
from pipeline.container import PREDICTIONS_FILE, SERVE_HOST_ENV, parse
from tests.conftest import ROOT

# MLflow's documented switch for its usage telemetry (mlflow.org/docs/latest/community/usage-tracking).
TELEMETRY_SWITCH = "MLFLOW_DISABLE_TELEMETRY"
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
        # No --host: outside a container it listens on this machine only.
        env.pop(SERVE_HOST_ENV, None)
        command = [str(script), "--tracking-dir", str(container_run.root), "serve"]
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
        listening = listening_addresses(port)
    finally:
        store.stop(process)
    served = np.asarray(answer["predictions"], dtype=float).ravel()
    written = pd.read_csv(container_run.root / PREDICTIONS_FILE)["prediction"].head(3).to_numpy()
    np.testing.assert_allclose(served, written, rtol=0, atol=1e-9)
    assert f"(alias champion) on http://127.0.0.1:{port}" in log_file.read_text()
    assert listening == {"127.0.0.1"}


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket listening on `port` (Linux's /proc/net tables)."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # IPv4 entries hold the address as one little-endian word.
                addresses.add(socket.inet_ntoa(raw[::-1]) if len(raw) == 4 else socket.inet_ntop(socket.AF_INET6, raw))
    return addresses


@pytest.mark.parametrize(("env_host", "host"), [(None, "127.0.0.1"), ("0.0.0.0", "0.0.0.0")])
def test_serve_listens_on_this_machine_only_unless_told(env_host: str | None, host: str, monkeypatch) -> None:
    if env_host is None:
        monkeypatch.delenv(SERVE_HOST_ENV, raising=False)
    else:
        monkeypatch.setenv(SERVE_HOST_ENV, env_host)
    args, _ = parse(["serve"])
    assert args.host == host
    assert parse(["serve", "--host", "10.1.2.3"])[0].host == "10.1.2.3"


def dockerfile_env() -> dict[str, str]:
    """The variables the image's ENV instructions set (KEY=VALUE form, continued lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    pairs = [line.split(None, 1)[1] for line in text.splitlines() if line.startswith("ENV ")]
    return dict(item.split("=", 1) for pair in pairs for item in shlex.split(pair))


def test_the_image_listens_on_every_interface_and_turns_mlflow_telemetry_off() -> None:
    env = dockerfile_env()
    assert env[SERVE_HOST_ENV] == "0.0.0.0"
    assert env[TELEMETRY_SWITCH] == "true"
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    assert workflow["env"][TELEMETRY_SWITCH] == "true"
    assert f"export {TELEMETRY_SWITCH}=true" in (ROOT / ".ci" / "run").read_text().splitlines()


@pytest.mark.integration
def test_a_step_writes_no_mlflow_installation_id_with_telemetry_off(tmp_path: Path, synthetic_frame) -> None:
    """MLflow 3.17 writes $HOME/.config/mlflow/telemetry.json at import unless telemetry is off."""
    csv = tmp_path / "houses.csv"
    synthetic_frame.to_csv(csv, index=False)
    runs = {}
    for switch in ("off", "on"):
        home = tmp_path / f"home-telemetry-{switch}"
        home.mkdir()
        # A bare environment: MLflow also stays quiet under pytest and in CI (PYTEST_CURRENT_TEST, CI, ...).
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "MLFLOW_TRACKING_URI": store.sqlite_uri(tmp_path / f"store-{switch}" / "mlflow.db"),
        }
        if switch == "off":
            env[TELEMETRY_SWITCH] = dockerfile_env()[TELEMETRY_SWITCH]
        command = [sys.executable, "-m", "pipeline", "train", "--data", str(csv)]
        runs[switch] = (home, subprocess.Popen(command, env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True))
    for _, process in runs.values():
        _, errors = process.communicate(timeout=600)
        assert process.returncode == 0, errors[-3000:]
    assert not (runs["off"][0] / ".config" / "mlflow").exists()
    # Without the switch the same step writes one: the check above could fail.
    assert (runs["on"][0] / ".config" / "mlflow" / "telemetry.json").is_file()


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
