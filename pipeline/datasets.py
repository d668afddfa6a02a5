"""MLflow's record of the data a run used: data set inputs with a real source and our digest."""

from __future__ import annotations

from functools import partial

import mlflow
import pandas as pd
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.pandas_dataset import PandasDataset

from pipeline import data
from pipeline.config import SKLEARN_SOURCE, SKLEARN_SOURCE_URL, TARGET
from pipeline.mlflow_compat import file_dataset_source, retry_lost_race


def log_dataset_inputs(split: data.Split, dataset: data.Dataset) -> None:
    """Logs the training and evaluation sets as run inputs, with a real source and digest."""
    for context, X, y in (
        ("training", split.X_train, split.y_train),
        ("evaluation", split.X_test, split.y_test),
    ):
        logged = mlflow_dataset(X.assign(**{y.name: y}), dataset.source, f"california-housing-{context}")
        # Concurrent pipelines log the same data set; MLflow inserts it once per experiment.
        retry_lost_race(partial(mlflow.log_input, logged, context=context), f"data set {logged.name!r}")


def mlflow_dataset(frame: pd.DataFrame, source: str, name: str) -> PandasDataset:
    """MLflow's data set for a validated frame (its target, if present, marked as such), with a
    real source and our digest.

    MLflow infers its schema once, on first use, by checking every cell; build it once and pass
    the same object to every call that logs or evaluates on it.
    """
    return mlflow.data.from_pandas(
        frame,
        # Where the data came from: scikit-learn's download URL, or the CSV file.
        source=HTTPDatasetSource(SKLEARN_SOURCE_URL) if source == SKLEARN_SOURCE else file_dataset_source(source),
        targets=TARGET if TARGET in frame.columns else None,
        name=name,
        digest=data.to_dataset(frame, source).digest,
    )
