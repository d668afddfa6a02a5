"""The tracking directory opens anywhere, the mlflow#7819 trap is caught with its fix, and a new
SQLite store is created whole when many processes start on it at once."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import data, store
from pipeline.__main__ import main as pipeline_main
from pipeline.config import EXPERIMENT_NAME, MODEL_NAME
from pipeline.container import PREDICTIONS_FILE, tracking_through_server, tracking_uri
from pipeline.errors import PipelineError

pytestmark = pytest.mark.integration

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def held_out_rows(california: data.Dataset, n: int) -> pd.DataFrame:
    """The first rows of the default held-out split, the rows `predict` scored first."""
    return data.split(california, test_size=0.2, random_state=42).X_test.head(n)


def test_moved_directory_opens_with_runs_artifacts_and_champion(container_run, tmp_path, california):
    moved = tmp_path / "downloaded" / "tracking"
    moved.parent.mkdir()
    shutil.move(container_run.root, moved)
    try:
        with tracking_through_server(moved) as url:
            client = MlflowClient(url)
            experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
            runs = client.search_runs([experiment.experiment_id])
            by_name = {run.info.run_name: run for run in runs}
            assert {"pipeline", "train · sklearn data · split 42", "quantize-int8", "promote", "predict"} <= set(
                by_name
            )
            # Nothing points at the old place: every run's artifacts live behind the server.
            assert all(run.info.artifact_uri.startswith("mlflow-artifacts:/") for run in runs)
            assert by_name["train · sklearn data · split 42"].data.metrics["test_r2"] == pytest.approx(
                0.575788, abs=1e-6
            )

            plot = client.download_artifacts(
                by_name["train · sklearn data · split 42"].info.run_id, "plots/predicted_vs_actual.png", tmp_path
            )
            assert Path(plot).read_bytes()[:8] == PNG_SIGNATURE

            aliases = client.get_registered_model(MODEL_NAME).aliases
            assert {"challenger", "quantized", "champion"} <= set(aliases)
            champion = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
            predicted = np.asarray(champion.predict(held_out_rows(california, 5))).ravel()
    finally:
        shutil.move(moved, container_run.root)
    # The same numbers `predict` wrote before the move.
    written = pd.read_csv(container_run.root / PREDICTIONS_FILE)["prediction"].head(5).to_numpy()
    np.testing.assert_allclose(predicted, written, rtol=0, atol=1e-9)


def test_experiment_made_by_a_server_is_refused_on_the_database_file(container_run, tmp_path, capsys, monkeypatch):
    """mlflow#7819: the experiment's artifact root is `mlflow-artifacts:/`, the URI a SQLite file."""
    copy = tmp_path / "tracking"
    shutil.copytree(container_run.root, copy)
    uri = store.backend_uri(copy)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
    assert experiment.artifact_location.startswith("mlflow-artifacts:/")
    runs_before = len(client.search_runs([experiment.experiment_id]))
    versions_before = len(client.search_model_versions(f"name='{MODEL_NAME}'"))

    # `python -m pipeline train`, in this process: a new one would spend seconds importing MLflow.
    # mlflow.set_experiment exports MLFLOW_EXPERIMENT_ID; monkeypatch removes it again afterwards.
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    with tracking_uri(uri):
        code = pipeline_main(["train"])
    stderr = capsys.readouterr().err

    assert code == 2
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "mlflow-artifacts:/" in errors[0]
    assert f"python -m pipeline.store --dir {copy.resolve()} --" in errors[0]
    assert len(client.search_runs([experiment.experiment_id])) == runs_before
    assert len(client.search_model_versions(f"name='{MODEL_NAME}'")) == versions_before


def _schema_revision(path: Path) -> list[tuple[str]]:
    with closing(sqlite3.connect(path)) as database:
        return database.execute("SELECT version_num FROM alembic_version").fetchall()


def _head() -> list[tuple[str]]:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return [(_get_latest_schema_revision(),)]


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("sqlite:///mlflow.db", Path("mlflow.db")),
        ("sqlite:////abs/mlflow.db", Path("/abs/mlflow.db")),
        ("sqlite:///stores/a%20b.db?timeout=20", Path("stores/a b.db")),
        ("sqlite:///:memory:", None),
        ("sqlite://", None),
        ("http://127.0.0.1:5000", None),
        ("file:///tmp/mlruns", None),
    ],
)
def test_sqlite_path_is_the_file_sqlalchemy_opens(uri: str, path: Path | None) -> None:
    assert store.sqlite_path(uri) == path


def test_processes_started_at_once_on_the_default_store_create_it_whole(tmp_path: Path) -> None:
    """No MLFLOW_TRACKING_URI: MLflow 3's default, `sqlite:///mlflow.db` in the working folder."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    code = "from pipeline import store; store.ensure_database()"
    processes = [
        subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    errors = [p.communicate(timeout=300)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, [e[-2000:] for e in errors if e]
    assert _schema_revision(tmp_path / "mlflow.db") == _head()
    # The lock stays (harmless, git-ignored); nothing half-made is left beside the database.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "mlflow.schema.lock"]
    assert [e.name for e in MlflowClient(store.sqlite_uri(tmp_path / "mlflow.db")).search_experiments()] == ["Default"]


def test_a_relative_sqlite_uri_is_created_from_the_working_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    store.ensure_database("sqlite:///new/folder/my%20store.db")
    assert _schema_revision(tmp_path / "new" / "folder" / "my store.db") == _head()


def test_an_empty_file_and_a_killed_creators_leftover_are_completed(tmp_path: Path) -> None:
    empty = tmp_path / "empty" / "mlflow.db"
    empty.parent.mkdir()
    empty.touch()  # what `sqlite3.connect` leaves before any table exists
    store.ensure_database(store.sqlite_uri(empty))
    assert _schema_revision(empty) == _head()

    fresh = tmp_path / "fresh" / "mlflow.db"
    leftover = fresh.with_name(".mlflow.db.new")
    leftover.parent.mkdir()
    leftover.write_text("half a database")
    store.ensure_database(store.sqlite_uri(fresh))
    assert _schema_revision(fresh) == _head()
    assert not leftover.exists()


def test_a_file_that_is_not_a_database_is_named_and_left_alone(tmp_path: Path) -> None:
    text = tmp_path / "mlflow.db"
    text.write_text("prediction\n1.0\n" * 100)
    expected = rf"^{re.escape(str(text))} is not a complete MLflow tracking database .*file is not a database"
    with pytest.raises(PipelineError, match=expected):
        store.ensure_database(store.sqlite_uri(text))
    assert text.read_text() == "prediction\n1.0\n" * 100


def test_other_stores_are_left_to_mlflow(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    store.ensure_database("http://127.0.0.1:9")  # nothing listens: a server is not touched
    store.ensure_database(tmp_path.joinpath("mlruns").as_uri())
    assert list(tmp_path.iterdir()) == []
