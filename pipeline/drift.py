"""Drift statistics: arrays in, numbers out (no MLflow, no files).

Each column of a batch (the 8 features and the model's prediction) is compared with the same
column of a reference, the model's training data:

- a two-sample Kolmogorov–Smirnov test (`scipy.stats.ks_2samp`), significant below the
  Bonferroni-corrected level α / columns;
- two effect sizes: the Wasserstein distance in units of the reference's standard deviation
  (`scipy.stats.wasserstein_distance`; 0.25 means "moved by a quarter of a standard deviation")
  and the population stability index (PSI) over bins at the reference's deciles.

Effect sizes of pure chance shrink as batches grow but never reach zero, so a fixed threshold
that suits one batch size alarms on most smaller batches and misses real drift in larger ones;
here each column's threshold is the (1 − α / columns) quantile of the effect size between the
reference and batch-sized samples of itself (a seeded bootstrap), calibrated for the batch's size.

A column drifts when both say so: the KS test is significant AND the Wasserstein distance or
the PSI exceeds its threshold. Each signal alone is meant as a family-wise level-α test, but
neither holds that level on real batches: the held-out split itself differs a little from the
training split, KS is only approximate on tied columns, and heavy tails (AveBedrms, AveOccup)
make the Wasserstein distance jumpy. The false-alarm and detection rates, and the command that
measures them (benchmarks/bench_drift.py), are in docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
N_BOOTSTRAP = 500
PSI_BINS = 10
SEED = 0
# Bin shares are floored here so an empty bin gives a large but finite PSI.
PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class Thresholds:
    """The KS level (Bonferroni-corrected: α / columns) and the effect sizes' alarm thresholds,
    one per column, for batches of `n_rows` rows."""

    n_rows: int
    alpha_per_column: float
    wasserstein: np.ndarray
    psi: np.ndarray


@dataclass(frozen=True)
class DriftResult:
    """Per-column statistics, the thresholds they were judged by, and whether each column drifted
    (KS significant and an effect size above its threshold), in the column order given."""

    ks_p: np.ndarray
    wasserstein: np.ndarray
    psi: np.ndarray
    thresholds: Thresholds
    drifted: np.ndarray


def ks_pvalues(reference: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Two-sided two-sample KS p-value of every column (rows are samples)."""
    return np.atleast_1d(stats.ks_2samp(_2d(reference), _2d(batch), axis=0).pvalue)


