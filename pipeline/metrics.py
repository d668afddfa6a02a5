"""Regression metrics: arrays in, numbers out."""

from __future__ import annotations

import math

import numpy as np


def float_param_bytes(coef: np.ndarray, intercept: float | np.ndarray) -> int:
    """Bytes of a float linear model's numbers: its coefficients and intercept, as stored."""
    return int(np.asarray(coef).nbytes + np.asarray(intercept).nbytes)


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, prefix: str = "test_") -> dict[str, float]:
    """R², MSE, RMSE and MAE as Python floats, under the keys every run logs: `{prefix}r2`,
    `{prefix}mse`, `{prefix}rmse`, `{prefix}mae`."""
    # Imported here: predict's running metrics need no scikit-learn.
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    mse = float(mean_squared_error(y_true, y_pred))
    return {
        f"{prefix}r2": float(r2_score(y_true, y_pred)),
        f"{prefix}mse": mse,
        f"{prefix}rmse": float(np.sqrt(mse)),
        f"{prefix}mae": float(mean_absolute_error(y_true, y_pred)),
    }


class RunningErrors:
    """The test_* metrics of `metrics.regression_metrics`, accumulated chunk by chunk.

    Keeping every target and prediction would make memory grow with the file; these sums do
    not. The variance of the target is merged with Chan et al.'s pairwise update, which stays
    accurate where the textbook sum of squares loses digits.
    """

    def __init__(self) -> None:
        self.n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._sse = 0.0
        self._sae = 0.0

    def add(self, y_true: np.ndarray, y_pred: np.ndarray) -> None:
        """Adds one chunk of targets and predictions."""
        n_chunk = len(y_true)
        if n_chunk == 0:
            return
        mean_chunk = float(y_true.mean())
        m2_chunk = float(np.square(y_true - mean_chunk).sum())
        total = self.n + n_chunk
        delta = mean_chunk - self._mean
        self._m2 += m2_chunk + delta * delta * self.n * n_chunk / total
        self._mean += delta * n_chunk / total
        self.n = total
        residual = y_pred - y_true
        self._sse += float(residual @ residual)
        self._sae += float(np.abs(residual).sum())

    def metrics(self) -> dict[str, float]:
        """The test_* metrics of everything added."""
        return error_metrics(self.n, self._sse, self._sae, self._m2)


def error_metrics(n: int, sse: float, sae: float, m2: float) -> dict[str, float]:
    """The test_* metrics of `regression_metrics` over `n` rows from their sums of squared errors,
    of absolute errors and of the target's squared deviations from its mean (`m2`); empty for no rows."""
    if n == 0:
        return {}
    mse = sse / n
    # scikit-learn's conventions: R² is undefined for one row, 1 or 0 for a constant target.
    if n < 2:
        r2 = math.nan
    elif m2 == 0.0:
        r2 = 1.0 if sse == 0.0 else 0.0
    else:
        r2 = 1.0 - sse / m2
    return {"test_r2": r2, "test_mse": mse, "test_rmse": math.sqrt(mse), "test_mae": sae / n}
