"""A team's set-up: `mlflow server` on a real PostgreSQL, proxied artifacts, every client on its URL only.

One PostgreSQL and one server serve the whole module (fixtures `team_server`/`team` in
tests/conftest.py). `history` runs, through that server and as separate processes:
`mlflow run . -e train`, `quantize`, `promote`, then four pipelines (one of them `mlflow run .`)
and two promotes at once, then `predict` and `monitor` on the resulting champion; the tests read
what it left. The lease tests drive `pipeline.lease` from processes that share nothing but the
server's URL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow.tracking import MlflowClient

from pipeline import data, lease, registry, store
from pipeline.config import ALIAS_CHAMPION, ALIAS_PREVIOUS_CHAMPION, EXPERIMENT_NAME, MODEL_NAME, PREDICTION
from pipeline.mlflow_compat import scoring_server_env
from tests.conftest import ROOT, TeamServer, _restored_tracking, clear_team_registry

pytestmark = pytest.mark.integration

PIPELINES = 4
PROMOTES = 2


@dataclass(frozen=True)
class History:
    """What the module's processes left on the team server, and how long the concurrent part took."""

    server: TeamServer
    folder: Path
    concurrent_seconds: float
    predictions: pd.DataFrame
    batch: pd.DataFrame


def _run(command: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _all_succeed(processes: list[subprocess.Popen[str]]) -> None:
    outputs = [p.communicate(timeout=900) for p in processes]
    failures = [err.strip().splitlines()[-5:] for p, (_, err) in zip(processes, outputs, strict=True) if p.returncode]
    assert [p.returncode for p in processes] == [0] * len(processes), failures


@pytest.fixture(scope="module")
def history(
    team_server: TeamServer, tmp_path_factory: pytest.TempPathFactory, california: data.Dataset
) -> Iterator[History]:
    folder = tmp_path_factory.mktemp("team-clients")
    python, mlflow_cli = sys.executable, str(Path(sys.executable).with_name("mlflow"))
    step = [python, "-m", "pipeline"]
    batch = data.split(california, test_size=0.2, random_state=42).X_test.head(300)
    batch.to_csv(folder / "batch.csv", index=False)
    with _restored_tracking():
        os.environ["MLFLOW_TRACKING_URI"] = team_server.url
        mlflow.set_tracking_uri(team_server.url)
        clear_team_registry("team-history")
        project = [mlflow_cli, "run", str(ROOT), "--env-manager", "local", "--experiment-name", EXPERIMENT_NAME]
        for command in ([*project, "-e", "train"], [*step, "quantize"], [*step, "promote"]):
            _all_succeed([_run(command, folder)])
        started = time.perf_counter()
        # One of the pipelines is the project's default entry point, `mlflow run .`, as a scheduler starts it.
        _all_succeed(
            [_run(project, folder)]
            + [_run([*step, "main"], folder) for _ in range(PIPELINES - 1)]
            + [_run([*step, "promote"], folder) for _ in range(PROMOTES)]
        )
        concurrent_seconds = time.perf_counter() - started
        print(f"\n{PIPELINES} pipelines + {PROMOTES} promotes at once on PostgreSQL: {concurrent_seconds:.1f} s")
        # Both only read the champion: at once, as a scheduler would start them.
        predict = [*step, "predict", "--input", str(folder / "batch.csv"), "--output", str(folder / "out.csv")]
        monitor = [*step, "monitor", "--batch", str(folder / "batch.csv"), "--min-batch", "100"]
        _all_succeed([_run(predict, folder), _run(monitor, folder)])
        yield History(team_server, folder, concurrent_seconds, pd.read_csv(folder / "out.csv"), batch)


def _runs() -> list[mlflow.entities.Run]:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    return client.search_runs([experiment.experiment_id], order_by=["start_time ASC"], max_results=1000)


def test_every_step_and_mlflow_run_log_through_the_server(history: History) -> None:
    runs = _runs()
    by_step: dict[str, int] = {}
    for run in runs:
        by_step[run.data.tags["step"]] = by_step.get(run.data.tags["step"], 0) + 1
    # train, quantize, promote alone; 4 × (main, train, quantize, promote); 2 promotes; predict; monitor.
    # Each promote evaluates its 2 candidates and the champion, except the first (no champion yet).
    expected = {"train": 5, "quantize": 5, "promote": 7, "main": 4, "predict": 1, "monitor": 1, "evaluate": 20}
    assert by_step == expected
    assert {r.info.status for r in runs} == {"FINISHED"}
    (first,) = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "train"]
    assert first.data.tags["mlflow.runName"] == "train · sklearn data · split 42"
    (project,) = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == "main"]
    assert project.data.tags["mlflow.runName"] == "pipeline"
    assert len([r for r in runs if r.data.tags.get("mlflow.parentRunId") == project.info.run_id]) == 3
    # Proxied artifacts: every run's artifacts are behind the server, in its --artifacts-destination.
    assert all(r.info.artifact_uri.startswith("mlflow-artifacts:/") for r in runs)
    logged = store.local_artifact_path(history.server.root, first.info.artifact_uri) / "split.json"
    assert json.loads(logged.read_text())["test_index"]


