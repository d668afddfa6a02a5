"""Regression metrics: arrays in, numbers out."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, prefix: str = "test_") -> dict[str, float]:
    """R², MSE, RMSE and MAE under the metric keys every run logs.

    Args:
        y_true: True targets.
        y_pred: Predictions, same length.
        prefix: Put before each key: "test_" gives `test_r2`, `test_mse`, ...

    Returns:
        `{prefix}r2`, `{prefix}mse`, `{prefix}rmse`, `{prefix}mae` as Python floats.
    """
    mse = float(mean_squared_error(y_true, y_pred))
    return {
        f"{prefix}r2": float(r2_score(y_true, y_pred)),
        f"{prefix}mse": mse,
        f"{prefix}rmse": float(np.sqrt(mse)),
        f"{prefix}mae": float(mean_absolute_error(y_true, y_pred)),
    }
