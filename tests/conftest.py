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
