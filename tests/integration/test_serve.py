"""Integration: `mlflow models serve` on 127.0.0.1 answers like `predict`, and bad requests get a 4xx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from pipeline import data
from pipeline.config import MODEL_NAME, PREDICTION
from pipeline.mlflow_compat import scoring_server_env
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
    env = scoring_server_env({**os.environ, "MLFLOW_TRACKING_URI": store.uri})
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


# --- Fuzzing the real server ------------------------------------------------------------------
# Every input format, with the values and shapes a hostile but ordinary client sends. A payload
# either gets a 200 whose predictions are all finite, or a 4xx; never a 5xx. A missing,
# non-finite or non-numeric cell, or a missing column or field, is refused; the message names
# the column, unless MLflow's own parser refused the body before the model saw it.

FUZZ_SEED = 12
FUZZ_PAYLOADS = 200  # per flavor
FORMATS = ["dataframe_split", "dataframe_records", "instances", "inputs", "text/csv"]
# A cell's JSON text, and its CSV text (None: CSV cannot write it; an empty field instead).
BAD_CELLS = {
    "NaN": ("NaN", "NaN"),
    "null": ("null", ""),
    "Infinity": ("Infinity", "inf"),
    "-Infinity": ("-Infinity", "-Infinity"),
    "1e309": ("1e309", "1e309"),
    "-1e309": ("-1e309", "-1e309"),
    "true": ("true", "True"),
    "false": ("false", "false"),
    "string": ('"abc"', "abc"),
    "empty string": ('""', None),
    "numeric string": ('"1.5"', None),
}
# MLflow's scoring server casts each JSON cell to the signature's double before the model runs
# (`true` becomes 1.0, "1.5" 1.5), so these may get a 200; see test_mlflow_reads_booleans_...
CAST_BY_MLFLOW = {"true", "false", "numeric string"}
HUGE_CELLS = ["1e308", "-1.7e308", "1.7976931348623157e308", "1e300", "-1e200"]
SHAPES = ["missing column", "missing field", "extra column", "empty"]
# Messages of MLflow's own parser, which refuses a body before the model sees it and names no column.
MLFLOW_PARSER_MESSAGES = ("Invalid input.", "Failed to parse input as a Pandas DataFrame")
CELL = "@@cell@@"


@dataclass(frozen=True)
class Fuzzed:
    """One generated request: its body, content type, what was done, and the rows it carries."""

    kind: str
    mutation: str
    body: str
    content_type: str
    rows: list[int]  # positions in `batch` of the rows sent
    column: str | None  # the column the mutation touched


def content_type_of(kind: str) -> str:
    return "text/csv" if kind == "text/csv" else "application/json"


def render(kind: str, frame: pd.DataFrame, raw: str = "", drop_field: tuple[int, str] | None = None) -> str:
    """A body in `kind`'s format; `CELL` cells become the literal text `raw`; `drop_field` leaves one out."""
    if kind == "text/csv":
        lines = frame.to_csv(index=False).splitlines()
        if drop_field is not None:
            row = drop_field[0] + 1
            lines[row] = lines[row].rsplit(",", 1)[0]
        return "\n".join(lines).replace(CELL, raw) + "\n"
    records = frame.to_dict(orient="records")
    if drop_field is not None:
        del records[drop_field[0]][drop_field[1]]
    if kind == "dataframe_split":
        rows = [[record[name] for name in frame.columns if name in record] for record in records]
        content: object = {"columns": list(frame.columns), "data": rows}
    elif kind == "inputs":
        content = {name: [record[name] for record in records if name in record] for name in frame.columns}
    else:
        content = records
    return json.dumps({kind: content}).replace(f'"{CELL}"', raw)


