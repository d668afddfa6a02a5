"""One finite prediction per row from any loaded model: what predict and monitor score with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from pipeline.config import FEATURES
from pipeline.errors import DataError, PipelineError
from pipeline.mlflow_compat import unchecked_predict


def model_predictions(model: mlflow.pyfunc.PyFuncModel, X: pd.DataFrame, origin: str) -> np.ndarray:
    """One finite float64 prediction per row, whatever container the model's flavor returns.

    `X`'s index + 1 is the data row in the file, named in errors with `origin`.

    Raises:
        PipelineError: The model returned something else than one number per row.
        DataError: A prediction is infinite or NaN (finite features so extreme that the model's
            sum overflows); names the first such row and how many there are.
    """
    values = raw_predictions(predictor(model), X)
    unusable = NonFinitePredictions()
    unusable.add(values, X.index)
    unusable.check(origin)
    return values


def predictor(model: mlflow.pyfunc.PyFuncModel) -> Callable[[pd.DataFrame], Any]:
    """The model's predict for validated features (`config.FEATURES`, float64, in order)."""
    return unchecked_predict(model, FEATURES)


def raw_predictions(predict: Callable[[pd.DataFrame], Any], X: pd.DataFrame) -> np.ndarray:
    """`predict(X)` as one float64 per row, finite or not.

    Raises:
        PipelineError: The model returned something else than one number per row.
    """
    # An overflow is reported, with its row, by NonFinitePredictions, not as numpy's warning.
    with np.errstate(over="ignore", invalid="ignore"):
        try:
            raw = predict(X)
        except MlflowException as err:
            # This project's models refuse predictions that overflow (served_model.checked_predictions)
            # and carry them on the error, so that the rows are named and counted as for any model.
            raw = getattr(err, "predictions", None)
            if raw is None:
                raise
    values = np.asarray(raw.to_numpy() if isinstance(raw, pd.DataFrame | pd.Series) else raw, dtype="float64")
    if values.size != len(X):
        raise PipelineError(f"the model returned {values.shape} values for {len(X)} rows, expected one per row")
    return values.reshape(-1)


@dataclass
class NonFinitePredictions:
    """Rows whose prediction is infinite or NaN, counted across chunks: the first such data row
    (1-based, as in the file; None while there is none), its prediction, and how many so far."""

    first_row: int | None = None
    first_value: float = 0.0
    count: int = 0

    def add(self, values: np.ndarray, index: pd.Index) -> None:
        """Counts the non-finite `values`; `index` + 1 are their data rows."""
        bad = ~np.isfinite(values)
        n_bad = int(bad.sum())
        if n_bad and self.first_row is None:
            at = int(np.argmax(bad))
            self.first_row, self.first_value = int(index[at]) + 1, float(values[at])
        self.count += n_bad

    def check(self, origin: str) -> None:
        """Raises when any row was counted.

        Raises:
            DataError: Naming `origin`, the first row, its prediction and the count.
        """
        if self.count:
            raise DataError(
                f"{origin}: row {self.first_row}: the model's prediction is {self.first_value} "
                f"({self.count} such row(s)); features this extreme overflow the model"
            )