def normalized_wasserstein(reference: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance of every column, in units of the reference column's std."""
    reference, batch = _2d(reference), _2d(batch)
    distance = np.array([stats.wasserstein_distance(batch[:, j], reference[:, j]) for j in range(reference.shape[1])])
    return distance / _scale(reference)


def psi(reference: np.ndarray, batch: np.ndarray) -> np.ndarray:
    """Population stability index of every column, over bins at the reference's quantiles.

    Tied quantiles (integer or capped columns) are merged, so such a column has fewer bins.
    """
    reference, batch = _2d(reference), _2d(batch)
    values = []
    for j in range(reference.shape[1]):
        edges = _psi_edges(reference[:, j])
        expected = np.bincount(_bin_codes(edges, reference[:, j]), minlength=edges.size + 1)
        actual = np.bincount(_bin_codes(edges, batch[:, j]), minlength=edges.size + 1)
        values.append(_psi_from_counts(expected / reference.shape[0], actual / batch.shape[0]))
    return np.array(values)


def calibrate(reference: np.ndarray, n_rows: int, n_bootstrap: int = N_BOOTSTRAP, seed: int = SEED) -> Thresholds:
    """Effect-size thresholds for batches of `n_rows` rows, by bootstrapping the reference.

    A batch and the reference are two samples; the null distribution of a distance between
    them is approximated by the distance between a sample of n·m/(n+m) rows drawn from the
    reference and the reference itself (the same limiting distribution: the empirical CDFs'
    difference scales with √(1/n + 1/m)). Rows are drawn jointly, one draw for every column.
    `ALPHA` is family-wise: each column's threshold is the (1 − ALPHA/columns) quantile of
    `n_bootstrap` resamples, drawn by a numpy Generator seeded with `seed`.
    """
    null_w, null_psi = null_distributions(reference, n_rows, n_bootstrap, seed)
    alpha_per_column = ALPHA / null_w.shape[1]
    return Thresholds(
        n_rows,
        alpha_per_column,
        np.quantile(null_w, 1.0 - alpha_per_column, axis=0),
        np.quantile(null_psi, 1.0 - alpha_per_column, axis=0),
    )


def null_distributions(
    reference: np.ndarray, n_rows: int, n_bootstrap: int = N_BOOTSTRAP, seed: int = SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Normalized Wasserstein distance and PSI of bootstrap samples against the reference.

    Resamples have n·m/(n+m) rows (see `calibrate`), drawn jointly for all columns with a
    seeded `numpy.random.Generator`. Both statistics are computed for all resamples at once
    (`scipy.stats.wasserstein_distance` takes one pair at a time, far too slowly for thousands of
    pairs); the results equal scipy's and `psi`'s to rounding.

    Returns:
        Two arrays of shape (n_bootstrap, columns).
    """
    reference = _2d(reference)
    m, n_columns = reference.shape
    n_eff = max(1, round(n_rows * m / (n_rows + m)))
    rows = np.random.default_rng(seed).integers(0, m, size=(n_bootstrap, n_eff))
    scale = _scale(reference)
    null_w = np.empty((n_bootstrap, n_columns))
    null_psi = np.empty((n_bootstrap, n_columns))
    for j in range(n_columns):
        column = reference[:, j]
        null_w[:, j] = _resampled_wasserstein(np.sort(column), np.sort(column[rows], axis=1)) / scale[j]
        edges = _psi_edges(column)
        n_bins = edges.size + 1
        codes = _bin_codes(edges, column)
        # One bincount for all resamples: resample b's bins are numbered from b · n_bins.
        offsets = n_bins * np.arange(n_bootstrap)[:, None]
        counts = np.bincount((codes[rows] + offsets).ravel(), minlength=n_bootstrap * n_bins)
        expected = np.bincount(codes, minlength=n_bins) / m
        null_psi[:, j] = _psi_from_counts(expected, counts.reshape(n_bootstrap, n_bins) / n_eff)
    return null_w, null_psi


def _resampled_wasserstein(reference_sorted: np.ndarray, samples_sorted: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance of each sorted sample (a row) to the reference, all at once.

    W1 = ∫₀¹ |Q_s(t) − Q_r(t)| dt over the quantile functions. On [i/n, (i+1)/n) the sample's
    quantile is its i-th value s; the reference's quantile is ≤ s up to t* = F_r(s) and above
    it after, so the integral splits at t* and follows from H(t) = ∫₀ᵗ Q_r, which is piecewise
    linear between the knots j/m.
    """
    m = reference_sorted.size
    n = samples_sorted.shape[1]
    knots = np.arange(m + 1) / m
    integral = np.concatenate(([0.0], np.cumsum(reference_sorted) / m))
    start = np.arange(n) / n
    stop = np.arange(1, n + 1) / n
    crossing = np.clip(np.searchsorted(reference_sorted, samples_sorted, side="right") / m, start, stop)
    h_start, h_stop, h_cross = (np.interp(t, knots, integral) for t in (start, stop, crossing))
    below = samples_sorted * (crossing - start) - (h_cross - h_start)
    above = (h_stop - h_cross) - samples_sorted * (stop - crossing)
    return (below + above).sum(axis=1)


def compare(reference: np.ndarray, batch: np.ndarray, thresholds: Thresholds) -> DriftResult:
    """Compares every column of a batch (rows × the reference's columns, in its order) with the
    reference under thresholds `calibrate` made for this reference and the batch's size.

    Raises:
        ValueError: The thresholds were calibrated for another batch size.
    """
    reference, batch = _2d(reference), _2d(batch)
    if batch.shape[0] != thresholds.n_rows:
        raise ValueError(f"thresholds are for {thresholds.n_rows} rows, the batch has {batch.shape[0]}")
    ks_p = ks_pvalues(reference, batch)
    w = normalized_wasserstein(reference, batch)
    p = psi(reference, batch)
    drifted = (ks_p < thresholds.alpha_per_column) & ((w > thresholds.wasserstein) | (p > thresholds.psi))
    return DriftResult(ks_p, w, p, thresholds, drifted)


def detect(reference: np.ndarray, batch: np.ndarray, n_bootstrap: int = N_BOOTSTRAP) -> DriftResult:
    """Calibrates thresholds for the batch's size, then compares (`calibrate`, `compare`)."""
    thresholds = calibrate(reference, _2d(batch).shape[0], n_bootstrap)
    return compare(reference, batch, thresholds)


def _psi_edges(column: np.ndarray) -> np.ndarray:
    return np.unique(np.quantile(column, np.linspace(0.0, 1.0, PSI_BINS + 1)[1:-1]))


def _bin_codes(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.searchsorted(edges, values, side="right")


def _psi_from_counts(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    expected = np.maximum(expected, PSI_FLOOR)
    actual = np.maximum(actual, PSI_FLOOR)
    return ((actual - expected) * np.log(actual / expected)).sum(axis=-1)


def _scale(reference: np.ndarray) -> np.ndarray:
    std = reference.std(axis=0)
    # A constant reference column has no spread to normalize by; its distance stays in units.
    return np.where(std > 0, std, 1.0)


def _2d(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype="float64")
    return array.reshape(-1, 1) if array.ndim == 1 else array
