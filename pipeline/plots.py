"""Figures logged to MLflow runs. Built on `matplotlib.figure.Figure`, so no GUI backend or
global pyplot state is involved."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def predicted_vs_actual(y_true: np.ndarray, y_pred: np.ndarray, title: str) -> Figure:
    """Scatter of predictions against true values, with the identity line."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.scatter(y_true, y_pred, s=4, alpha=0.3, color="tab:blue")
    low = float(min(np.min(y_true), np.min(y_pred)))
    high = float(max(np.max(y_true), np.max(y_pred)))
    ax.plot([low, high], [low, high], color="tab:red", linewidth=1, label="perfect prediction")
    ax.set_xlabel("actual MedHouseVal (100k$)")
    ax.set_ylabel("predicted MedHouseVal (100k$)")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def residuals(y_true: np.ndarray, y_pred: np.ndarray, title: str) -> Figure:
    """Residuals against predictions, and their histogram."""
    residual = np.asarray(y_true) - np.asarray(y_pred)
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    left.scatter(y_pred, residual, s=4, alpha=0.3, color="tab:blue")
    left.axhline(0.0, color="tab:red", linewidth=1)
    left.set_xlabel("predicted MedHouseVal (100k$)")
    left.set_ylabel("residual (actual − predicted)")
    right.hist(residual, bins=60, color="tab:blue", alpha=0.8)
    right.set_xlabel("residual (actual − predicted)")
    right.set_ylabel("rows")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
