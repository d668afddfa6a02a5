"""The tracking directory opens anywhere, and the mlflow#7819 trap is caught with its fix."""

from __future__ import annotations

import shutil
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
            assert {"pipeline", "train", "quantize-int8", "promote", "predict"} <= set(by_name)
            # Nothing points at the old place: every run's artifacts live behind the server.
            assert all(run.info.artifact_uri.startswith("mlflow-artifacts:/") for run in runs)
            assert by_name["train"].data.metrics["test_r2"] == pytest.approx(0.575788, abs=1e-6)

            plot = client.download_artifacts(by_name["train"].info.run_id, "plots/predicted_vs_actual.png", tmp_path)
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