def test_four_pipelines_and_two_promotes_at_once_end_as_if_one_after_the_other(history: History) -> None:
    client = MlflowClient()
    runs = _runs()
    for parent in (r for r in runs if r.data.tags["step"] == "main"):
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(c.data.tags["step"] for c in children) == ["promote", "quantize", "train"]
    versions = client.search_model_versions(f"name = '{MODEL_NAME}'")
    assert sorted(int(v.version) for v in versions) == list(range(1, 2 * (PIPELINES + 1) + 1))
    assert sum(1 for v in versions if v.tags.get("quantization") == "int8") == PIPELINES + 1
    # Serial history: each promotion that moved the champion moved it from the one before.
    promoted_by = {v.tags["promotion.run_id"]: f"v{v.version}" for v in versions if "promotion.run_id" in v.tags}
    promotes = [r for r in runs if r.data.tags["step"] == "promote"]
    moves = {
        r.data.tags["promotion.judged_against"]: promoted_by[r.info.run_id]
        for r in promotes
        if r.data.tags["decision"] == "promoted"
    }
    assert sum(r.data.tags["decision"] == "promoted" for r in promotes) == len(moves), "two moved the same champion"
    chain = ["none"]
    while chain[-1] in moves:
        chain.append(moves[chain[-1]])
    assert len(chain) == len(moves) + 1, f"the moves do not form one chain: {moves}"
    assert f"v{registry.version_by_alias(ALIAS_CHAMPION).version}" == chain[-1]
    assert f"v{registry.version_by_alias(ALIAS_PREVIOUS_CHAMPION).version}" == chain[-2]
    # The pipelines' promotions each moved it; the lone promotes may have found their aliases already there.
    assert len(moves) >= 1 + PIPELINES
    judged = {r.data.tags["promotion.judged_against"] for r in promotes}
    assert judged <= set(chain[:-1])
    assert [m.name for m in client.search_registered_models()] == [MODEL_NAME]


def test_the_champion_loads_and_predict_and_monitor_used_it(history: History) -> None:
    champion = registry.version_by_alias(ALIAS_CHAMPION)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{ALIAS_CHAMPION}")
    expected = np.asarray(model.predict(history.batch)).ravel()
    assert np.isfinite(expected).all() and expected.std() > 0.1
    np.testing.assert_allclose(history.predictions[PREDICTION].to_numpy(), expected, rtol=1e-6)
    (predict_run,) = [r for r in _runs() if r.data.tags["step"] == "predict"]
    assert predict_run.data.params["model_version"] == str(champion.version)


def test_mlflow_models_serve_loads_the_champion_through_the_server(history: History) -> None:
    port = store.free_port()
    log_file = history.folder / "serve.log"
    env = scoring_server_env({**os.environ, "MLFLOW_TRACKING_URI": history.server.url})
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m"]
    command += [f"models:/{MODEL_NAME}@{ALIAS_CHAMPION}", "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with log_file.open("wb") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        store.wait_until_up(f"http://127.0.0.1:{port}/ping", process, store.START_TIMEOUT, log_file)
        rows = history.batch.head(20)
        response = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_split": rows.to_dict(orient="split")},
            timeout=60,
        )
    finally:
        store.stop(process)
    assert response.status_code == 200, response.text
    served = np.asarray(response.json()["predictions"], dtype=float).ravel()
    np.testing.assert_allclose(served, history.predictions[PREDICTION].head(20).to_numpy(), rtol=1e-6)


# --- The lease, from processes that share only the server's URL ---

HOLD = """
import json, sys, time
from pipeline.lease import promotion_lease
with promotion_lease(ttl=float(sys.argv[1])) as held:
    print(json.dumps({"holder": held.holder, "acquired": time.time()}), flush=True)
    time.sleep(float(sys.argv[2]))
    released = time.time()
print(json.dumps({"released": released}), flush=True)
"""


def _holder(ttl: float, hold: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(ttl), str(hold)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _record(process: subprocess.Popen[str]) -> dict[str, float | str]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return {key: value for line in out.splitlines() for key, value in json.loads(line).items()}


def _wait_for_lease() -> str:
    deadline = time.monotonic() + 120
    while (current := lease._read(lease.LEASE_NAME)) is None:
        assert time.monotonic() < deadline, "no process took the lease"
        time.sleep(0.1)
    return current.tags[lease.HOLDER_TAG]


def test_a_held_lease_makes_the_next_promotion_wait_then_proceed(team: TeamServer) -> None:
    # Started together: whichever creates the lease first holds it for 2 s; the other waits for it.
    first, second = sorted(
        (_record(p) for p in [_holder(ttl=60, hold=2) for _ in range(2)]), key=lambda r: r["acquired"]
    )
    assert first["holder"] != second["holder"]
    assert second["acquired"] >= first["released"]
    assert lease._read(lease.LEASE_NAME) is None


def test_a_killed_holders_lease_expires_and_is_taken_over(team: TeamServer) -> None:
    ttl = 2.0
    victim = _holder(ttl=ttl, hold=600)
    victim_holder = _wait_for_lease()
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    started = time.time()
    taker = _record(_holder(ttl=ttl, hold=0))
    # The dead holder's lease was judged stale only after ttl seconds without a renewal.
    assert taker["acquired"] - started >= ttl
    assert taker["holder"] != victim_holder
    assert [m.name for m in MlflowClient().search_registered_models()] == []


def test_two_takers_of_a_stale_lease_hold_it_one_after_the_other(team: TeamServer) -> None:
    dead = {lease.HOLDER_TAG: "gone:1:000000000000", lease.HEARTBEAT_TAG: "0", lease.TTL_TAG: "1"}
    MlflowClient().create_registered_model(lease.LEASE_NAME, tags=dead)
    takers = [_holder(ttl=1, hold=2) for _ in range(2)]
    first, second = sorted((_record(p) for p in takers), key=lambda r: r["acquired"])
    assert first["holder"] != second["holder"]
    assert second["acquired"] >= first["released"], "both held the lease at once"
    # Neither the lease nor a take-over marker is left behind.
    assert [m.name for m in MlflowClient().search_registered_models()] == []
