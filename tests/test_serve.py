"""Integration: `mlflow models serve` on 127.0.0.1 answers like `predict`, and bad requests get a 4xx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from pipeline import data
from pipeline.config import MODEL_NAME, PREDICTION
from pipeline.predict import predict
from pipeline.store import START_TIMEOUT, free_port, stop
from pipeline.store import wait_until_up as wait_for_url
from tests.conftest import Store, using

pytestmark = pytest.mark.integration

# One server per flavor: the float (scikit-learn) model and the quantized (python_function) one;
# `champion` is one of them.
SERVED_ALIASES = ["challenger", "quantized"]
BATCH_ROWS = 200


@dataclass(frozen=True)
class Server:
    alias: str
    url: str
    log: Path


def launch(alias: str, store: Store, log: Path) -> tuple[subprocess.Popen[bytes], Server]:
    """Starts `mlflow models serve` for an alias as users do, from the environment's bin folder."""
    bin_dir = Path(sys.executable).parent
    port = free_port()
    # The server execs `uvicorn` from PATH: it must be this environment's.
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}@{alias}"]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [*command, "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: mlflow and the uvicorn it starts
        )
    return process, Server(alias, f"http://127.0.0.1:{port}", log)


def wait_until_up(process: subprocess.Popen[bytes], server: Server) -> None:
    """Waits for the server's /ping, failing with the tail of its log if it dies or hangs."""
    wait_for_url(f"{server.url}/ping", process, START_TIMEOUT, server.log)


@pytest.fixture(scope="module")
def servers(pipeline_store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Server]]:
    """One server per alias, started together: each spends seconds importing and loading."""
    folder = tmp_path_factory.mktemp("serve")
    launched = [launch(alias, pipeline_store, folder / f"{alias}.log") for alias in SERVED_ALIASES]
    try:
        for process, server in launched:
            wait_until_up(process, server)
        yield {server.alias: server for _, server in launched}
    finally:
        for process, _ in launched:
            stop(process)


@pytest.fixture(scope="module", params=SERVED_ALIASES)
def server(request: pytest.FixtureRequest, servers: dict[str, Server]) -> Server:
    return servers[request.param]


@pytest.fixture(scope="module")
def batch(california: data.Dataset, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Held-out rows (features only) as they come back from a CSV file."""
    split = data.split(california, test_size=0.2, random_state=42)
    path = tmp_path_factory.mktemp("batch") / "batch.csv"
    split.X_test.head(BATCH_ROWS).to_csv(path, index=False)
    return pd.read_csv(path)


@pytest.fixture(scope="module")
def expected(
    server: Server, batch: pd.DataFrame, scoring_store: Store, tmp_path_factory: pytest.TempPathFactory
) -> np.ndarray:
    """What `predict` writes for the batch with the served alias's model."""
    folder = tmp_path_factory.mktemp(f"expected-{server.alias}")
    batch.to_csv(folder / "batch.csv", index=False)
    with using(scoring_store):
        result = predict(f"models:/{MODEL_NAME}@{server.alias}", str(folder / "batch.csv"), folder / "out.csv")
    return pd.read_csv(result.output_path)[PREDICTION].to_numpy()


def payload(kind: str, frame: pd.DataFrame) -> tuple[str, str]:
    """A request body in one of the scoring server's input formats, and its content type."""
    if kind == "text/csv":
        return frame.to_csv(index=False), "text/csv"
    split = frame.to_dict(orient="split")
    bodies = {
        "dataframe_split": {"columns": split["columns"], "data": split["data"]},
        "dataframe_records": frame.to_dict(orient="records"),
        "instances": frame.to_dict(orient="records"),
        "inputs": frame.to_dict(orient="list"),
    }
    return json.dumps({kind: bodies[kind]}), "application/json"


def invoke(server: Server, body: str, content_type: str) -> requests.Response:
    return requests.post(f"{server.url}/invocations", data=body, headers={"Content-Type": content_type}, timeout=60)


@pytest.mark.parametrize("kind", ["dataframe_split", "dataframe_records", "instances", "inputs", "text/csv"])
def test_every_input_format_answers_like_predict(
    server: Server, batch: pd.DataFrame, expected: np.ndarray, kind: str
) -> None:
    response = invoke(server, *payload(kind, batch))
    assert response.status_code == 200, response.text[:2000]
    predictions = np.asarray(response.json()["predictions"], dtype="float64").reshape(-1)
    assert predictions.shape == (BATCH_ROWS,)
    np.testing.assert_allclose(predictions, expected, rtol=1e-12, atol=1e-12)

    one = invoke(server, *payload(kind, batch.iloc[[7]]))
    assert one.status_code == 200, one.text[:2000]
    np.testing.assert_allclose(np.asarray(one.json()["predictions"]).reshape(-1), expected[[7]], rtol=1e-12)


def record(batch: pd.DataFrame, **changes: object) -> str:
    row = {**batch.iloc[0].to_dict(), **changes}
    return json.dumps({"dataframe_records": [{k: v for k, v in row.items() if v is not None}]})


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        pytest.param('{"dataframe_split": {"columns": [', "application/json", "valid JSON", id="malformed JSON"),
        pytest.param("missing", "application/json", "missing inputs ['Longitude']", id="missing column"),
        pytest.param("wrong", "application/json", "Failed to convert column MedInc", id="wrong type"),
        pytest.param("csv", "text/csv", "missing inputs ['Latitude']", id="missing column in CSV"),
    ],
)
def test_bad_requests_get_a_4xx_with_a_message(
    server: Server, batch: pd.DataFrame, body: str, content_type: str, message: str
) -> None:
    bodies = {
        "missing": record(batch, Longitude=None),
        "wrong": record(batch, MedInc="lots"),
        "csv": batch.drop(columns="Latitude").head(3).to_csv(index=False),
    }
    response = invoke(server, bodies.get(body, body), content_type)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:2000])
    assert message in response.json()["message"]
