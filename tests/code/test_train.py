"""The `train` step: the model, its metrics, what the run logs and what the registry holds."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sklearn.linear_model import LinearRegression

from pipeline import data, registry, splits
from pipeline.config import ALIAS_CHALLENGER, CHALLENGER_URI, EXPERIMENT_NAME, FEATURES, MODEL_NAME
from pipeline.errors import DataError
from pipeline.train import coefficient_table, fit, train
from tests.conftest import SYNTHETIC_COEF

TRAIN_METRICS = {
    "test_r2",
    "test_mse",
    "test_rmse",
    "test_mae",
    "train_r2",
    "train_mse",
    "model_size_bytes",
    "param_bytes",
}


def test_fit_recovers_known_coefficients(synthetic_frame: pd.DataFrame) -> None:
    model = fit(synthetic_frame[list(FEATURES)], synthetic_frame["MedHouseVal"])
    assert isinstance(model, LinearRegression)
    assert model.coef_.shape == (8,)
    np.testing.assert_allclose(model.coef_, SYNTHETIC_COEF, atol=0.01)
    assert model.intercept_ == pytest.approx(0.5, abs=0.01)


def test_coefficient_table_standardizes(synthetic_frame: pd.DataFrame) -> None:
    X = synthetic_frame[list(FEATURES)]
    model = fit(X, synthetic_frame["MedHouseVal"])
    table = coefficient_table(model, X)
    assert list(table["feature"]) == list(FEATURES)
    np.testing.assert_allclose(table["coefficient_x_std"], model.coef_ * X.std(ddof=0).to_numpy())


def test_baseline_reproduced_to_four_decimals(california: data.Dataset) -> None:
    split = data.split(california, test_size=0.2, random_state=42)
    model = fit(split.X_train, split.y_train)
    pred = model.predict(split.X_test)
    from pipeline.metrics import regression_metrics

    metrics = regression_metrics(split.y_test, pred)
    assert round(metrics["test_r2"], 4) == 0.5758
    assert round(metrics["test_mse"], 4) == 0.5559
    assert round(model.intercept_, 4) == -37.0233
    assert metrics["test_r2"] >= 0.57


def test_run_logs_params_metrics_inputs_and_artifacts(trained: str) -> None:
    client = MlflowClient()
    version = registry.version_by_alias(ALIAS_CHALLENGER)
    run = client.get_run(version.run_id)
    assert run.data.params["test_size"] == "0.2"
    assert run.data.params["random_state"] == "42"
    assert (run.data.params["n_train"], run.data.params["n_test"]) == ("16512", "4128")
    assert run.data.params["data_source"] == "sklearn.datasets.fetch_california_housing"
    assert set(run.data.metrics) == TRAIN_METRICS
    assert run.data.metrics["test_r2"] == pytest.approx(0.575788, abs=5e-6)
    assert run.data.metrics["test_mse"] == pytest.approx(0.555892, abs=5e-6)
    assert run.data.metrics["param_bytes"] == 72
    assert 1000 < run.data.metrics["model_size_bytes"] < 100_000
    assert run.data.tags["step"] == "train"
    contexts = sorted(i.tags[0].value for i in run.inputs.dataset_inputs)
    assert contexts == ["evaluation", "training"]
    assert all(i.dataset.digest and i.dataset.source for i in run.inputs.dataset_inputs)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "plots")
    }
    assert {"coefficients.csv", "split.json", "plots/predicted_vs_actual.png", "plots/residuals.png"} <= artifacts
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == EXPERIMENT_NAME


def test_registered_version_is_tagged_and_pinned(trained: str) -> None:
    version = registry.version_by_alias(ALIAS_CHALLENGER)
    assert version.name == MODEL_NAME
    assert version.tags["flavor"] == "sklearn"
    assert version.tags["run_id"] == version.run_id
    assert float(version.tags["test_r2"]) == pytest.approx(0.5758, abs=5e-5)


def test_registry_round_trip_predicts_exactly_what_was_trained(trained: str, california: data.Dataset) -> None:
    version = registry.version_by_alias(ALIAS_CHALLENGER)
    split, record = splits.load_split(version.run_id)
    expected = fit(split.X_train, split.y_train).predict(split.X_test)
    sk_model = mlflow.sklearn.load_model(CHALLENGER_URI)
    np.testing.assert_array_equal(sk_model.predict(split.X_test), expected)
    pyfunc = mlflow.pyfunc.load_model(CHALLENGER_URI)
    np.testing.assert_array_equal(np.asarray(pyfunc.predict(split.X_test)).ravel(), expected)
    # Served through the project's loader, which checks the input, around the same estimator.
    assert pyfunc.metadata.flavors["python_function"]["loader_module"] == "served_model"
    assert isinstance(pyfunc.get_raw_model(), LinearRegression)
    with pytest.raises(MlflowException, match=r"column 'MedInc', row 1: value is missing \(NaN or null\)"):
        pyfunc.predict(split.X_test.head(2).assign(MedInc=[np.nan, 1.0]))
    assert pyfunc.metadata.get_input_schema().input_names() == list(FEATURES)
    assert record["random_state"] == 42


def test_bad_csv_logs_and_registers_nothing(tracking_uri: str, tmp_path: Path, synthetic_frame: pd.DataFrame) -> None:
    path = tmp_path / "bad.csv"
    synthetic_frame.assign(MedInc=synthetic_frame["MedInc"].where(synthetic_frame.index != 7)).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"column 'MedInc', row 8: value is missing"):
        train(str(path))
    client = MlflowClient()
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []
    assert client.search_registered_models() == []


def test_trains_on_users_csv(tracking_uri: str, tmp_path: Path, synthetic_frame: pd.DataFrame) -> None:
    path = tmp_path / "mine.csv"
    synthetic_frame.to_csv(path, index=False)
    result = train(str(path), test_size=0.25, random_state=0)
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["data_source"] == str(path.resolve())
    assert (run.data.params["n_train"], run.data.params["n_test"]) == ("150", "50")
    assert result.metrics["test_r2"] > 0.99
    assert result.version == "1"
