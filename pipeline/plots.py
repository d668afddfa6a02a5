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


def coefficients_float_vs_quantized(
    features: list[str], standardized: np.ndarray, dequantized: np.ndarray, bits: int
) -> Figure:
    """Per-feature standardized coefficients (w·σ) of the float model next to the quantized ones.

    Standardized, so every feature is on one scale: the effect of a one-std change, in 100k$.
    """
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot()
    positions = np.arange(len(features))
    ax.bar(positions - 0.2, standardized, width=0.4, color="tab:blue", label="float64")
    ax.bar(positions + 0.2, dequantized, width=0.4, color="tab:orange", label=f"int{bits} (dequantized)")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(positions, features, rotation=30, ha="right")
    ax.set_ylabel("coefficient × feature std (100k$)")
    ax.set_title(f"Coefficients: float vs int{bits}, largest gap {np.max(np.abs(standardized - dequantized)):.4f}")
    ax.legend()
    fig.tight_layout()
    return fig
