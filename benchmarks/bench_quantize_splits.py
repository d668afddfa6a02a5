"""How quantization accuracy holds on other splits than the default one.

    python benchmarks/bench_quantize_splits.py [--seeds 10]

For train/test splits with random_state 0..seeds-1 (test_size 0.2), fits the float model,
quantizes it at each bit width, and prints r2_delta (quantized − float test R²) per split and
how many splits exceed the targets (|r2_delta| ≤ 0.001 at int8, ≤ 0.005 at int4).
"""

from __future__ import annotations

import argparse

import numpy as np

from pipeline import data
from pipeline.metrics import regression_metrics
from pipeline.quantization import quantize_linear
from pipeline.train import fit

TARGETS = {8: 0.001, 4: 0.005}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    dataset = data.load_california()
    deltas: dict[int, list[float]] = {bits: [] for bits in (8, 6, 4, 3, 2)}
    for seed in range(args.seeds):
        split = data.split(dataset, test_size=0.2, random_state=seed)
        model = fit(split.X_train, split.y_train)
        float_r2 = regression_metrics(split.y_test, model.predict(split.X_test))["test_r2"]
        for bits, values in deltas.items():
            params = quantize_linear(
                model.coef_, model.intercept_, split.X_train.to_numpy(), bits, list(split.X_train.columns)
            )
            values.append(regression_metrics(split.y_test, params.predict(split.X_test))["test_r2"] - float_r2)
    print("| bits | " + " | ".join(f"rs={s}" for s in range(args.seeds)) + " | max abs | over target |")
    print("| --- " * (args.seeds + 3) + "|")
    for bits, values in deltas.items():
        worst = float(np.max(np.abs(values)))
        target = TARGETS.get(bits)
        over = f"{sum(abs(v) > target for v in values)} of {args.seeds} over {target}" if target else ""
        print(f"| int{bits} | " + " | ".join(f"{v:+.4f}" for v in values) + f" | {worst:.4f} | {over} |")


if __name__ == "__main__":
    main()
