"""Drift statistics on synthetic arrays: exact values, the bootstrap, and the decision rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline import drift


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """4000 rows: a normal column, an integer column with heavy ties, a skewed column."""
    rng = np.random.default_rng(0)
    return np.column_stack(
        [rng.normal(size=4000), rng.integers(1, 53, size=4000).astype(float), rng.lognormal(size=4000)]
    )


def test_ks_pvalues_are_scipys_per_column(reference: np.ndarray) -> None:
    batch = reference[:300] + np.array([0.0, 20.0, 0.0])
    p = drift.ks_pvalues(reference, batch)
    expected = [stats.ks_2samp(reference[:, j], batch[:, j]).pvalue for j in range(3)]
    np.testing.assert_allclose(p, expected)
    assert p[1] < 1e-10 < p[0]


def test_wasserstein_of_a_shift_is_the_shift_in_std_units(reference: np.ndarray) -> None:
    std = reference.std(axis=0)
    shifted = reference + 0.25 * std
    np.testing.assert_allclose(drift.normalized_wasserstein(reference, shifted), 0.25, rtol=1e-9)
    np.testing.assert_allclose(drift.normalized_wasserstein(reference, reference), 0.0, atol=1e-12)


def test_psi_by_hand_on_reference_deciles() -> None:
    reference = np.arange(1000.0)
    # 46 % of the batch in the lowest decile, 6 % in each of the other nine.
    batch = np.concatenate([np.full(460, 10.0), np.repeat(np.arange(100.0, 1000.0, 100.0) + 5, 60)])
    expected = (0.46 - 0.1) * np.log(0.46 / 0.1) + 9 * (0.06 - 0.1) * np.log(0.06 / 0.1)
    assert drift.psi(reference, batch)[0] == pytest.approx(expected)
    assert drift.psi(reference, reference)[0] == 0.0


def test_psi_merges_tied_bins_and_floors_empty_ones() -> None:
    # A capped column: 70 % of the rows at 5.0, so the deciles from 0.3 up tie at 5.0 and
    # merge; the bins are [·, 1.34), [1.34, 2.67), [2.67, 4.7), [4.7, 5), [5, ·).
    reference = np.concatenate([np.full(700, 5.0), np.linspace(0, 4, 300)])
    batch = np.full(200, 5.0)
    floor = drift.PSI_FLOOR
    # Three bins hold 10 % of the reference and none of the batch; [4.7, 5) is empty in both.
    expected = 3 * (floor - 0.1) * np.log(floor / 0.1) + (1.0 - 0.7) * np.log(1.0 / 0.7)
    assert drift.psi(reference, batch)[0] == pytest.approx(expected)


def test_bootstrap_statistics_equal_scipys_on_the_same_resamples(reference: np.ndarray) -> None:
    n_rows, n_bootstrap, seed = 250, 4, 7
    null_w, null_psi = drift.null_distributions(reference, n_rows, n_bootstrap, seed)
    m = reference.shape[0]
    n_eff = round(n_rows * m / (n_rows + m))
    rows = np.random.default_rng(seed).integers(0, m, size=(n_bootstrap, n_eff))
    for b in range(n_bootstrap):
        resample = reference[rows[b]]
        np.testing.assert_allclose(null_w[b], drift.normalized_wasserstein(reference, resample), rtol=1e-9)
        np.testing.assert_allclose(null_psi[b], drift.psi(reference, resample), rtol=1e-9)


def test_vectorized_wasserstein_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(3)
    reference = np.round(rng.normal(size=500), 1)
    samples = np.sort(rng.choice(reference, size=(5, 37)), axis=1)
    expected = [stats.wasserstein_distance(s, reference) for s in samples]
    np.testing.assert_allclose(drift._resampled_wasserstein(np.sort(reference), samples), expected, rtol=1e-9)


def test_thresholds_shrink_with_batch_size_and_are_seeded(reference: np.ndarray) -> None:
    small = drift.calibrate(reference, 200, n_bootstrap=200)
    large = drift.calibrate(reference, 2000, n_bootstrap=200)
    assert (small.wasserstein > 1.5 * large.wasserstein).all()
    assert (small.psi > 2 * large.psi).all()
    assert small.alpha_per_column == pytest.approx(0.05 / 3)
    again = drift.calibrate(reference, 200, n_bootstrap=200)
    np.testing.assert_array_equal(small.wasserstein, again.wasserstein)
    other_seed = drift.calibrate(reference, 200, n_bootstrap=200, seed=1)
    assert not np.array_equal(small.wasserstein, other_seed.wasserstein)


def test_false_alarms_stay_rare_on_fresh_samples(reference: np.ndarray) -> None:
    rng = np.random.default_rng(11)
    thresholds = drift.calibrate(reference, 300, n_bootstrap=200)
    alarms = 0
    for _ in range(100):
        batch = np.column_stack(
            [rng.normal(size=300), rng.integers(1, 53, size=300).astype(float), rng.lognormal(size=300)]
        )
        alarms += drift.compare(reference, batch, thresholds).drifted.any()
    assert alarms <= 6


def test_quarter_std_shift_and_spread_change_are_caught_in_their_column(reference: np.ndarray) -> None:
    rng = np.random.default_rng(12)
    thresholds = drift.calibrate(reference, 1000, n_bootstrap=200)
    for _ in range(10):
        batch = np.column_stack(
            [rng.normal(size=1000) + 0.25, rng.integers(1, 53, size=1000).astype(float), rng.lognormal(size=1000)]
        )
        np.testing.assert_array_equal(drift.compare(reference, batch, thresholds).drifted, [True, False, False])
        wider = np.column_stack([rng.normal(scale=1.5, size=1000), batch[:, 1:]])
        assert drift.compare(reference, wider, thresholds).drifted[0]


def test_drift_needs_both_ks_and_an_effect_size(reference: np.ndarray) -> None:
    batch = reference[:500] + reference.std(axis=0)
    result = drift.detect(reference, batch, n_bootstrap=100)
    assert result.drifted.all()
    huge = drift.Thresholds(500, result.thresholds.alpha_per_column, np.full(3, 1e9), np.full(3, 1e9))
    assert not drift.compare(reference, batch, huge).drifted.any()
    no_ks = drift.Thresholds(500, 0.0, result.thresholds.wasserstein, result.thresholds.psi)
    assert not drift.compare(reference, batch, no_ks).drifted.any()


def test_compare_refuses_thresholds_of_another_size(reference: np.ndarray) -> None:
    thresholds = drift.calibrate(reference, 300, n_bootstrap=50)
    with pytest.raises(ValueError, match="thresholds are for 300 rows, the batch has 200"):
        drift.compare(reference, reference[:200], thresholds)