def generate(batch: pd.DataFrame, count: int, seed: int) -> list[Fuzzed]:
    """`count` requests over every format, mutation and a few row counts, reproducibly."""
    rng = np.random.default_rng(seed)
    mutations = [*BAD_CELLS, "huge", *SHAPES, "none"]
    payloads = []
    for index in range(count):
        kind = FORMATS[index % len(FORMATS)]
        mutation = mutations[(index // len(FORMATS)) % len(mutations)]
        rows = [int(r) for r in rng.choice(len(batch), size=int(rng.choice([1, 2, 3, 7])), replace=False)]
        frame = batch.iloc[rows].reset_index(drop=True).astype(object)
        column: str | None = str(rng.choice(batch.columns))
        at = int(rng.integers(len(rows)))
        raw, drop = "", None
        if mutation in BAD_CELLS:
            json_text, csv_text = BAD_CELLS[mutation]
            raw = (csv_text or "") if kind == "text/csv" else json_text
            frame.loc[at, column] = CELL
        elif mutation == "huge":
            # Finite values, in one cell or a whole row: the prediction may overflow (refused)
            # or not (a finite 200).
            raw = str(rng.choice(HUGE_CELLS))
            frame.loc[at, [column] if rng.random() < 0.5 else list(frame.columns)] = CELL
        elif mutation == "missing column":
            frame = frame.drop(columns=column)
        elif mutation == "missing field":
            # In CSV the row's last field goes missing, whatever `column` was.
            column = str(frame.columns[-1]) if kind == "text/csv" else column
            drop = (at, column)
        elif mutation == "extra column":
            frame, column = frame.assign(Extra=rng.normal(size=len(frame))), None
        elif mutation == "empty":
            frame, column = frame.iloc[:0], None
        else:
            column = None
        body = render(kind, frame, raw, drop)
        if mutation == "empty" and index % 2:
            body = "" if kind == "text/csv" else "{}"
        payloads.append(Fuzzed(kind, mutation, body, content_type_of(kind), rows, column))
    return payloads


def fuzz_outcome(payload: Fuzzed, response: requests.Response, expected: np.ndarray) -> str:
    """How the server answered `payload`: an outcome name; the ones starting with "bad" are failures."""
    status = response.status_code
    if status >= 500:
        return "bad: 5xx"
    if status != 200:
        if not 400 <= status < 500:
            return f"bad: {status}"
        message = response.json()["message"]
        if payload.column is None or payload.mutation == "huge" or payload.column in message:
            return "4xx"
        if message.startswith(MLFLOW_PARSER_MESSAGES):
            return "4xx from MLflow's parser, no column"
        return "bad: 4xx without the column"
    predictions = np.asarray(response.json()["predictions"], dtype="float64").reshape(-1)
    if not np.isfinite(predictions).all():
        return "bad: 200 with a non-finite prediction"
    if predictions.shape != (len(payload.rows) if payload.mutation != "empty" else 0,):
        return "bad: 200 with a prediction per row"
    if payload.mutation in CAST_BY_MLFLOW:
        return "200, cast by MLflow"
    if payload.mutation in BAD_CELLS or payload.mutation in ("missing column", "missing field"):
        return "bad: 200 for a bad cell"
    if payload.mutation in ("none", "extra column"):
        np.testing.assert_allclose(predictions, expected[payload.rows], rtol=1e-12, atol=1e-12)
    return "200"


def test_fuzzed_requests_get_finite_predictions_or_a_4xx(
    server: Server, batch: pd.DataFrame, expected: np.ndarray
) -> None:
    payloads = generate(batch, FUZZ_PAYLOADS, FUZZ_SEED)
    assert {p.kind for p in payloads} == set(FORMATS)
    outcomes, failures = Counter(), []
    for payload in payloads:
        response = invoke(server, payload.body, payload.content_type)
        outcome = fuzz_outcome(payload, response, expected)
        outcomes[outcome] += 1
        if outcome.startswith("bad"):
            failures.append(f"{payload.kind} / {payload.mutation} / {payload.column}: {outcome}: {response.text[:300]}")
    print(f"\nfuzz {server.alias}: {len(payloads)} payloads: {dict(sorted(outcomes.items()))}")
    assert not failures, "\n".join(failures[:40])
    # The generator reaches every kind of answer.
    assert outcomes["4xx"] > len(payloads) / 2
    assert outcomes["200"] > len(payloads) / 10


@pytest.mark.parametrize(
    ("kind", "raw", "problem"),
    [
        ("dataframe_split", "NaN", "missing (NaN or null)"),
        ("dataframe_records", "null", "missing (NaN or null)"),
        ("instances", "Infinity", "infinite"),
        ("inputs", "-1e309", "infinite"),
        ("text/csv", "", "missing (NaN or null)"),
        ("text/csv", "1e309", "infinite"),
    ],
)
def test_missing_and_infinite_cells_get_a_400_naming_column_and_row(
    server: Server, batch: pd.DataFrame, kind: str, raw: str, problem: str
) -> None:
    frame = batch.head(3).astype(object)
    frame.loc[1, "AveOccup"] = CELL
    response = invoke(server, render(kind, frame, raw), content_type_of(kind))
    assert response.status_code == 400, response.text[:2000]
    assert f"column 'AveOccup', row 2: value is {problem} (1 such cell(s))" in response.json()["message"]


@pytest.mark.parametrize("kind", ["dataframe_records", "text/csv"])
def test_a_prediction_that_overflows_gets_a_400_naming_the_row(server: Server, batch: pd.DataFrame, kind: str) -> None:
    # Finite inputs whose prediction is not: both features have positive weights.
    frame = batch.head(3).astype(object)
    frame.loc[2, ["MedInc", "AveBedrms"]] = CELL
    response = invoke(server, render(kind, frame, "1.7e308"), content_type_of(kind))
    assert response.status_code == 400, response.text[:2000]
    assert "row 3: the prediction overflows float64" in response.json()["message"]


@pytest.mark.parametrize("extra", [",5.5", ",5,6"], ids=["one trailing field", "two trailing fields"])
def test_a_csv_row_longer_than_the_header_gets_a_400(server: Server, batch: pd.DataFrame, extra: str) -> None:
    # pandas would take the row's first fields as labels and shift every value to another column.
    header, *rows = batch.head(2).to_csv(index=False).splitlines()
    lines = [header, *(row + extra for row in rows)]  # a longer first row: else pandas refuses (a 400)
    response = invoke(server, "\n".join(lines) + "\n", "text/csv")
    assert response.status_code == 400, response.text[:2000]
    assert "a CSV row with more fields than the header?" in response.json()["message"]


def test_mlflow_reads_booleans_and_numeric_strings_as_numbers(server: Server, batch: pd.DataFrame) -> None:
    """Pins MLflow 3.17.2: its scoring server casts JSON cells to the signature's double before the
    model runs, so `true` arrives as 1.0 and "1.0" as 1.0, and the model cannot tell them apart.
    A version that refuses them fails this test: then the README's sentence about it goes."""
    frame = batch.head(2).astype(object)
    frame.loc[0, "AveBedrms"] = CELL
    as_numbers = batch.head(2).assign(AveBedrms=[1.0, batch["AveBedrms"].iloc[1]])
    wanted = np.asarray(invoke(server, *payload("dataframe_records", as_numbers)).json()["predictions"])
    for raw in ("true", '"1"', '"1.0"'):
        response = invoke(server, render("dataframe_records", frame, raw), "application/json")
        assert response.status_code == 200, (raw, response.text[:2000])
        np.testing.assert_allclose(np.asarray(response.json()["predictions"]), wanted, rtol=1e-12, atol=1e-12)
    # pandas, which parses CSV for MLflow, reads a column of nothing but True/False as 1/0.
    response = invoke(server, render("text/csv", frame.head(1), "True"), "text/csv")
    assert response.status_code == 200, response.text[:2000]
    np.testing.assert_allclose(np.asarray(response.json()["predictions"]), wanted[:1], rtol=1e-12, atol=1e-12)


def test_mlflow_answers_500_without_a_content_type_or_for_deeply_nested_json(server: Server) -> None:
    """Pins MLflow 3.17.2's scoring server: both 500s come from its own code before any model runs
    (`content_type.split` on a missing header; json.loads' RecursionError, which it does not catch).
    A version that answers 4xx fails this test: then the README's sentence about it goes."""
    no_type = requests.post(f"{server.url}/invocations", data=b'{"inputs": [[1]]}', timeout=60)
    assert no_type.status_code == 500, no_type.text[:500]
    nested = '{"inputs": ' + "[" * 2_000 + "]" * 2_000 + "}"
    deep = invoke(server, nested, "application/json")
    assert deep.status_code == 500, deep.text[:500]
    # The server lives on: the next request is answered.
    assert requests.get(f"{server.url}/ping", timeout=60).status_code == 200
