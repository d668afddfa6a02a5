"""Drift detection against its targets, on the real data, with the pure statistics (no MLflow).

    python benchmarks/bench_drift.py                 # about 2-3 minutes on 2 cores
    python benchmarks/bench_drift.py --far-batches 1000 --shift-batches 100

Reference: the 16,512 training rows of the default split and the float model's predictions on
them (the columns `python -m pipeline monitor` tests). Batches are drawn without replacement
from the 4,128 held-out rows. Prints:

1. the cost of calibrating the thresholds for one batch size;
2. the false alarm rate on no-drift 500-row batches (target ≤ 5 %), and what KS alone and the
   effect sizes alone would give;
3. for each feature, how often a +0.25 standard deviation shift is detected in 1000-row
   batches (target ≥ 95 %);
4. whether one region only (held-out rows with Latitude > 37) is detected.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from pipeline import data, drift
from pipeline.config import FEATURES
from pipeline.params import RANDOM_STATE, TEST_SIZE
from pipeline.train import fit

COLUMNS = (*FEATURES, "prediction")


def with_prediction(model, X: pd.DataFrame) -> np.ndarray:
    """The monitored columns: the 8 features and the model's prediction."""
    return np.column_stack([X.to_numpy(), model.predict(X)])


def alarm_rates(reference: np.ndarray, batches: list[np.ndarray]) -> dict[str, object]:
    """Share of batches with drift under the rule, and under KS alone or the effect sizes alone."""
    thresholds = drift.calibrate(reference, batches[0].shape[0])
    results = [drift.compare(reference, batch, thresholds) for batch in batches]
    ks = np.array([r.ks_p < thresholds.alpha_per_column for r in results])
    effect = np.array([(r.wasserstein > thresholds.wasserstein) | (r.psi > thresholds.psi) for r in results])
    drifted = np.array([r.drifted for r in results])
    return {
        "rule": drifted.any(axis=1).mean(),
        "ks_only": ks.any(axis=1).mean(),
        "effect_only": effect.any(axis=1).mean(),
        "per_column": drifted.mean(axis=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--far-batches", type=int, default=500, help="no-drift batches (default %(default)s)")
    parser.add_argument("--far-rows", type=int, default=500, help="rows per no-drift batch (default %(default)s)")
    parser.add_argument(
        "--shift-batches", type=int, default=50, help="shifted batches per feature (default %(default)s)"
    )
    parser.add_argument("--region-batches", type=int, default=50, help="region batches (default %(default)s)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    dataset = data.load_california()
    split = data.split(dataset, TEST_SIZE.default, RANDOM_STATE.default)
    model = fit(split.X_train, split.y_train)
    reference = with_prediction(model, split.X_train)
    held_out = split.X_test
    std = split.X_train.std(ddof=0)
    rng = np.random.default_rng(args.seed)

    def draw(frame: pd.DataFrame, n_rows: int) -> pd.DataFrame:
        return frame.iloc[rng.choice(len(frame), n_rows, replace=False)]

    started = time.perf_counter()
    drift.calibrate(reference, 500)
    print(
        f"calibration: {drift.N_BOOTSTRAP} resamples x {len(COLUMNS)} columns of {len(reference)} reference rows, "
        f"500-row batches: {time.perf_counter() - started:.2f} s"
    )

    started = time.perf_counter()
    no_drift = [with_prediction(model, draw(held_out, args.far_rows)) for _ in range(args.far_batches)]
    rates = alarm_rates(reference, no_drift)
    per_batch = (time.perf_counter() - started) / args.far_batches
    se = np.sqrt(rates["rule"] * (1 - rates["rule"]) / args.far_batches)
    print(f"\nfalse alarms, {args.far_batches} no-drift batches of {args.far_rows} held-out rows (target <= 5 %):")
    print(f"  rule (KS and an effect size): {rates['rule']:.1%} (± {1.96 * se:.1%})")
    print(f"  KS alone, Bonferroni:         {rates['ks_only']:.1%}")
    print(f"  effect sizes alone:           {rates['effect_only']:.1%}")
    print("  per column: " + ", ".join(f"{c} {r:.1%}" for c, r in zip(COLUMNS, rates["per_column"], strict=True)))
    print(f"  {per_batch * 1000:.0f} ms per batch (KS, Wasserstein, PSI on 9 columns)")

    print(
        f"\n+0.25 std shift of one feature, {args.shift_batches} batches of 1000 held-out rows each (target >= 95 %):"
    )
    for feature in FEATURES:
        batches = []
        for _ in range(args.shift_batches):
            batch = draw(held_out, 1000).copy()
            batch[feature] += 0.25 * std[feature]
            batches.append(with_prediction(model, batch))
        shifted = alarm_rates(reference, batches)
        own = shifted["per_column"][FEATURES.index(feature)]
        print(f"  {feature:<10} drift detected {shifted['rule']:.0%}, {feature} itself flagged {own:.0%}")

    north = held_out[held_out["Latitude"] > 37]
    whole = drift.detect(reference, with_prediction(model, north))
    flagged = [c for c, d in zip(COLUMNS, whole.drifted, strict=True) if d]
    print(f"\none region only: the {len(north)} held-out rows with Latitude > 37")
    print(f"  as one batch: drift detected {bool(whole.drifted.any())}, columns {', '.join(flagged)}")
    region = alarm_rates(reference, [with_prediction(model, draw(north, 500)) for _ in range(args.region_batches)])
    print(f"  {args.region_batches} batches of 500 of those rows: drift detected {region['rule']:.0%}")


if __name__ == "__main__":
    main()
