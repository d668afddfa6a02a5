"""Behaviour of the registered models on the held-out split: noise, column order, direction.

Every test runs for each flavor: the float model and the quantized one, loaded as users load
them, through the registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipeline import data, registry, splits
from pipeline.config import FEATURES, MODEL_NAME
from pipeline.metrics import regression_metrics
from tests.conftest import Store, using

MODEL_ALIASES = ["challenger", "quantized"]


@dataclass(frozen=True)
class Loaded:
    """A registered model as pyfunc, and the split its run recorded."""

    alias: str
    model: mlflow.pyfunc.PyFuncModel
    split: data.Split

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.model.predict(X), dtype="float64").ravel()


@pytest.fixture(scope="module", params=MODEL_ALIASES)
def loaded(request: pytest.FixtureRequest, pipeline_store: Store) -> Loaded:
    with using(pipeline_store):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{request.param}")
        split, _ = splits.load_split(registry.version_by_alias(request.param).run_id)
    return Loaded(request.param, model, split)


def test_noise_of_one_percent_std_barely_moves_r2(loaded: Loaded) -> None:
    X_test, y_test = loaded.split.X_test, loaded.split.y_test
    std = loaded.split.X_train.std(ddof=0)
    rng = np.random.default_rng(0)
    noisy = X_test + rng.normal(size=X_test.shape) * (0.01 * std.to_numpy())
    clean_pred, noisy_pred = loaded.predict(X_test), loaded.predict(noisy)
    clean_r2 = regression_metrics(y_test, clean_pred)["test_r2"]
    noisy_r2 = regression_metrics(y_test, noisy_pred)["test_r2"]
    assert clean_r2 > 0.57
    assert abs(noisy_r2 - clean_r2) < 0.01
    # The noise did reach the model: predictions moved, by a small amount.
    assert 0.0 < np.abs(noisy_pred - clean_pred).mean() < 0.05


def test_predictions_do_not_depend_on_column_order(loaded: Loaded) -> None:
    X_test = loaded.split.X_test
    rng = np.random.default_rng(1)
    shuffled = X_test[list(rng.permutation(FEATURES))]
    assert list(shuffled.columns) != list(FEATURES)
    np.testing.assert_array_equal(loaded.predict(shuffled), loaded.predict(X_test))
    np.testing.assert_array_equal(loaded.predict(X_test[list(reversed(FEATURES))]), loaded.predict(X_test))


def test_higher_income_means_higher_predicted_value(loaded: Loaded) -> None:
    X_test = loaded.split.X_test
    richer = X_test.assign(MedInc=X_test["MedInc"] + 1.0)
    increase = loaded.predict(richer) - loaded.predict(X_test)
    assert (increase > 0).all()
    # About 0.45 (100k$) per 10k$ of median income, the same for every row of a linear model.
    assert increase.mean() == pytest.approx(0.45, abs=0.05)
    assert increase.std() < 1e-6
