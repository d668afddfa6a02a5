"""Figures logged to MLflow runs. Built on `matplotlib.figure.Figure`, so no GUI backend or
global pyplot state is involved."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from pipeline.drift import DriftResult

# Drift histograms' x-range: these quantiles of reference and batch together, so one extreme block
# (AveOccup reaches 1,243) does not squeeze the bulk into a single bar.
_PLOT_QUANTILES = (0.005, 0.995)
_MAX_INTEGER_BARS = 80


def predicted_vs_actual(y_true: np.ndarray, y_pred: np.ndarray, title: str) -> Figure:
    """Scatter of predictions against true values, with the identity line."""
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    _scatter_on_identity(ax, y_true, y_pred, "perfect prediction")
    ax.set_xlabel("actual MedHouseVal (100k$)")
    ax.set_ylabel("predicted MedHouseVal (100k$)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _scatter_on_identity(ax: Axes, x: np.ndarray, y: np.ndarray, label: str) -> None:
    """`y` against `x` as dots, over the line y = x (labelled `label`) across both's range."""
    ax.scatter(x, y, s=4, alpha=0.3, color="tab:blue")
    low = float(min(np.min(x), np.min(y)))
    high = float(max(np.max(x), np.max(y)))
    ax.plot([low, high], [low, high], color="tab:red", linewidth=1, label=label)
    ax.legend(loc="upper left")


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


def coefficients_float_vs_quantized(table: pd.DataFrame, bits: int) -> Figure:
    """Per-feature standardized coefficients (w·σ) of the float model next to the quantized ones,
    from quantize's coefficient table (`feature`, `standardized`, `dequantized_standardized`).

    Standardized, so every feature is on one scale: the effect of a one-std change, in 100k$.
    """
    features = list(table["feature"])
    standardized, dequantized = table["standardized"].to_numpy(), table["dequantized_standardized"].to_numpy()
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


def quantized_vs_float(
    float_pred: np.ndarray, quantized_pred: np.ndarray, bound: np.ndarray, bits: int, violations: int
) -> Figure:
    """Quantized against float predictions, and each row's error against its guaranteed bound."""
    error = np.abs(quantized_pred - float_pred)
    fig = Figure(figsize=(10, 4.5))
    left, right = fig.subplots(1, 2)
    _scatter_on_identity(left, float_pred, quantized_pred, "identical")
    left.set_xlabel("float model prediction (100k$)")
    left.set_ylabel(f"int{bits} model prediction (100k$)")
    right.scatter(bound, error, s=4, alpha=0.3, color="tab:blue")
    top = float(bound.max())
    right.plot([0, top], [0, top], color="tab:red", linewidth=1, label="error = bound")
    right.set_xlabel("error bound ρ·Σ|x−μ|/σ (100k$)")
    right.set_ylabel("|quantized − float| (100k$)")
    right.legend(loc="upper left")
    fig.suptitle(f"int{bits} vs float on the held-out rows: {violations} rows over the bound")
    fig.tight_layout()
    return fig


def quantization_frontier(frontier: pd.DataFrame, float_param_bytes: int) -> Figure:
    """Size against accuracy: test R² and mean |Δprediction| per bit width, the float model as a point.

    `frontier` has a row per bit width: bits, param_bytes, test_r2, r2_delta, pred_mean_abs_diff,
    error_bound_max.
    """
    fig = Figure(figsize=(10, 4.5))
    left, right = fig.subplots(1, 2)
    left.plot(frontier["param_bytes"], frontier["test_r2"], marker="o", color="tab:blue", label="quantized")
    float_r2 = float((frontier["test_r2"] - frontier["r2_delta"]).iloc[0])
    left.scatter([float_param_bytes], [float_r2], color="tab:red", zorder=3, label="float64")
    for row in frontier.itertuples():
        left.annotate(f"int{row.bits}", (row.param_bytes, row.test_r2), textcoords="offset points", xytext=(4, 4))
    left.set_xlabel("parameter bytes")
    left.set_ylabel("test R²")
    left.legend(loc="lower right")
    right.semilogy(frontier["bits"], frontier["pred_mean_abs_diff"], marker="o", label="mean |quantized − float|")
    right.semilogy(frontier["bits"], frontier["error_bound_max"], marker="s", label="largest error bound")
    right.set_xlabel("bits")
    right.set_ylabel("100k$")
    right.legend(loc="upper right")
    fig.suptitle("Quantization frontier on the held-out rows")
    fig.tight_layout()
    return fig


def drift_report(
    reference: np.ndarray, batch: np.ndarray, result: DriftResult, columns: Sequence[str], title: str
) -> Figure:
    """Reference vs batch histograms of every column (a 3 × 3 grid), with its statistics; drifted ones in red."""
    fig = Figure(figsize=(13, 11))
    axes = fig.subplots(3, 3).ravel()
    for j, (ax, column) in enumerate(zip(axes, columns, strict=True)):
        bins = _histogram_bins(np.concatenate([reference[:, j], batch[:, j]]))
        ax.hist(reference[:, j], bins=bins, density=True, histtype="stepfilled", color="tab:blue", alpha=0.45)
        ax.hist(batch[:, j], bins=bins, density=True, histtype="step", color="black", linewidth=1.4)
        color = "tab:red" if result.drifted[j] else "black"
        verdict = "DRIFT" if result.drifted[j] else "no drift"
        ax.set_title(f"{column}: {verdict}", color=color, fontweight="bold" if result.drifted[j] else "normal")
        ax.text(
            0.98,
            0.97,
            f"KS p {result.ks_p[j]:.2g} (α {result.thresholds.alpha_per_column:.2g})\n"
            f"W {result.wasserstein[j]:.3f}σ (limit {result.thresholds.wasserstein[j]:.3f})\n"
            f"PSI {result.psi[j]:.3f} (limit {result.thresholds.psi[j]:.3f})",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": color},
        )
        ax.set_yticks([])
    axes[0].legend(["reference", "batch"], loc="upper left", fontsize=8)
    fig.suptitle(
        f"{title}\nDrift = KS significant and W (Wasserstein, in reference std) or PSI above its limit for "
        f"this batch size. Histograms span the 0.5–99.5 % range of reference and batch together.",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _histogram_bins(values: np.ndarray) -> np.ndarray:
    low, high = np.quantile(values, _PLOT_QUANTILES)
    # Integer columns (HouseAge) get one bar per value; other bins would hold one or two values
    # by turns and draw a comb.
    if np.array_equal(values, np.round(values)) and high - low <= _MAX_INTEGER_BARS:
        return np.arange(low - 0.5, high + 1.5)
    if low == high:
        return np.array([low - 0.5, high + 0.5])
    return np.linspace(low, high, 41)
