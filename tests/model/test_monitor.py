"""The `monitor` step on real batches drawn from the held-out split, against the real champion."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from pipeline import data, monitor
from pipeline.config import FEATURES, TARGET
from pipeline.errors import DataError, RejectedError
from tests.conftest import Store, using

DRIFT_KEYS = {f"drift_{c}_{s}" for c in (*FEATURES, "prediction") for s in ("ks_p", "wasserstein", "psi")}
DECISION_KEYS = {"drifted_feature_count", "drift_detected", "prediction_drift"}
PERFORMANCE_KEYS = {"test_r2", "test_mse", "test_rmse", "test_mae", "model_test_r2", "model_test_mse", "r2_drop"}


@dataclass(frozen=True)
class Batches:
    """CSV files cut from the default held-out split."""

    no_drift: Path
    shifted: Path
    north: Path
    small: Path
    extra_column: Path


@dataclass(frozen=True)
class Monitored:
    """The store the monitor logged to, and what three monitor calls returned or raised."""

    store: Store
    no_drift: monitor.MonitorResult
    shifted_error: RejectedError
    north: monitor.MonitorResult


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory, california: data.Dataset) -> Batches:
    folder = tmp_path_factory.mktemp("batches")
    split = data.split(california, test_size=0.2, random_state=42)
    held_out = split.X_test.assign(**{TARGET: split.y_test})
    shifted = held_out.sample(1000, random_state=2)
    shifted["MedInc"] += 0.25 * split.X_train["MedInc"].std(ddof=0)
    files = Batches(*(folder / f"{name}.csv" for name in ("no_drift", "shifted", "north", "small", "extra_column")))
    held_out.sample(500, random_state=1).to_csv(files.no_drift, index=False)
    shifted.to_csv(files.shifted, index=False)
    # One region only, and no target: the monitor must work without MedHouseVal.
    held_out.loc[held_out["Latitude"] > 37, list(FEATURES)].to_csv(files.north, index=False)
    held_out.head(150).to_csv(files.small, index=False)
    held_out.head(300).assign(Ocean=1.0).to_csv(files.extra_column, index=False)
    return files


@pytest.fixture(scope="module")
def monitored(pipeline_store: Store, tmp_path_factory: pytest.TempPathFactory, batches: Batches) -> Iterator[Monitored]:
    """A private copy of the pipeline store, and the monitor run on three batches (once)."""
    store = Store(tmp_path_factory.mktemp("monitor-store"))
    shutil.copy(pipeline_store.root / "mlflow.db", store.root / "mlflow.db")
    with using(store):
        no_drift = monitor.monitor(str(batches.no_drift))
        with pytest.raises(RejectedError) as shifted:
            monitor.monitor(str(batches.shifted), fail_on_drift=True)
        north = monitor.monitor(str(batches.north))
        yield Monitored(store, no_drift, shifted.value, north)


def monitor_runs(store: Store) -> list[mlflow.entities.Run]:
    client = MlflowClient(store.uri)
    return client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.step = 'monitor'",
        order_by=["attributes.start_time ASC"],
    )


def test_no_drift_batch_logs_every_metric_and_the_report(monitored: Monitored) -> None:
    result = monitored.no_drift
    assert (result.drift_detected, result.drifted_features, result.prediction_drift) == (False, [], False)
    client = MlflowClient(monitored.store.uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert set(run.data.metrics) == DRIFT_KEYS | DECISION_KEYS | PERFORMANCE_KEYS
    assert run.data.metrics["drift_detected"] == 0.0
    # The champion is the quantized model; the batch is scored against its recorded test R².
    champion = client.get_model_version_by_alias("california-housing", "champion")
    assert run.data.params["model_version"] == str(champion.version)
    recorded = client.get_run(champion.run_id).data.metrics
    assert run.data.metrics["model_test_r2"] == recorded["test_r2"]
    assert run.data.metrics["r2_drop"] == pytest.approx(recorded["test_r2"] - run.data.metrics["test_r2"])
    assert abs(run.data.metrics["r2_drop"]) < 0.1
    assert (run.data.params["n_batch"], run.data.params["n_reference"]) == ("500", "16512")
    assert run.data.params["reference_source"].startswith(f"training split of run {champion.run_id}")
    assert [i.tags[0].value for i in run.inputs.dataset_inputs] == ["monitoring"]

    folder = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, tracking_uri=monitored.store.uri))
    png = (folder / monitor.REPORT_ARTIFACT).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
    summary = pd.read_csv(folder / monitor.SUMMARY_ARTIFACT)
    assert list(summary["column"]) == [*FEATURES, "prediction"]
    np.testing.assert_allclose(summary["ks_p"], [run.data.metrics[f"drift_{c}_ks_p"] for c in summary["column"]])
    np.testing.assert_allclose(summary["ks_alpha"], 0.05 / 9)
    assert not summary["drifted"].any()
    # Calibrated for 500 rows: chance alone moves a batch this far (in reference std).
    assert summary["wasserstein_threshold"].between(0.08, 0.3).all()
    assert (summary["wasserstein"] < summary["wasserstein_threshold"]).all()


def test_quarter_std_shift_fails_after_the_run_is_logged(monitored: Monitored, batches: Batches) -> None:
    message = str(monitored.shifted_error)
    assert message.startswith(f"{batches.shifted}: drift in feature(s) MedInc and the prediction; see drift/report.png")
    assert monitored.shifted_error.exit_code == 3
    run = MlflowClient(monitored.store.uri).get_run(message.rsplit(" ", 1)[-1])
    assert run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert (metrics["drift_detected"], metrics["drifted_feature_count"], metrics["prediction_drift"]) == (1, 1, 1)
    assert metrics["drift_MedInc_wasserstein"] == pytest.approx(0.25, abs=0.03)
    assert metrics["drift_MedInc_ks_p"] < 1e-6
    assert metrics["test_r2"] < metrics["model_test_r2"]


def test_one_region_only_is_drift_without_a_target(monitored: Monitored) -> None:
    result = monitored.north
    assert result.drift_detected
    assert {"Latitude", "Longitude"} <= set(result.drifted_features)
    assert "MedInc" not in result.drifted_features
    assert result.n_rows == 1476
    assert result.metrics["drift_Latitude_wasserstein"] > 1.0
    assert not PERFORMANCE_KEYS & set(MlflowClient(monitored.store.uri).get_run(result.run_id).data.metrics)


def test_small_batch_and_bad_schema_are_refused_before_any_run(
    monitored: Monitored, batches: Batches, capsys: pytest.CaptureFixture[str]
) -> None:
    before = len(monitor_runs(monitored.store))
    with using(monitored.store):
        with pytest.raises(DataError, match=r"the batch has 150 rows, fewer than min_batch=200"):
            monitor.monitor(str(batches.small))
        assert monitor.main(["--batch", str(batches.extra_column)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"error: {batches.extra_column}: unexpected column(s) Ocean (expected {', '.join((*FEATURES, TARGET))})"
        )
        assert monitor.main(["--batch", str(batches.small), "--min-batch", "0"]) == 2
        assert capsys.readouterr().err.strip() == "error: --min-batch must be an integer ≥ 1, got 0"
        assert len(monitor_runs(monitored.store)) == before
        # A lower min_batch accepts the same small batch.
        assert monitor.main(["--batch", str(batches.small), "--min-batch", "100", "--fail-on-drift", "true"]) == 0
        assert capsys.readouterr().out.startswith("No drift in 150 rows (run ")
        assert len(monitor_runs(monitored.store)) == before + 1


@pytest.mark.integration
def test_cli_exits_3_on_drift_for_cron(monitored: Monitored, batches: Batches, python: str, tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": monitored.store.uri}
    args = [python, "-m", "pipeline", "monitor", "--batch", str(batches.shifted), "--reference", ""]
    result = subprocess.run(
        [*args, "--fail-on-drift", "true"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: {batches.shifted}: drift in feature(s) MedInc and the prediction; see drift/report.png of run "
        )
    )
